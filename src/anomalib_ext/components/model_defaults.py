"""What every anomalib-ext model configures the same way: evaluator, post-processor, recipe data arguments.

Mixed in before ``AnomalibModule`` (``class RD4AD(EvaluationDefaults, AnomalibModule)``), so one
place decides, and a model (or a user, through the constructor) can still override either:

- :func:`~anomalib_ext.components.evaluation.default_evaluator`: anomalib's metrics plus pixel
  AUPRO, the evaluator the benchmark uses too, and one that keeps no state in checkpoints, so a
  checkpoint from any entry point loads with the class's ``load_from_checkpoint``;
- :class:`~anomalib_ext.components.thresholding.MidpointPostProcessor`: anomalib's
  post-processing with thresholds placed between two scores, so that no image sits exactly on
  the threshold, where last-bit differences between batchings (one process vs DDP shards) would
  flip its label.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from .evaluation import default_evaluator
from .thresholding import MidpointPostProcessor

if TYPE_CHECKING:
    from anomalib.metrics import Evaluator
    from anomalib.post_processing import PostProcessor


class EvaluationDefaults:
    """Mixin: the package's default evaluator and post-processor for an ``AnomalibModule``."""

    data_arguments: ClassVar[dict[str, Any]] = {}
    """Data-module keyword arguments the model's recipe needs (e.g. a hold-out); the demo and the
    benchmark pass them to :class:`~anomalib_ext.data.MVTecStyle`, a config names them under ``data``."""

    @staticmethod
    def configure_evaluator() -> Evaluator:
        """Anomalib's default metrics plus pixel AUPRO, stateless in checkpoints."""
        return default_evaluator()

    @staticmethod
    def configure_post_processor() -> PostProcessor:
        """Anomalib's post-processing with thresholds between scores."""
        return MidpointPostProcessor()
