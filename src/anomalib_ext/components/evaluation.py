"""The metrics every anomalib-ext model reports by default: anomalib's plus pixel AUPRO."""

from __future__ import annotations

from anomalib.metrics import AUPRO, AUROC, Evaluator, F1Score


def default_evaluator() -> Evaluator:
    """Image AUROC/F1 and pixel AUROC/F1/AUPRO on the test set (AUPRO is what the papers report too)."""
    return Evaluator(
        test_metrics=[
            AUROC(fields=["pred_score", "gt_label"], prefix="image_"),
            F1Score(fields=["pred_label", "gt_label"], prefix="image_"),
            AUROC(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False),
            F1Score(fields=["pred_mask", "gt_mask"], prefix="pixel_", strict=False),
            AUPRO(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False),
        ]
    )
