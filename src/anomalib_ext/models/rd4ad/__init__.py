"""RD4AD: anomaly detection via reverse distillation from one-class embedding (Deng & Li, CVPR 2022)."""

from anomalib_ext.components.residual_gaussian import LayerDistance

from .anomaly_map import MapFusion
from .lightning_model import RD4AD
from .loss import LossForm
from .torch_model import RD4ADModel, StudentActivation

__all__ = ["RD4AD", "LayerDistance", "LossForm", "MapFusion", "RD4ADModel", "StudentActivation"]
