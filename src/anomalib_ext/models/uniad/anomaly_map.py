"""UniAD anomaly map and image score from the reconstruction error (official post-processing).

- pixel map: L2 norm over channels of ``reconstruction - features`` on the feature grid,
  upsampled bilinearly with ``align_corners=True`` (the official ``nn.UpsamplingBilinear2d``) to the
  input size;
- image score: the maximum of the map after ``pool_size x pool_size`` average pooling with stride 1
  (the official evaluator ``max`` with ``avgpool_size: [16, 16]``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F  # noqa: N812


class AnomalyMapGenerator(nn.Module):
    """Turn features and their reconstruction into ``(anomaly_map, pred_score)``.

    Args:
        pool_size: average-pooling window for the image score; clipped to the map size.
    """

    def __init__(self, pool_size: int = 16) -> None:
        super().__init__()
        self.pool_size = pool_size

    @staticmethod
    def compute_anomaly_map(features: Tensor, reconstruction: Tensor, image_size: tuple[int, int]) -> Tensor:
        """``(B, 1, H, W)`` map: channel-wise L2 reconstruction error, resized to ``image_size``."""
        error = torch.sqrt(torch.sum((reconstruction - features) ** 2, dim=1, keepdim=True))
        return F.interpolate(error, size=image_size, mode="bilinear", align_corners=True)

    def compute_score(self, anomaly_map: Tensor) -> Tensor:
        """``(B,)`` image score: max of the average-pooled map."""
        kernel = (min(self.pool_size, anomaly_map.shape[-2]), min(self.pool_size, anomaly_map.shape[-1]))
        pooled = F.avg_pool2d(anomaly_map, kernel, stride=1)
        return torch.amax(pooled, dim=(-3, -2, -1))

    def forward(self, features: Tensor, reconstruction: Tensor, image_size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """Return ``(anomaly_map, pred_score)``."""
        anomaly_map = self.compute_anomaly_map(features, reconstruction, image_size)
        return anomaly_map, self.compute_score(anomaly_map)
