"""RD4AD training loss, as in the official ``loss_fucntion``.

For each layer the teacher and student maps are flattened per sample and compared with ONE
cosine similarity over the whole map (not per pixel); ``1 - cos`` is averaged over the batch and
summed over layers.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn


class RD4ADLoss(nn.Module):
    """Sum over layers of the batch mean of ``1 - cos(flatten(t), flatten(s))``."""

    def forward(self, teacher: Sequence[torch.Tensor], student: Sequence[torch.Tensor]) -> torch.Tensor:
        losses = [
            (1 - F.cosine_similarity(t.flatten(1), s.flatten(1), dim=1)).mean()
            for t, s in zip(teacher, student, strict=True)
        ]
        return torch.stack(losses).sum()
