"""RSTPM losses: the student-teacher matching loss (eqs. 3-6) and the discriminator's focal loss."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from kornia.losses import FocalLoss
from torch import nn
from torch.nn import functional as F  # noqa: N812

if TYPE_CHECKING:
    from collections.abc import Sequence


def layer_loss(teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    """Eqs. 3-5 for one layer: per-pixel L2-normalised features, ``0.5 * ||t - s||^2``, mean over pixels.

    Summed over the batch as in STPM's reference code (the paper's lr 0.4 was tuned for that scale).
    """
    height, width = teacher.shape[-2:]
    distance = 0.5 * (F.normalize(teacher, dim=1) - F.normalize(student, dim=1)).pow(2).sum()
    return distance / (height * width)


class StudentTeacherLoss(nn.Module):
    """Eq. 6: the layer losses summed over every (teacher, student) pair given."""

    def forward(  # noqa: PLR6301  # nn.Module.forward: an instance method, called through __call__
        self,
        teacher_features: Sequence[torch.Tensor],
        student_features: Sequence[torch.Tensor],
    ) -> torch.Tensor:
        """Sum of :func:`layer_loss` over aligned lists of teacher and student features."""
        losses = [layer_loss(t, s) for t, s in zip(teacher_features, student_features, strict=True)]
        return torch.stack(losses).sum()


class DiscriminatorLoss(nn.Module):
    """Focal loss between the discriminator's 2-class logits and the pseudo-anomaly mask, as DRAEM trains it.

    DRAEM's reference code (``loss.py`` of VitjanZ/DRAEM, ``FocalLoss()``) weights both classes equally:
    ``alpha=None``, ``gamma=2``. kornia's ``alpha`` is a class-balance weight, ``1 - alpha`` for class 0 (here:
    normal pixels) and ``alpha`` for class 1, so ``alpha=1`` (what anomalib's ``Draem`` passes) gives normal
    pixels no loss at all, and a discriminator that calls every pixel anomalous reaches zero loss.
    ``alpha`` is kept as an option for class balancing, ``None`` (both classes weighted 1) by default.
    kornia's ``"mean"`` divides by both class slices, so the value is half DRAEM's per-pixel mean (a constant
    factor), and DRAEM's 1e-5 label smoothing is left out.
    """

    def __init__(self, alpha: float | None = None, gamma: float = 2.0) -> None:
        super().__init__()
        self.focal = FocalLoss(alpha=alpha, gamma=gamma, reduction="mean")

    def forward(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``logits``: ``(B, 2, H, W)``; ``mask``: ``(B, 1, H, W)`` or ``(B, H, W)`` in ``{0, 1}``."""
        if mask.ndim == 4:
            mask = mask.squeeze(1)
        return self.focal(logits, mask.long())
