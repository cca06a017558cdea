"""RD4AD training loss: ``1 - cos`` between teacher and student features, summed over layers.

Two forms, because the paper and the official code differ:

- ``flattened`` (default, official ``loss_fucntion``): each sample's map is flattened to one
  ``C*H*W`` vector and compared with ONE cosine similarity; ``1 - cos`` is averaged over the batch.
- ``per_pixel`` (paper, Eq. 2): ``1 - cos`` over the channels at every position (the anomaly map
  ``M^k``), averaged over the ``H_k x W_k`` positions and the batch.

Both are summed over the layers.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

if TYPE_CHECKING:
    from collections.abc import Sequence


class LossForm(StrEnum):
    """Where the cosine is taken: over each flattened map (official code) or per pixel (paper)."""

    FLATTENED = "flattened"
    PER_PIXEL = "per_pixel"


def layer_loss(teacher: torch.Tensor, student: torch.Tensor, form: LossForm) -> torch.Tensor:
    """Batch mean of ``1 - cos`` for one layer (``B x C x H x W`` tensors) in the given form."""
    if form is LossForm.FLATTENED:
        return (1 - F.cosine_similarity(teacher.flatten(1), student.flatten(1), dim=1)).mean()
    return (1 - F.cosine_similarity(teacher, student, dim=1)).mean()


class RD4ADLoss(nn.Module):
    """Sum over layers of :func:`layer_loss`.

    Args:
        form: ``"flattened"`` (official code, default) or ``"per_pixel"`` (paper).
    """

    def __init__(self, form: LossForm | str = LossForm.FLATTENED) -> None:
        super().__init__()
        self.form = LossForm(form)

    def forward(self, teacher: Sequence[torch.Tensor], student: Sequence[torch.Tensor]) -> torch.Tensor:
        """Scalar loss over all layers."""
        losses = [layer_loss(t, s, self.form) for t, s in zip(teacher, student, strict=True)]
        return torch.stack(losses).sum()
