"""Data modules and datasets: MVTec-style folders, the offline texture demo set, unified multi-class training."""

from .mvtec_style import DatasetError, MVTecStyle, MVTecStyleDataset, make_mvtec_style_samples
from .synthetic import make_texture_dataset
from .unified import MVTEC_CATEGORIES, VISA_CATEGORIES, UnifiedMultiClass

__all__ = [
    "MVTEC_CATEGORIES",
    "VISA_CATEGORIES",
    "DatasetError",
    "MVTecStyle",
    "MVTecStyleDataset",
    "UnifiedMultiClass",
    "make_mvtec_style_samples",
    "make_texture_dataset",
]


def __getattr__(name: str) -> type:
    """``anomalib_ext.data.PerCategoryMetrics``, the callback's former path, still resolves (with a warning)."""
    if name == "PerCategoryMetrics":
        import warnings

        from anomalib_ext.callbacks import PerCategoryMetrics

        warnings.warn(
            "anomalib_ext.data.PerCategoryMetrics moved to anomalib_ext.callbacks.PerCategoryMetrics.",
            DeprecationWarning,
            stacklevel=2,
        )
        return PerCategoryMetrics
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)
