"""Lightning callbacks: per-category test metrics, and progress lines and test curves for long runs."""

from .per_category import PerCategoryMetrics, default_category_metrics
from .progress import EpochProgress, TestCurve, score_test_set

__all__ = ["EpochProgress", "PerCategoryMetrics", "TestCurve", "default_category_metrics", "score_test_set"]
