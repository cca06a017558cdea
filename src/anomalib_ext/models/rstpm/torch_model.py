"""PyTorch model of RSTPM: two student-teacher pairs and a discriminative network.

- Pair 1 (STPM): ``teacher1`` frozen ImageNet CNN, ``student1`` the same architecture from random
  init, matched on ``layers1[:-1]``.
- Pair 2 (reconstruction): ``teacher2`` frozen ImageNet CNN on ``layers2``; ``student2`` a
  :class:`~anomalib_ext.components.ReconstructionStudent` that decodes teacher1's deepest layer
  ``layers1[-1]`` (or student1's, ``student2_input="direct"``) into teacher2's pyramid.
- Discriminator: DRAEM's U-Net on the pairwise summed distance maps, 2-class output.

Input images are in ``[0, 1]``; ImageNet normalisation happens here so that the Lightning module
can paste pseudo-anomalies on un-normalised images and the exported graph takes plain images
(the extractors take ImageNet-normalised input and convert it to what their backbone needs).
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING, NamedTuple

import torch
from anomalib.data import InferenceBatch
from anomalib.models.image.draem.torch_model import DiscriminativeSubNetwork
from torch import nn

from anomalib_ext.components import ReconstructionStudent, create_backbone, feature_shapes
from anomalib_ext.components.backbone import IMAGENET_MEAN, IMAGENET_STD, nonnegative_outputs
from anomalib_ext.components.options import parse_option
from anomalib_ext.components.reconstruction_student import Attention, StudentLayout
from anomalib_ext.components.residual_gaussian import DistanceChoice, LayerDistance, ResidualGaussians

from .anomaly_map import AnomalyMapGenerator, ScoreMap, ScorePooling, StudentTeacherFusion, image_score

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence
    from pathlib import Path


class Student2Variant(StrEnum):
    """The report's two student2 designs, by its names (their layouts: :class:`StudentLayout`)."""

    RSTPM1 = "rstpm1"  # fig. 3: 3x3 transposed conv + BasicBlock per stage
    RSTPM2 = "rstpm2"  # figs. 15-16: RD4AD-style up-sampling residual blocks, about half the parameters

    @property
    def layout(self) -> StudentLayout:
        """The reconstruction student layout this variant builds."""
        return StudentLayout.DECONV_BASIC_BLOCK if self is Student2Variant.RSTPM1 else StudentLayout.UP_RESIDUAL


class Student2Input(StrEnum):
    """What student2 reconstructs from."""

    TEACHER = "teacher"  # teacher1's deepest layer (paper)
    DIRECT = "direct"  # student1's deepest layer (report fig. 13)


class LossMode(StrEnum):
    """How the two student-teacher losses are optimised in stage 1 (report fig. 10)."""

    ALL = "all"  # one summed loss, one SGD
    SPLIT = "split"  # one loss and one SGD per pair


