"""An F1-adaptive threshold placed between two anomaly scores instead of on one.

anomalib's ``F1AdaptiveThreshold`` returns the score ``s_k`` of one validation image (or pixel):
the precision-recall curve it maximises F1 on counts ``score >= s_k`` as anomalous. The
``PostProcessor`` then labels ``score > threshold`` as anomalous, so that image, which the F1
optimum counted as anomalous, is labelled normal when the same scores are tested again. Worse,
its label then hangs on the last bit of its score: the same weights score an image a few ulps
differently depending on the batch it is in (oneDNN picks different convolution kernels for a
batch of one and a batch of two on CPU), so testing under 2-rank DDP (rank shards, a tail batch
of one) and in one process gave different image F1 (0.667 vs 0.75) on the same weights.

:class:`MidpointF1AdaptiveThreshold` keeps anomalib's choice of which images are anomalous and
moves the threshold to the middle of the gap below ``s_k`` (halfway to the next lower score), so
that the validation images get exactly the labels the F1 optimum assumed, and a score has to move
by half a gap between two images, not by one ulp, to change its label. :class:`MidpointPostProcessor`
is anomalib's ``PostProcessor`` with this threshold for images and pixels; everything else
(normalisation, sensitivity, the checkpointed buffers, export) is anomalib's.
"""

from __future__ import annotations

import torch
from anomalib.metrics import F1AdaptiveThreshold
from anomalib.post_processing import PostProcessor
from torchmetrics.utilities.data import dim_zero_cat


def midpoint_threshold(scores: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """Move ``threshold``, one of ``scores``, halfway down to the next lower distinct score.

    ``scores > result`` is then exactly ``scores >= threshold``: the same partition, with the
    largest margin on both sides. When ``threshold`` is the lowest score (every image anomalous)
    the margin mirrors the gap up to the next higher score; with a single distinct score there is
    no gap to use and ``threshold`` is returned unchanged.

    Args:
        scores: every score the threshold was chosen from (any shape).
        threshold: the chosen threshold, a 0-d tensor equal to one of ``scores``.

    Returns:
        A 0-d tensor of ``threshold``'s dtype, strictly below ``threshold`` unless no gap exists.
    """
    scores = scores.flatten()
    below = scores[scores < threshold]
    above = scores[scores > threshold]
    high = threshold.double()
    if below.numel():
        low = below.max().double()
    elif above.numel():
        low = high - (above.min().double() - high)
    else:
        return threshold
    middle = ((low + high) / 2).to(threshold.dtype)
    if middle >= threshold:  # adjacent floats: the midpoint rounded up onto the threshold
        middle = torch.nextafter(threshold, torch.tensor(float("-inf"), dtype=threshold.dtype))
    return middle.reshape(threshold.shape)


class MidpointF1AdaptiveThreshold(F1AdaptiveThreshold):
    """anomalib's F1-adaptive threshold, moved off the score it lands on (see the module docstring).

    Only the raw-score mode (``thresholds=None``, the ``PostProcessor`` default) with both classes
    present is changed; binned mode and the one-class fallbacks (max / min score) are anomalib's.

    Example:
        >>> from types import SimpleNamespace
        >>> import torch
        >>> metric = MidpointF1AdaptiveThreshold(fields=["pred_score", "gt_label"])
        >>> batch = SimpleNamespace(pred_score=torch.tensor([0.1, 0.2, 0.8, 0.9]), gt_label=torch.tensor([0, 0, 1, 1]))
        >>> metric.update(batch)
        >>> round(float(metric.compute()), 4)  # anomalib returns 0.8, the lowest anomalous score
        0.5
    """

    def compute(self) -> torch.Tensor:
        """Anomalib's F1-optimal threshold, then halfway to the next lower score."""
        value = super().compute()
        if self.thresholds is not None or not (self._has_anomalous_samples() and self._has_normal_samples()):
            return value
        return midpoint_threshold(dim_zero_cat(self.preds), value)


class MidpointPostProcessor(PostProcessor):
    """anomalib's ``PostProcessor`` whose image and pixel thresholds lie between scores, not on one.

    Labels stay ``score > threshold`` as in anomalib, but no validation score sits on the
    threshold, so the image the F1 optimum counted as anomalous is labelled anomalous, and the same
    weights give the same labels whether an image is scored alone, in a batch, or on another rank.
    Its buffers and configuration are anomalib's, so checkpoints load either way.

    Args:
        enable_normalization: normalise scores and maps with the validation min/max and threshold.
        enable_thresholding: compute thresholds and predicted labels/masks.
        enable_threshold_matching: use one level's threshold for the other when it is missing.
        image_sensitivity: anomalib's image sensitivity (0.5: the threshold itself).
        pixel_sensitivity: anomalib's pixel sensitivity (0.5: the threshold itself).
        **kwargs: passed to anomalib's ``PostProcessor``.
    """

    def __init__(
        self,
        enable_normalization: bool = True,
        enable_thresholding: bool = True,
        enable_threshold_matching: bool = True,
        image_sensitivity: float = 0.5,
        pixel_sensitivity: float = 0.5,
        **kwargs,
    ) -> None:
        super().__init__(
            enable_normalization=enable_normalization,
            enable_thresholding=enable_thresholding,
            enable_threshold_matching=enable_threshold_matching,
            image_sensitivity=image_sensitivity,
            pixel_sensitivity=pixel_sensitivity,
            **kwargs,
        )
        self._image_threshold_metric = MidpointF1AdaptiveThreshold(fields=["pred_score", "gt_label"], strict=False)
        self._pixel_threshold_metric = MidpointF1AdaptiveThreshold(fields=["anomaly_map", "gt_mask"], strict=False)
