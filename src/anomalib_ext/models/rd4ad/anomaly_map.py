"""RD4AD anomaly map: per-layer ``1 - cosine`` per pixel, upsampled, fused, Gaussian-smoothed.

Official ``cal_anomaly_map``: bilinear upsampling with ``align_corners=True``, the layers summed
(``amap_mode='a'``; the product is an option) and ``scipy.ndimage.gaussian_filter(sigma=4)``,
whose default ``truncate=4`` gives a 33-pixel kernel: reproduced here with kornia's blur through
anomalib's ``GaussianBlur2d`` so the whole map stays on-device and exportable.

Not in the paper: ``LayerDistance.RESIDUAL_GAUSSIAN`` (``components/residual_gaussian.py``, shared with
RSTPM) replaces each layer's cosine by the Mahalanobis distance of the unit residual ``t/|t| - s/|s|``
to a Gaussian per position fitted on the training images, PaDiM's distance.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F  # noqa: N812
from anomalib.models.components.filters import GaussianBlur2d
from torch import nn

if TYPE_CHECKING:
    from collections.abc import Sequence


class MapFusion(StrEnum):
    """How the per-layer maps are combined."""

    ADD = "add"
    MULTIPLY = "multiply"


def cosine_distances(teacher: Sequence[torch.Tensor], student: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """``1 - cos(t, s)`` over channels for each layer, at the layer's resolution (B x 1 x h x w)."""
    return [1 - F.cosine_similarity(t, s, dim=1).unsqueeze(1) for t, s in zip(teacher, student, strict=True)]


def upsampled(distances: Sequence[torch.Tensor], image_size: tuple[int, int]) -> list[torch.Tensor]:
    """Each layer's distance map brought to ``image_size`` as the official code does (bilinear, corners aligned)."""
    return [F.interpolate(distance, size=image_size, mode="bilinear", align_corners=True) for distance in distances]


def layer_distance_maps(
    teacher: Sequence[torch.Tensor],
    student: Sequence[torch.Tensor],
    image_size: tuple[int, int],
) -> list[torch.Tensor]:
    """``1 - cos(t, s)`` over channels for each layer, upsampled to ``image_size`` (B x 1 x H x W)."""
    return upsampled(cosine_distances(teacher, student), image_size)


class AnomalyMapGenerator(nn.Module):
    """Fuse the per-layer distance maps and smooth them (sigma 4 by default, as official)."""

    def __init__(self, mode: MapFusion | str = MapFusion.ADD, sigma: float = 4.0) -> None:
        super().__init__()
        self.mode = MapFusion(mode)
        kernel = 2 * int(4.0 * sigma + 0.5) + 1
        self.blur = GaussianBlur2d(kernel_size=(kernel, kernel), sigma=(sigma, sigma), channels=1)

    def forward(
        self,
        teacher: Sequence[torch.Tensor],
        student: Sequence[torch.Tensor],
        image_size: tuple[int, int],
    ) -> torch.Tensor:
        """The fused, smoothed cosine map at ``image_size`` (the input's size, as the official code does)."""
        return self.fuse(cosine_distances(teacher, student), image_size)

    def fuse(self, distances: Sequence[torch.Tensor], image_size: tuple[int, int]) -> torch.Tensor:
        """Upsample per-layer distance maps (B x 1 x h x w) to ``image_size``, fuse them and smooth the result."""
        maps = upsampled(distances, image_size)
        fused = maps[0]
        for distance in maps[1:]:
            fused = fused * distance if self.mode is MapFusion.MULTIPLY else fused + distance
        return self.blur(fused)