class RSTPMFeatures(NamedTuple):
    """Aligned feature lists (shallow to deep) of both pairs, one entry per map.

    ``deep`` is ``(teacher1, student1)`` at ``layers1[-1]`` when pair 1's loss must also train
    student1's deepest layer (``"split"`` with ``"direct"``: see :class:`RSTPMModel`), else ``None``.
    """

    teacher1: list[torch.Tensor]
    student1: list[torch.Tensor]
    teacher2: list[torch.Tensor]
    student2: list[torch.Tensor]
    deep: tuple[torch.Tensor, torch.Tensor] | None = None

    def pair1(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Teacher and student layers pair 1's loss matches: the map layers, plus ``deep`` if set."""
        if self.deep is None:
            return self.teacher1, self.student1
        return [*self.teacher1, self.deep[0]], [*self.student1, self.deep[1]]


class RSTPMModel(DistanceChoice, nn.Module):
    """Two student-teacher pairs plus a discriminator; in eval mode returns ``InferenceBatch``.

    Args:
        teacher1: timm name of pair 1's teacher (student1 copies its architecture).
        teacher2: timm name of pair 2's teacher.
        layers1: teacher1 layers; all but the last give maps 1..n, the last feeds student2.
        layers2: teacher2 layers (shallow to deep), one per map of pair 2; ``len(layers1) - 1`` of them.
        teacher1_weights / teacher2_weights: local weight files (see ``create_backbone``).
        pre_trained: load ImageNet weights into the teachers (``False`` only for tests).
        allow_download: let ``create_backbone`` fall back to the timm hub.
        attention: ``"*+"``, ``"++"``, ``"**"``, ``"+*"`` or ``"none"`` (gates of student2).
        student2_variant: ``"rstpm1"`` (report fig. 3) or ``"rstpm2"`` (RD4AD-style blocks).
        student2_input: ``"teacher"`` (paper) or ``"direct"`` (student1's deepest layer).
        loss_mode: ``"all"`` or ``"split"``; decides what :meth:`features` detaches. With
            ``"split"`` and ``"direct"``, pair 2's loss must not reach student1, so student2's
            input is detached, and pair 1's loss also matches student1's deepest layer with
            teacher1's (``RSTPMFeatures.deep``) so that layer does not stay at random init.
        score_map: which map the eval forward returns: ``"combined"`` (eq. 1), ``"student_teacher"``
            or ``"discriminator"``; can be changed after training to measure all three.
        score_pooling: how the image score is read from that map: ``"max"`` or ``"mean_pool_max"``
            (DRAEM's 21 x 21 mean filter, then the max); can be changed after training too.
        discriminator_width: base width of DRAEM's discriminative U-Net (DRAEM: 64).
        distance: how the six S-T maps measure a position: ``"cosine"`` (the paper's
            ``0.5 |t/|t| - s/|s||^2``) or ``"residual_gaussian"`` (not in the paper: that unit
            residual's Mahalanobis distance to a Gaussian per position, fitted by
            :meth:`fit_residual_gaussians` on normal images). Only the S-T map (and so the combined
            map) changes; the discriminator keeps the paper's input. Can be changed after training.
        score_distance: the S-T distance behind the image score; ``None`` (default): ``distance``.
            ``"residual_gaussian"`` with ``distance="cosine"`` ranks images with the Gaussians and
            localises with the paper's maps. Can be changed after training.
        student_teacher_fusion: how the three pair sums make the S-T map: ``"product"`` (eq. 1) or
            ``"sum"`` (not in the paper; RD4AD's fusion). Scoring only: training and the
            discriminator's input do not change. Can be changed after training.
    """

    def __init__(
        self,
        teacher1: str = "resnet18.tv_in1k",
        teacher2: str = "resnet50.tv_in1k",
        layers1: Sequence[str] = ("layer1", "layer2", "layer3", "layer4"),
        layers2: Sequence[str] = ("layer1", "layer2", "layer3"),
        teacher1_weights: str | Path | None = None,
        teacher2_weights: str | Path | None = None,
        pre_trained: bool = True,
        allow_download: bool = False,
        attention: Attention | str = Attention.MULTIPLY_RESIDUAL,
        student2_variant: Student2Variant | str = Student2Variant.RSTPM1,
        student2_input: Student2Input | str = Student2Input.TEACHER,
        loss_mode: LossMode | str = LossMode.ALL,
        score_map: ScoreMap | str = ScoreMap.COMBINED,
        score_pooling: ScorePooling | str = ScorePooling.MAX,
        discriminator_width: int = 64,
        distance: LayerDistance | str = LayerDistance.COSINE,
        score_distance: LayerDistance | str | None = None,
        student_teacher_fusion: StudentTeacherFusion | str = StudentTeacherFusion.PRODUCT,
    ) -> None:
        super().__init__()
        layers1, layers2 = list(layers1), list(layers2)
        if len(layers1) != len(layers2) + 1:
            msg = (
                f"layers1 needs one layer more than layers2 (its last one feeds student2); "
                f"got layers1={layers1}, layers2={layers2}."
            )
            raise ValueError(msg)
        self.student2_input = parse_option(Student2Input, student2_input, "student2_input")
        self.loss_mode = parse_option(LossMode, loss_mode, "loss_mode")
        self.score_map = score_map  # validated by the setter
        self.score_pooling = score_pooling  # validated by the setter
        self.distance = distance  # validated by the setter
        self.score_distance = score_distance  # validated by the setter
        self.student_teacher_fusion = student_teacher_fusion  # validated by the setter
        direct = self.student2_input == Student2Input.DIRECT
        # "split" + "direct": pair 2's loss stops at student2, pair 1's covers student1's deepest layer
        self.detach_student2_input = direct and self.loss_mode == LossMode.SPLIT
        self.teacher1 = create_backbone(teacher1, layers1, pre_trained, teacher1_weights, allow_download)
        self.teacher1_layers = len(layers1)
        student1_layers = layers1 if direct else layers1[:-1]
        self.student1 = create_backbone(teacher1, student1_layers, pre_trained=False, requires_grad=True)
        self.teacher2 = create_backbone(teacher2, layers2, pre_trained, teacher2_weights, allow_download)
        for teacher in (self.teacher1, self.teacher2):
            teacher.requires_grad_(requires_grad=False)
        deep_channels = feature_shapes(self.teacher1)[-1][0]
        target_channels = [channels for channels, _ in feature_shapes(self.teacher2)]
        self.student2 = ReconstructionStudent(
            deep_channels,
            target_channels,
            parse_option(Student2Variant, student2_variant, "student2_variant").layout,
            attention,
            nonnegative_outputs(self.teacher2),
        )
        self.discriminator = DiscriminativeSubNetwork(len(layers2), out_channels=2, base_width=discriminator_width)
        # Same weights and maths, NHWC layout: oneDNN's faster layout on CPU for this full-resolution U-Net
        # (most of stage 2's compute); see docs/models/rstpm.md, "Training cost".
        self.discriminator.to(memory_format=torch.channels_last)
        self.anomaly_map_generator = AnomalyMapGenerator()
        # pair 1's maps (1-3), then pair 2's (6-4), shallow to deep in both
        self.residual_gaussians = ResidualGaussians(2 * len(layers2), fit_hint="RSTPMModel.fit_residual_gaussians")
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def score_map(self) -> ScoreMap:
        """Which of the three maps the eval forward returns (and scores)."""
        return self._score_map

    @score_map.setter
    def score_map(self, value: ScoreMap | str) -> None:
        self._score_map = parse_option(ScoreMap, value, "score_map")

    @property
    def score_pooling(self) -> ScorePooling:
        """How the eval forward reads the image score from the map (see :func:`image_score`)."""
        return self._score_pooling

    @score_pooling.setter
    def score_pooling(self, value: ScorePooling | str) -> None:
        self._score_pooling = parse_option(ScorePooling, value, "score_pooling")

    @property
    def student_teacher_fusion(self) -> StudentTeacherFusion:
        """How the S-T map joins the three pair sums (:class:`StudentTeacherFusion`)."""
        return self._student_teacher_fusion

    @student_teacher_fusion.setter
    def student_teacher_fusion(self, value: StudentTeacherFusion | str) -> None:
        self._student_teacher_fusion = parse_option(StudentTeacherFusion, value, "student_teacher_fusion")

    def train(self, mode: bool = True) -> RSTPMModel:
        """Switch modes but keep the frozen teachers in eval, so BatchNorm keeps its ImageNet statistics."""
        super().train(mode)
        self.teacher1.eval()
        self.teacher2.eval()
        return self

    def teacher_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Both frozen teachers' outputs for ``[0, 1]`` images: teacher1's layers, then teacher2's."""
        return self._teachers((images - self.mean) / self.std)

    def _teachers(self, normalized: torch.Tensor) -> list[torch.Tensor]:
        """:meth:`teacher_features` of images already normalised, so :meth:`features` normalises once."""
        return [*self.teacher1(normalized).values(), *self.teacher2(normalized).values()]

    def features(self, images: torch.Tensor, teacher_features: Sequence[torch.Tensor] | None = None) -> RSTPMFeatures:
        """Teacher and student pyramids of both pairs for ``[0, 1]`` images.

        ``teacher_features``: :meth:`teacher_features` of ``images`` computed earlier (e.g. cached
        during stage 1); ``None`` runs the teachers.
        """
        normalized = (images - self.mean) / self.std
        if teacher_features is None:
            teacher_features = self._teachers(normalized)
        teacher1 = list(teacher_features[: self.teacher1_layers])
        teacher2 = list(teacher_features[self.teacher1_layers :])
        student1 = list(self.student1(normalized).values())
        source = student1[-1] if self.student2_input == Student2Input.DIRECT else teacher1[-1]
        deep = None
        if self.detach_student2_input:
            deep = (teacher1[-1], student1[-1])
            source = source.detach()
        student2 = self.student2(source, teacher2)
        n_maps = len(teacher2)
        return RSTPMFeatures(teacher1[:n_maps], student1[:n_maps], teacher2, student2, deep)

    def summed_maps(self, features: RSTPMFeatures, image_size: Sequence[int]) -> torch.Tensor:
        """``(B, 3, H, W)``: ``m1+m6, m2+m5, m3+m4``, the discriminator's input."""
        return self.anomaly_map_generator.summed_maps(
            features.teacher1,
            features.student1,
            features.teacher2,
            features.student2,
            image_size=image_size,
        )

    def discriminate(self, summed: torch.Tensor) -> torch.Tensor:
        """The discriminator's 2-class logits for the summed maps, computed in channels-last layout."""
        return self.discriminator(summed.contiguous(memory_format=torch.channels_last))

    def student_teacher_sums(
        self,
        features: RSTPMFeatures,
        summed: torch.Tensor,
        distance: LayerDistance | None = None,
    ) -> torch.Tensor:
        """The pair sums whose product is the S-T map: ``summed`` itself, or the residual Gaussians'.

        ``distance``: which of the two (``None``: :attr:`distance`).
        """
        if (distance or self.distance) is LayerDistance.COSINE:
            return summed
        n_maps = len(features.teacher2)
        distances = self.residual_gaussians.distances(
            [*features.teacher1, *features.teacher2],
            [*features.student1, *features.student2],
        )
        return self.anomaly_map_generator.pair_sums(distances[:n_maps], distances[n_maps:], summed.shape[-2:])

    def anomaly_maps(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """All three maps for ``images``: ``student_teacher``, ``discriminator`` and ``combined``."""
        features = self.features(images)
        summed = self.summed_maps(features, images.shape[-2:])
        student_teacher = self.student_teacher_sums(features, summed)
        return self.anomaly_map_generator(student_teacher, self.discriminate(summed), self.student_teacher_fusion)

    def selected_map(
        self,
        features: RSTPMFeatures,
        summed: torch.Tensor,
        distance: LayerDistance,
        logits: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The map :attr:`score_map` names, its S-T maps under ``distance``; ``summed``: the cosine pair sums.

        ``logits``: the discriminator's output for ``summed`` when already computed (``None`` runs it if needed).

        Computes only what that map needs. The S-T map does not use the discriminator, a full-resolution
        U-Net that is most of the eval forward's cost (about 1.2 s of 1.3 s for a 256 px image at width 64
        on 2 CPU cores): scoring the S-T map skips it. An exported graph drops the unused branch on its
        own; eager torch (the tests, the curves, the torch latency column) does not. The branches are on
        Python options, so the graph still traces.
        """
        student_teacher = self.student_teacher_sums(features, summed, distance)
        if self.score_map == ScoreMap.STUDENT_TEACHER:
            return self.anomaly_map_generator.student_teacher_map(student_teacher, self.student_teacher_fusion)
        logits = self.discriminate(summed) if logits is None else logits
        return self.anomaly_map_generator(student_teacher, logits, self.student_teacher_fusion)[self.score_map]

    @torch.no_grad()
    def fit_residual_gaussians(self, batches: Iterable[tuple[torch.Tensor, Sequence[torch.Tensor] | None]]) -> None:
        """Fit the six S-T maps' per-position Gaussians on the unit residuals of normal images.

        ``batches`` yields ``(images, teacher_features or None)`` (as :meth:`features` takes them). The
        students run in eval mode, as at test time; the mode the model was in is restored.
        """
        was_training = self.training
        self.eval()
        self.residual_gaussians.fit(
            ([*f.teacher1, *f.teacher2], [*f.student1, *f.student2])
            for f in (self.features(images, teachers) for images, teachers in batches)
        )
        self.train(was_training)

    def forward(self, images: torch.Tensor) -> RSTPMFeatures | InferenceBatch:
        """Training: the feature pyramids (for the S-T loss). Eval: the selected map and its image score."""
        if self.training:
            return self.features(images)
        features = self.features(images)
        summed = self.summed_maps(features, images.shape[-2:])
        if self.scored_by is self.distance:  # Python options: the exported graph holds one branch
            anomaly_map = scored = self.selected_map(features, summed, self.distance)
        else:  # both maps read the same discriminator output: run the U-Net once
            logits = None if self.score_map == ScoreMap.STUDENT_TEACHER else self.discriminate(summed)
            anomaly_map = self.selected_map(features, summed, self.distance, logits)
            scored = self.selected_map(features, summed, self.scored_by, logits)
        return InferenceBatch(pred_score=image_score(scored, self.score_pooling), anomaly_map=anomaly_map)
