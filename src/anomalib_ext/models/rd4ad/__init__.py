"""RD4AD: anomaly detection via reverse distillation from one-class embedding (Deng & Li, CVPR 2022)."""

from .lightning_model import RD4AD
from .torch_model import RD4ADModel

__all__ = ["RD4AD", "RD4ADModel"]
