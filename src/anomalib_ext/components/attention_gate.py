"""Teacher-to-student spatial attention gate (RSTPM, Yamada et al. 2022, eqs. 7-8).

A student that reconstructs another network's features (RSTPM's student2) is given a *hint* from
the teacher: the teacher's feature at the current scale is squeezed to a single-channel map
``M(x_t)`` (3x3 conv, then a 1x1 conv to one channel, sigmoid) that re-weights the student's
pixels. One channel on purpose: the gate can emphasise or suppress positions but cannot leak the
teacher's full feature, which would make student and teacher identical on anomalies too.

Forms:

- ``"*"`` (eq. 7): ``M(x_t) * x``; can switch pixels off entirely.
- ``"+"`` (eq. 8): ``(1 + M(x_t)) * x``; residual, never zeroes a pixel.
- ``"0"``: a diagnostic, not the paper's: the gate outputs zeros, so the next stage never sees the
  previous one (the reproduction report's "Error(S-T)", fig. 20, where every gate had collapsed to
  zero and the maps were still good). It has no parameters.
"""

from __future__ import annotations

from enum import StrEnum

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from .options import parse_option


class GateForm(StrEnum):
    """How the attention map ``M`` gates the student feature ``x``."""

    PRODUCT = "*"  # M * x (eq. 7)
    RESIDUAL = "+"  # (1 + M) * x (eq. 8)
    ZERO = "0"  # 0 * x: the report's fig. 20 diagnostic (stages cut apart)


class AttentionGate(nn.Module):
    """Re-weight a student feature with a one-channel sigmoid map computed from a teacher feature.

    Args:
        teacher_channels: channels of the teacher feature the map is computed from.
        form: ``"*"`` for ``M * x`` (eq. 7), ``"+"`` for ``(1 + M) * x`` (eq. 8), ``"0"`` for zeros
            (a diagnostic: no attention network is built).
        hidden_channels: width of the 3x3 conv; the paper does not give it, default
            ``max(16, teacher_channels // 4)`` keeps the gate small next to the student.
    """

    def __init__(
        self,
        teacher_channels: int,
        form: GateForm | str = GateForm.PRODUCT,
        hidden_channels: int | None = None,
    ) -> None:
        super().__init__()
        self.form = parse_option(GateForm, form, "form")
        hidden = hidden_channels or max(16, teacher_channels // 4)
        self.attention: nn.Module | None = (
            None
            if self.form == GateForm.ZERO
            else nn.Sequential(
                nn.Conv2d(teacher_channels, hidden, kernel_size=3, padding=1, bias=False),
                nn.BatchNorm2d(hidden),
                nn.ReLU(inplace=True),
                nn.Conv2d(hidden, 1, kernel_size=1),
                nn.Sigmoid(),
            )
        )

    def attention_map(self, teacher_feature: torch.Tensor) -> torch.Tensor:
        """The one-channel map ``M(x_t)`` in ``[0, 1]``, shape ``(B, 1, H, W)`` (all zeros for the ``"0"`` form)."""
        if self.attention is None:
            return teacher_feature.new_zeros(teacher_feature.shape[0], 1, *teacher_feature.shape[-2:])
        return self.attention(teacher_feature)

    def forward(self, student_feature: torch.Tensor, teacher_feature: torch.Tensor) -> torch.Tensor:
        """Gate ``student_feature`` with the map of ``teacher_feature`` (resized if the grids differ)."""
        if self.attention is None:
            return torch.zeros_like(student_feature)
        weights = self.attention_map(teacher_feature)
        if weights.shape[-2:] != student_feature.shape[-2:]:
            weights = F.interpolate(weights, size=student_feature.shape[-2:], mode="bilinear", align_corners=False)
        if self.form == "*":
            return weights * student_feature
        return (1.0 + weights) * student_feature
