"""UniAD: a unified model for multi-class anomaly detection (You et al., NeurIPS 2022)."""

from .lightning_model import UniAD
from .torch_model import PositionEmbedding, UniADModel

__all__ = ["PositionEmbedding", "UniAD", "UniADModel"]
