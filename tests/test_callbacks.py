"""The raw-output test AUROC behind the training curves ranks any score scale correctly."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from anomalib.data import InferenceBatch
from torch import nn

from anomalib_ext.callbacks import score_test_set


class FixedScores(nn.Module):
    """A stand-in model whose scores and maps are far above 1, like UniAD's reconstruction errors."""

    def forward(self, images: torch.Tensor) -> InferenceBatch:  # noqa: PLR6301  nn.Module.forward is an instance method
        """Score each image by its mean plus 100; the map is the image's first channel plus 100."""
        return InferenceBatch(pred_score=images.mean(dim=(1, 2, 3)) + 100, anomaly_map=images[:, :1] + 100)


def test_scores_far_above_one_are_ranked_not_squashed() -> None:
    """Such scores would be read as logits by torchmetrics, whose sigmoid ties them all at 1.0 (AUROC 0.5)."""
    images = torch.stack([torch.full((3, 4, 4), value) for value in (0.1, 0.2, 0.8, 0.9)])
    masks = (images[:, 0] > 0.5).int()
    batch = SimpleNamespace(image=images, gt_label=torch.tensor([0, 0, 1, 1]), gt_mask=masks)
    module = nn.Module()
    module.model = FixedScores()
    module.pre_processor = None
    module.device = torch.device("cpu")  # type: ignore[assignment]
    image_auroc, pixel_auroc = score_test_set(module, [batch])  # type: ignore[arg-type]
    assert image_auroc == 1.0
    assert pixel_auroc == 1.0
