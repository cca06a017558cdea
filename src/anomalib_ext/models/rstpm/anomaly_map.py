"""RSTPM anomaly maps (eq. 1): six student-teacher distances, summed in pairs, fused, times the discriminator.

Numbering follows the paper: maps 1-3 come from pair 1 (teacher1 layers 1-3, strides 4/8/16),
maps 4-6 from pair 2 (student2's 16, 32 and 64 px outputs against teacher2). Pairs of equal
resolution are added, ``(m1+m6), (m2+m5), (m3+m4)``; those three are the discriminator's input
channels, and their product is the student-teacher map.

The image score is one number per map. Neither the paper nor the reproduction report says how
it is computed; :func:`image_score` offers the plain maximum (our default) and the DRAEM
reference code's ``21 x 21`` mean pooling followed by the maximum.

Not in the paper: with ``distance="residual_gaussian"`` (``components/residual_gaussian.py``) the six
S-T maps are the unit residuals' Mahalanobis distances to Gaussians per position fitted on the training
images, summed in the same pairs (:meth:`AnomalyMapGenerator.pair_sums`) and multiplied as eq. 1 does;
the discriminator keeps the paper's input.

Also not in the paper: ``StudentTeacherFusion.SUM`` adds the three pair sums instead of multiplying them
(RD4AD's official fusion). The product lets a weak shallow pair scale every position's score; measured on
MTD with the residual Gaussians, it is what kept RSTPM's S-T map below the sum (docs/models/rstpm.md).
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from anomalib_ext.components.residual_gaussian import unit_residual

if TYPE_CHECKING:
    from collections.abc import Sequence

DRAEM_POOL_KERNEL = 21


class ScoreMap(StrEnum):
    """Which map the eval forward returns (the three rows the paper reports)."""

    COMBINED = "combined"
    STUDENT_TEACHER = "student_teacher"
    DISCRIMINATOR = "discriminator"


class StudentTeacherFusion(StrEnum):
    """How the three pair sums make the S-T map: eq. 1's product, or their sum (not in the paper)."""

    PRODUCT = "product"
    SUM = "sum"


class ScorePooling(StrEnum):
    """How the image score is read from the map."""

    MAX = "max"
    MEAN_POOL_MAX = "mean_pool_max"


def image_score(anomaly_map: torch.Tensor, pooling: ScorePooling = ScorePooling.MAX) -> torch.Tensor:
    """``(B,)`` scores of ``(B, 1, H, W)`` maps.

    ``max``: the largest pixel. ``mean_pool_max``: as DRAEM's reference evaluation, a ``21 x 21``
    mean filter (stride 1, zero padding counted) first, so one hot pixel scores less than a blob.
    The branch is on a Python option, never on tensor values, so the graph traces and exports.
    """
    if pooling == ScorePooling.MEAN_POOL_MAX:
        anomaly_map = F.avg_pool2d(anomaly_map, DRAEM_POOL_KERNEL, stride=1, padding=DRAEM_POOL_KERNEL // 2)
    return torch.amax(anomaly_map, dim=(1, 2, 3))


def upsampled(distance: torch.Tensor, image_size: Sequence[int]) -> torch.Tensor:
    """A ``(B, 1, h, w)`` distance map brought to ``image_size`` (bilinear, corners not aligned)."""
    return F.interpolate(distance, size=tuple(image_size), mode="bilinear", align_corners=False)


def unit_distance(teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    """Per-position ``0.5 * ||t/|t| - s/|s| ||^2`` (in ``[0, 2]``) at the features' resolution: ``(B, 1, h, w)``."""
    return 0.5 * unit_residual(teacher, student).pow(2).sum(dim=1, keepdim=True)


def distance_map(teacher: torch.Tensor, student: torch.Tensor, image_size: Sequence[int]) -> torch.Tensor:
    """:func:`unit_distance` upsampled to ``image_size``: ``(B, 1, H, W)``."""
    return upsampled(unit_distance(teacher, student), image_size)


class AnomalyMapGenerator(nn.Module):
    """Build the summed maps, the student-teacher map, and the final map of eq. 1."""

    @staticmethod
    def summed_maps(
        teacher1: Sequence[torch.Tensor],
        student1: Sequence[torch.Tensor],
        teacher2: Sequence[torch.Tensor],
        student2: Sequence[torch.Tensor],
        image_size: Sequence[int],
    ) -> torch.Tensor:
        """``(B, n, H, W)``: channel ``i`` is pair 1's map at layer ``i`` plus pair 2's map at the same scale.

        All lists run shallow to deep, so channel 0 is ``m1 + m6`` and channel 2 is ``m3 + m4``.
        """
        pair1 = [unit_distance(t, s) for t, s in zip(teacher1, student1, strict=True)]
        pair2 = [unit_distance(t, s) for t, s in zip(teacher2, student2, strict=True)]
        return AnomalyMapGenerator.pair_sums(pair1, pair2, image_size)

    @staticmethod
    def pair_sums(
        pair1: Sequence[torch.Tensor],
        pair2: Sequence[torch.Tensor],
        image_size: Sequence[int],
    ) -> torch.Tensor:
        """``(B, n, H, W)`` from each pair's ``(B, 1, h, w)`` distance maps (shallow to deep), upsampled and added."""
        maps = zip(pair1, pair2, strict=True)
        return torch.cat([upsampled(a, image_size) + upsampled(b, image_size) for a, b in maps], dim=1)

    @staticmethod
    def student_teacher_map(
        summed: torch.Tensor,
        fusion: StudentTeacherFusion = StudentTeacherFusion.PRODUCT,
    ) -> torch.Tensor:
        """``(m1+m6) * (m2+m5) * (m3+m4)`` (eq. 1), or their sum with ``fusion="sum"``; ``summed``: the pair sums.

        The branch is on a Python option, so the graph traces and exports.
        """
        if fusion == StudentTeacherFusion.SUM:
            return torch.sum(summed, dim=1, keepdim=True)
        return torch.prod(summed, dim=1, keepdim=True)

    @staticmethod
    def discriminator_map(logits: torch.Tensor) -> torch.Tensor:
        """``m7``: the discriminator's probability of the anomalous class, ``(B, 1, H, W)``."""
        return torch.softmax(logits, dim=1)[:, 1:2]

    def forward(
        self,
        summed: torch.Tensor,
        logits: torch.Tensor,
        fusion: StudentTeacherFusion = StudentTeacherFusion.PRODUCT,
    ) -> dict[str, torch.Tensor]:
        """All three maps the paper reports: S-T only, discriminator only, and their product (eq. 1)."""
        student_teacher = self.student_teacher_map(summed, fusion)
        discriminator = self.discriminator_map(logits)
        return {
            ScoreMap.STUDENT_TEACHER: student_teacher,
            ScoreMap.DISCRIMINATOR: discriminator,
            ScoreMap.COMBINED: student_teacher * discriminator,
        }
