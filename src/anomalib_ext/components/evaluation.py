"""The metrics every anomalib-ext model reports by default: anomalib's plus pixel AUPRO.

Every model of this package returns :func:`default_evaluator` from ``configure_evaluator`` and
the benchmark builds its models with it too, so one evaluator is used by every entry point.

Checkpoints: anomalib's ``AUPRO`` registers ``fpr_limit`` as a *persistent* buffer, so a model
saved with AUPRO in its evaluator carries ``evaluator.test_metrics.4.fpr_limit`` in its state dict
and a strict ``load_from_checkpoint`` into a model whose evaluator differs (anomalib's default,
another metric list) fails with "Unexpected key(s) in state_dict". Metric settings are
configuration, not trained state (anomalib does not restore evaluators from checkpoints either:
they come from the constructor), so :class:`StatelessEvaluator` writes none of them to a
checkpoint and ignores whatever evaluator entries an incoming (older) checkpoint holds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from anomalib.metrics import AUPRO, AUROC, AnomalibMetric, Evaluator, F1Score

if TYPE_CHECKING:
    from collections.abc import Sequence

    from torch import nn


def _drop_foreign_evaluator_entries(module: nn.Module, state_dict: dict, prefix: str, *_: object) -> None:
    """Load pre-hook: remove the entries under ``prefix`` that ``module`` does not hold.

    Runs before the evaluator and its metrics load, so a strict load neither sees them as
    unexpected keys nor hands them to a metric of another kind at the same index.
    """
    own = module.state_dict(prefix=prefix).keys()
    for key in [key for key in state_dict if key.startswith(prefix) and key not in own]:
        del state_dict[key]


class StatelessEvaluator(Evaluator):
    """An anomalib ``Evaluator`` that keeps nothing in checkpoints and ignores evaluator entries when loading.

    Every buffer of its metrics (AUPRO's ``fpr_limit``) is made non-persistent, and a load
    pre-hook drops the evaluator part of an incoming state dict, so a checkpoint loads into the
    model class whichever evaluator either side was built with. Metric values and settings are
    unaffected: they come from the constructor, as for anomalib's own evaluator.
    """

    def __init__(
        self,
        val_metrics: AnomalibMetric | Sequence[AnomalibMetric] | None = None,
        test_metrics: AnomalibMetric | Sequence[AnomalibMetric] | None = None,
        compute_on_cpu: bool = True,
    ) -> None:
        super().__init__(val_metrics=val_metrics, test_metrics=test_metrics, compute_on_cpu=compute_on_cpu)
        for metric in (*self.val_metrics, *self.test_metrics):
            for module in metric.modules():
                for name, buffer in list(module.named_buffers(recurse=False)):
                    module.register_buffer(name, buffer, persistent=False)
        self.register_load_state_dict_pre_hook(_drop_foreign_evaluator_entries)


def default_test_metrics() -> list[AnomalibMetric]:
    """Image AUROC/F1 and pixel AUROC/F1/AUPRO (AUPRO is what the papers report too)."""
    return [
        AUROC(fields=["pred_score", "gt_label"], prefix="image_"),
        F1Score(fields=["pred_label", "gt_label"], prefix="image_"),
        AUROC(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False),
        F1Score(fields=["pred_mask", "gt_mask"], prefix="pixel_", strict=False),
        AUPRO(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False),
    ]


def default_evaluator() -> StatelessEvaluator:
    """:func:`default_test_metrics` on the test set, kept out of checkpoints."""
    return StatelessEvaluator(test_metrics=default_test_metrics())
