"""What every anomalib-ext model configures the same way: evaluator, post-processor, recipe data arguments.

Mixed in before ``AnomalibModule`` (``class RD4AD(EvaluationDefaults, AnomalibModule)``), so one
place decides, and a model (or a user, through the constructor) can still override either:

- :func:`~anomalib_ext.components.evaluation.default_evaluator`: anomalib's metrics plus pixel
  AUPRO, the evaluator the benchmark uses too, and one that keeps no state in checkpoints, so a
  checkpoint from any entry point loads with the class's ``load_from_checkpoint``;
- :class:`~anomalib_ext.components.thresholding.MidpointPostProcessor`: anomalib's
  post-processing with thresholds placed between two scores, so that no image sits exactly on
  the threshold, where last-bit differences between batchings (one process vs DDP shards) would
  flip its label;
- a warning at the start of fitting when the trainer's precision asks for bf16 on a CPU without
  fast bf16 (:mod:`~anomalib_ext.components.cpu_bf16`), whatever started it: ``anomalib train
  --trainer.precision bf16-mixed``, an ``Engine`` in Python, the package's own commands.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from .cpu_bf16 import warn_if_bf16_is_slow
from .evaluation import default_evaluator
from .thresholding import MidpointPostProcessor

if TYPE_CHECKING:
    from anomalib.metrics import Evaluator
    from anomalib.models import AnomalibModule as _MixedInto  # what the type checker sees as the base
    from anomalib.post_processing import PostProcessor
else:
    _MixedInto = object


class EvaluationDefaults(_MixedInto):
    """Mixin: the package's default evaluator and post-processor for an ``AnomalibModule``, and its bf16 check."""

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

    def on_fit_start(self) -> None:
        """Warn (once) when the trainer asks for bf16 on a CPU where it is several times slower than f32."""
        super().on_fit_start()
        warn_if_bf16_is_slow(str(self.trainer.precision), self.device)
