"""RSTPM: Reconstructed Student-Teacher and discriminative networks (Yamada, Kamiya, Hotta, IROS 2022)."""

from .lightning_model import RSTPM
from .torch_model import RSTPMModel

__all__ = ["RSTPM", "RSTPMModel"]
