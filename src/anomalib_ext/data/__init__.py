"""Data modules and datasets: MVTec-style folders, the offline texture demo set, unified multi-class training."""

from .mvtec_style import DatasetError, MVTecStyle, MVTecStyleDataset, make_mvtec_style_samples
from .synthetic import make_texture_dataset
from .unified import MVTEC_CATEGORIES, VISA_CATEGORIES, PerCategoryMetrics, UnifiedMultiClass

__all__ = [
    "MVTEC_CATEGORIES",
    "VISA_CATEGORIES",
    "DatasetError",
    "MVTecStyle",
    "MVTecStyleDataset",
    "PerCategoryMetrics",
    "UnifiedMultiClass",
    "make_mvtec_style_samples",
    "make_texture_dataset",
]
