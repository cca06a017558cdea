"""Teacher-student distance per position: the papers' cosine, or PaDiM's Gaussian on the unit residual.

RD4AD and RSTPM score a position by how far the student's feature direction is from the teacher's,
``1 - cos(t, s)``: the squared length of the unit residual ``t/|t| - s/|s|``, halved. That yardstick
is isotropic (every channel counts by its size) and the same at every position. Measured on MTD with
the offline Lite0 teachers, it is what keeps both models' image ranking below anomalib's PaDiM on the
same features (docs/benchmarks.md, "Distillation models' distance against PaDiM's"). The option here
keeps each model's training and scores the unit residual by its Mahalanobis distance to a Gaussian
per position fitted on the training images (:class:`PositionGaussian`, PaDiM's distance).
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from .options import parse_option
from .position_gaussian import PositionGaussian

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence


class LayerDistance(StrEnum):
    """How each layer's teacher-student difference becomes a distance map.

    ``cosine``: the papers' cosine distance; ``residual_gaussian``: the unit residual's Mahalanobis
    distance to a Gaussian per position fitted on the training images (an option, see the module doc).
    """

    COSINE = "cosine"
    RESIDUAL_GAUSSIAN = "residual_gaussian"


def unit_residual(teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    """``t/|t| - s/|s|`` per position: the vector whose squared length is ``2 (1 - cos(t, s))``."""
    return F.normalize(teacher, dim=1) - F.normalize(student, dim=1)


class DistanceChoice:
    """A torch model's ``distance`` (its anomaly map's) and ``score_distance`` (its image score's) options.

    Both are plain attributes a user may set after training; ``score_distance=None`` scores the image
    from the anomaly map itself. Mixed into RD4AD's and RSTPM's torch models.
    """

    _distance: LayerDistance
    _score_distance: LayerDistance | None

    @property
    def distance(self) -> LayerDistance:
        """How the anomaly map measures a teacher-student difference (:class:`LayerDistance`)."""
        return self._distance

    @distance.setter
    def distance(self, value: LayerDistance | str) -> None:
        self._distance = parse_option(LayerDistance, value, "distance")

    @property
    def score_distance(self) -> LayerDistance | None:
        """The distance whose map gives the image score; ``None``: :attr:`distance`, the anomaly map's own."""
        return self._score_distance

    @score_distance.setter
    def score_distance(self, value: LayerDistance | str | None) -> None:
        self._score_distance = None if value is None else parse_option(LayerDistance, value, "score_distance")

    @property
    def scored_by(self) -> LayerDistance:
        """The distance the image score is read from: :attr:`score_distance`, else :attr:`distance`."""
        return self.distance if self.score_distance is None else self.score_distance

    @property
    def needs_residual_gaussians(self) -> bool:
        """Whether the map or the score reads the residual Gaussians."""
        return LayerDistance.RESIDUAL_GAUSSIAN in {self.distance, self.scored_by}


class ResidualGaussians(nn.ModuleList):
    """One :class:`PositionGaussian` per teacher-student layer pair, over the pair's unit residuals.

    Args:
        count: number of layer pairs (one Gaussian each, in the order the lists are passed).
        fit_hint: what a user calls to fit them, named in the error raised when scoring unfitted.
    """

    def __init__(self, count: int, fit_hint: str) -> None:
        super().__init__(PositionGaussian() for _ in range(count))
        self.fit_hint = fit_hint

    def fitted(self, indices: Iterable[int] | None = None) -> bool:
        """Whether the Gaussians at ``indices`` (all by default) have statistics."""
        chosen = range(len(self)) if indices is None else indices
        return all(self[index].fitted for index in chosen)

    @torch.no_grad()
    def fit(self, pairs: Iterable[tuple[Sequence[torch.Tensor], Sequence[torch.Tensor]]]) -> None:
        """Fit every Gaussian on the unit residuals of ``(teacher layers, student layers)`` of normal batches."""
        for gaussian in self:
            gaussian.reset()
        for teacher, student in pairs:
            for gaussian, t, s in zip(self, teacher, student, strict=True):
                gaussian.update(unit_residual(t, s))
        for gaussian in self:
            gaussian.finish()

    def distances(
        self,
        teacher: Sequence[torch.Tensor],
        student: Sequence[torch.Tensor],
        indices: Sequence[int] | None = None,
    ) -> list[torch.Tensor]:
        """Mahalanobis maps ``(B, 1, h, w)`` of the pairs at ``indices`` (all by default), at their resolution.

        Raises:
            RuntimeError: a Gaussian at ``indices`` has no statistics (checked on buffer sizes, static under tracing).
        """
        chosen = list(range(len(self))) if indices is None else list(indices)
        if not self.fitted(chosen):
            msg = (
                "distance='residual_gaussian' has no statistics yet: train with it (they are fitted before each "
                f"validation) or call {self.fit_hint} on normal images first."
            )
            raise RuntimeError(msg)
        return [self[i](unit_residual(teacher[i], student[i])) for i in chosen]
