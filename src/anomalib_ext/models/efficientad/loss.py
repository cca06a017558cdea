"""EfficientAD's training losses (paper Sec. 3.2-3.3, nelson1425/EfficientAD ``efficientad.py``).

``L = L_hard + L_penalty + L_AE + L_STAE`` with
* ``L_hard``: mean of the squared teacher-student differences at or above their 0.999 quantile;
* ``L_penalty``: ``mean(S(P)^2)`` over the teacher-mimicking student channels on a natural image P;
* ``L_AE = mean (T(I') - A(I'))^2`` and ``L_STAE = mean (A(I') - S'(I'))^2`` on a colour-jittered I'.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from anomalib_ext.components.quantile import quantile

if TYPE_CHECKING:
    import torch

HARD_QUANTILE = 0.999


def hard_feature_loss(distance: torch.Tensor, q: float = HARD_QUANTILE) -> torch.Tensor:
    """Mean of the elements of ``distance`` that are ``>= `` its ``q``-quantile (exact, any size)."""
    threshold = quantile(distance, q)
    return distance[distance >= threshold].mean()


def penalty_loss(student_on_natural: torch.Tensor, channels: int) -> torch.Tensor:
    """``mean(S(P)^2)`` over the first ``channels`` (teacher-mimicking) student outputs."""
    return student_on_natural[:, :channels].pow(2).mean()


def autoencoder_losses(
    teacher_aug: torch.Tensor,
    autoencoder_aug: torch.Tensor,
    student_aug: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(L_AE, L_STAE)``; ``student_aug`` is the autoencoder-mimicking half of the student output."""
    loss_ae = (teacher_aug - autoencoder_aug).pow(2).mean()
    loss_stae = (autoencoder_aug - student_aug).pow(2).mean()
    return loss_ae, loss_stae
