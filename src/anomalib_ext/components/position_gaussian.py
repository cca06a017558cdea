"""A Gaussian per feature-map position, fitted on normal images in one streaming pass.

PaDiM's distance (``anomalib.models.image.padim``): each position of a ``C x H x W`` feature map gets
its own mean and covariance over the normal training images, and a test feature is scored by its
Mahalanobis distance to them. Two differences from anomalib's ``MultiVariateGaussian``, both needed
to use it on other features than a backbone's (RD4AD's unit teacher-student residual):

- The statistics are accumulated batch by batch (count, sum, sum of outer products, in float64), so
  no training feature is kept: PaDiM holds every embedding of the training set in memory.
- The ridge added to each covariance is relative, ``regularisation`` times that position's mean
  variance, instead of an absolute 0.01. Unit-length residuals have per-channel variances near
  1e-3, which an absolute 0.01 would swamp, turning the distance into a scaled Euclidean one.

Scoring reuses PaDiM's own Mahalanobis computation, so it exports to OpenVINO as PaDiM does.
"""

from __future__ import annotations

import torch
from anomalib.models.components.base import DynamicBufferMixin
from anomalib.models.image.padim.anomaly_map import AnomalyMapGenerator as PadimMap


class PositionGaussian(DynamicBufferMixin):
    """Mean and precision per position (buffers, so they travel in checkpoints and exports)."""

    mean: torch.Tensor
    precision: torch.Tensor

    def __init__(self, regularisation: float = 0.01) -> None:
        super().__init__()
        if regularisation <= 0:
            msg = f"regularisation must be positive; got {regularisation}."
            raise ValueError(msg)
        self.regularisation = regularisation
        self.register_buffer("mean", torch.empty(0))  # C x (H*W), PaDiM's layout
        self.register_buffer("precision", torch.empty(0))  # (H*W) x C x C
        self._count = 0
        self._sum: torch.Tensor | None = None
        self._outer: torch.Tensor | None = None

    @property
    def fitted(self) -> bool:
        """Whether statistics exist (fitted here or loaded from a checkpoint)."""
        return self.mean.numel() > 0

    def reset(self) -> None:
        """Forget the sums of a previous pass (the fitted statistics stay until :meth:`finish`)."""
        self._count, self._sum, self._outer = 0, None, None

    @torch.no_grad()
    def update(self, features: torch.Tensor) -> None:
        """Add a batch of normal ``B x C x H x W`` features to the sums."""
        vectors = features.detach().double().flatten(2)  # B x C x P
        if self._sum is not None and self._sum.shape != vectors.shape[1:]:
            msg = f"every batch needs the same feature shape; got {tuple(features.shape[1:])} after {self._sum.shape}."
            raise ValueError(msg)
        batch_sum = vectors.sum(dim=0)
        batch_outer = torch.einsum("bcp,bdp->pcd", vectors, vectors)
        self._sum = batch_sum if self._sum is None else self._sum + batch_sum
        self._outer = batch_outer if self._outer is None else self._outer + batch_outer
        self._count += vectors.shape[0]

    @torch.no_grad()
    def finish(self) -> None:
        """Turn the sums into the mean and the regularised precision per position."""
        if self._sum is None or self._outer is None or self._count < 2:
            msg = f"a Gaussian needs features of at least 2 normal images; got {self._count}."
            raise ValueError(msg)
        mean = self._sum / self._count  # C x P
        centred = self._outer - self._count * torch.einsum("cp,dp->pcd", mean, mean)
        covariance = centred / (self._count - 1)
        channels = covariance.shape[-1]
        spread = torch.diagonal(covariance, dim1=1, dim2=2).mean(dim=1).clamp_min(1e-12).view(-1, 1, 1)
        identity = torch.eye(channels, dtype=covariance.dtype, device=covariance.device)
        precision = torch.linalg.inv(covariance + self.regularisation * spread * identity)
        self.mean = mean.float()
        self.precision = precision.float()
        self.reset()

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args) -> None:
        """Load a checkpoint saved before the model had these statistics unfitted, not failing on missing keys."""
        for name in ("mean", "precision"):
            state_dict.setdefault(prefix + name, torch.empty(0))
        super()._load_from_state_dict(state_dict, prefix, *args)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Mahalanobis distance of each position of ``B x C x H x W`` features: ``B x 1 x H x W``."""
        if not self.fitted:
            msg = "PositionGaussian has no statistics: fit it on normal features (update, then finish) first."
            raise RuntimeError(msg)
        return PadimMap.compute_distance(features, [self.mean, self.precision])
