"""EfficientAD's map arithmetic: per-pixel distances, quantile normalisation, combination, upsampling.

Everything here is elementwise or a channel mean, so one pass over the three feature tensors gives
the final map; no Python branch depends on data and nothing syncs with the host, which keeps the
path traceable (ONNX/OpenVINO) and CUDA-graph friendly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch.nn import functional as F  # noqa: N812

if TYPE_CHECKING:
    import torch

MAP_PADDING = 4  # the unpadded PDN loses 4 feature pixels per side; the reproduction pads them back with 0


def distance_maps(
    teacher: torch.Tensor,
    student: torch.Tensor,
    autoencoder: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``M_ST = mean_c (T - S[:C])^2`` and ``M_AE = mean_c (A - S[C:])^2``, each ``(N, 1, h, w)``.

    ``teacher`` must already be normalised with the teacher's channel mean/std.
    """
    channels = teacher.shape[1]
    map_st = (teacher - student[:, :channels]).pow(2).mean(dim=1, keepdim=True)
    map_ae = (autoencoder - student[:, channels:]).pow(2).mean(dim=1, keepdim=True)
    return map_st, map_ae


def normalise_and_combine(
    map_st: torch.Tensor,
    map_ae: torch.Tensor,
    q_st: torch.Tensor,
    q_ae: torch.Tensor,
) -> torch.Tensor:
    """``0.5 * 0.1 (M_ST - qa) / (qb - qa) + 0.5 * 0.1 (M_AE - qa) / (qb - qa)``.

    ``q_st`` and ``q_ae`` hold ``(q_0.9, q_0.995)``. With the initial ``(0, 0.1)`` the
    normalisation is the identity, so an untrained model needs no branch.
    """
    scale_st = 0.05 / (q_st[1] - q_st[0])
    scale_ae = 0.05 / (q_ae[1] - q_ae[0])
    return (map_st - q_st[0]) * scale_st + (map_ae - q_ae[0]) * scale_ae


def to_image_size(anomaly_map: torch.Tensor, image_size: tuple[int, int], pad: bool) -> torch.Tensor:
    """Pad the map back to the padded-PDN grid (reproduction: 4 zeros per side) and upsample bilinearly."""
    if pad:
        anomaly_map = F.pad(anomaly_map, (MAP_PADDING,) * 4)
    return F.interpolate(anomaly_map, size=image_size, mode="bilinear", align_corners=False)
