"""Data modules and datasets: MVTec-style folders, the offline texture demo set, unified multi-class training."""

from .mvtec_style import DatasetError, MVTecStyle, MVTecStyleDataset, make_mvtec_style_samples
from .synthetic import make_texture_dataset

__all__ = ["DatasetError", "MVTecStyle", "MVTecStyleDataset", "make_mvtec_style_samples", "make_texture_dataset"]
