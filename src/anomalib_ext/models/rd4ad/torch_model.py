"""RD4AD in torch: frozen teacher encoder, one-class bottleneck embedding (OCBE), student decoder.

Follows the official code (hq-deng/RD4AD, ``resnet.py``/``de_resnet.py``) but derives every
channel count and stride from the teacher's timm feature info, so other timm CNNs work too
(feature strides must double between layers):

- MFF: each shallower feature goes through ``log2(stride ratio)`` 3x3 stride-2 conv + BN + ReLU
  steps, each step moving to the next level's channels (for WideResNet50-2: 256->512->1024 and
  512->1024), and is concatenated with the deepest feature (3 x 1024 channels at 16x16).
- OCE: ``oce_blocks`` ResNet bottleneck blocks, the first with stride 2 and a 1x1 projection
  shortcut, out ``2 x C_last`` channels (2048 for WideResNet50-2), bottleneck width
  ``oce_width`` (default ``C_last``: the official ``width_per_group=128``; anomalib uses half).
- Student: a de-ResNet: per level, a stride-2 transposed-conv bottleneck (2x2 deconv in the main
  path and in the shortcut) followed by plain bottlenecks, mirroring the teacher level by level.
  Officially each level's last block ends in ReLU, right for ResNet teachers (post-ReLU
  outputs). EfficientNet stages end in a linear bottleneck whose outputs are signed, which a
  ReLU-ended student can never match, so ``student_activation="auto"`` (default) keeps that ReLU
  only where the teacher layer is non-negative; ``"relu"`` is the official form, ``"none"`` drops it.
- Init: as official (and anomalib), Kaiming-normal ``fan_out``/ReLU on every ``nn.Conv2d`` of
  the OCBE and the student, BatchNorm weight 1 and bias 0. The official ``isinstance(m,
  nn.Conv2d)`` test does not match ``nn.ConvTranspose2d``, so the 2x2 deconvs keep PyTorch's
  default init there and here.

Length: the encoder, the OCBE, the decoder and its init are one network in the paper's figure 2
and are kept in one module so the init and the activation rule can be read beside the layers
they apply to (the stages themselves are anomalib's and timm's).
"""

from __future__ import annotations

import math
from enum import StrEnum
from typing import TYPE_CHECKING

import torch
from anomalib.data import InferenceBatch
from torch import nn

from anomalib_ext.components.backbone import create_backbone, feature_shapes, nonnegative_outputs
from anomalib_ext.components.residual_gaussian import DistanceChoice, LayerDistance, ResidualGaussians

from .anomaly_map import AnomalyMapGenerator, MapFusion, cosine_distances

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence
    from pathlib import Path

    from anomalib.models.components import TimmFeatureExtractor


class StudentActivation(StrEnum):
    """Whether each student level ends in ReLU.

    ``auto``: only where the teacher layer is non-negative (post-ReLU ResNet stages yes,
    EfficientNet linear bottlenecks no); ``relu``: always (official code); ``none``: never.
    """

    AUTO = "auto"
    RELU = "relu"
    NONE = "none"


def student_relu_flags(activation: StudentActivation | str, encoder: TimmFeatureExtractor) -> list[bool]:
    """Per teacher layer (shallow to deep): does the matching student level end in ReLU?"""
    activation = StudentActivation(activation)
    if activation is StudentActivation.AUTO:
        return nonnegative_outputs(encoder)
    return [activation is StudentActivation.RELU] * len(encoder.out_dims)


def init_weights(module: nn.Module) -> None:
    """Official init: Kaiming-normal (``fan_out``, ReLU) on ``nn.Conv2d``, BatchNorm weight 1 / bias 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d | nn.GroupNorm):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)


def _conv_bn_relu(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


def _log2_ratio(high: int, low: int) -> int:
    ratio = high // low
    if ratio < 2 or high % low or ratio & (ratio - 1):
        msg = f"RD4AD needs feature strides that grow by powers of two between layers, got {low} -> {high}."
        raise ValueError(msg)
    return int(math.log2(ratio))


class Bottleneck(nn.Module):
    """ResNet bottleneck (1x1, 3x3, 1x1) with an optional strided 1x1 projection shortcut."""

    def __init__(self, in_ch: int, width: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_ch, width, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, out_ch, 1, bias=False),
            nn.BatchNorm2d(out_ch),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_ch),
            )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``ReLU(body(x) + shortcut(x))``."""
        return self.relu(self.body(x) + self.shortcut(x))


class DeBottleneck(nn.Module):
    """The student's bottleneck: the 3x3 conv becomes a 2x2 stride-``k`` transposed conv when upsampling.

    ``out_relu=False`` drops the ReLU after the residual sum, so the block can output signed values.
    """

    def __init__(self, in_ch: int, width: int, out_ch: int, upsample: int = 1, out_relu: bool = True) -> None:
        super().__init__()
        middle = (
            nn.ConvTranspose2d(width, width, upsample, stride=upsample, bias=False)
            if upsample > 1
            else nn.Conv2d(width, width, 3, padding=1, bias=False)
        )
        self.body = nn.Sequential(
            nn.Conv2d(in_ch, width, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            middle,
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, out_ch, 1, bias=False),
            nn.BatchNorm2d(out_ch),
        )
        self.shortcut: nn.Module = nn.Identity()
        if upsample > 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.ConvTranspose2d(in_ch, out_ch, upsample, stride=upsample, bias=False),
                nn.BatchNorm2d(out_ch),
            )
        self.relu: nn.Module = nn.ReLU(inplace=True) if out_relu else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``body(x) + shortcut(x)``, then ReLU unless the block was built with ``out_relu=False``."""
        return self.relu(self.body(x) + self.shortcut(x))


class OneClassBottleneck(nn.Module):
    """OCBE = multi-scale feature fusion (MFF) + one-class embedding (OCE) blocks."""

    def __init__(self, shapes: Sequence[tuple[int, int]], oce_blocks: int = 3, oce_width: int | None = None) -> None:
        super().__init__()
        channels = [c for c, _ in shapes]
        strides = [s for _, s in shapes]
        last = channels[-1]
        self.align = nn.ModuleList()
        for level in range(len(shapes) - 1):
            steps: list[nn.Module] = []
            current = channels[level]
            for i in range(level, len(shapes) - 1):
                for _ in range(_log2_ratio(strides[i + 1], strides[i])):
                    steps.append(_conv_bn_relu(current, channels[i + 1]))
                    current = channels[i + 1]
            self.align.append(nn.Sequential(*steps))
        width = oce_width or last
        embed = 2 * last
        blocks: list[nn.Module] = [Bottleneck(last * len(shapes), width, embed, stride=2)]
        blocks += [Bottleneck(embed, width, embed) for _ in range(oce_blocks - 1)]
        self.oce = nn.Sequential(*blocks)
        self.out_channels = embed
        init_weights(self)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Bring the shallower levels to the deepest level's grid, concatenate (MFF), embed (OCE)."""
        aligned = [align(feature) for align, feature in zip(self.align, features[:-1], strict=True)]
        return self.oce(torch.cat([*aligned, features[-1]], dim=1)).contiguous()


class DeResNetDecoder(nn.Module):
    """Student decoder mirroring the teacher: deepest level first, returns features shallow-to-deep.

    ``output_relu`` (shallow to deep, default all ``True`` as official) says whether each level's
    last block ends in ReLU; blocks inside a level always do.
    """

    def __init__(
        self,
        shapes: Sequence[tuple[int, int]],
        in_channels: int,
        blocks: Sequence[int] = (3, 4, 6),
        width_ratio: float = 0.5,
        output_relu: Sequence[bool] | None = None,
    ) -> None:
        super().__init__()
        if len(blocks) != len(shapes):
            msg = f"decoder_blocks needs one entry per teacher layer ({len(shapes)}), got {list(blocks)}."
            raise ValueError(msg)
        relu = [True] * len(shapes) if output_relu is None else [bool(flag) for flag in output_relu]
        if len(relu) != len(shapes):
            msg = f"output_relu needs one flag per teacher layer ({len(shapes)}), got {relu}."
            raise ValueError(msg)
        self.stages = nn.ModuleList()
        current, stride = in_channels, 2 * shapes[-1][1]
        for (out_ch, out_stride), count, last_relu in zip(reversed(shapes), blocks, reversed(relu), strict=True):
            upsample = stride // out_stride
            width = max(1, int(out_ch * width_ratio))
            inputs = [current] + [out_ch] * (count - 1)
            upsamples = [upsample] + [1] * (count - 1)
            relus = [True] * (count - 1) + [last_relu]
            layers = [
                DeBottleneck(in_ch, width, out_ch, up, out_relu=r)
                for in_ch, up, r in zip(inputs, upsamples, relus, strict=True)
            ]
            self.stages.append(nn.Sequential(*layers))
            current, stride = out_ch, out_stride
        init_weights(self)

    def forward(self, embedding: torch.Tensor) -> list[torch.Tensor]:
        """Decode the embedding deepest stage first; return the stages' outputs shallow to deep."""
        outputs = []
        x = embedding
        for stage in self.stages:
            x = stage(x)
            outputs.append(x)
        return outputs[::-1]


class RD4ADModel(DistanceChoice, nn.Module):
    """Teacher encoder -> OCBE -> student decoder; in eval mode returns anomaly map and score.

    ``student_relu`` records, shallow to deep, whether each student level ends in ReLU
    (resolved from ``student_activation`` against the teacher, see :class:`StudentActivation`).
    ``distance``, ``score_distance`` and ``map_layers`` only change how the eval map and score are
    made, so all can be set after training; ``residual_gaussian`` needs :meth:`fit_residual_gaussians`
    on normal images first.
    """

    def __init__(
        self,
        backbone: str = "wide_resnet50_2.tv_in1k",
        layers: Sequence[str | int] = ("layer1", "layer2", "layer3"),
        pre_trained: bool = True,
        weights: str | Path | None = None,
        allow_download: bool = False,
        oce_blocks: int = 3,
        oce_width: int | None = None,
        decoder_blocks: Sequence[int] = (3, 4, 6),
        decoder_width_ratio: float = 0.5,
        anomaly_map_mode: MapFusion | str = MapFusion.ADD,
        sigma: float = 4.0,
        student_activation: StudentActivation | str = StudentActivation.AUTO,
        map_layers: Sequence[int] | None = None,
        distance: LayerDistance | str = LayerDistance.COSINE,
        score_distance: LayerDistance | str | None = None,
    ) -> None:
        super().__init__()
        self.encoder = create_backbone(
            backbone,
            layers,
            pre_trained=pre_trained,
            weights=weights,
            allow_download=allow_download,
        )
        for parameter in self.encoder.parameters():
            parameter.requires_grad_(requires_grad=False)
        shapes = feature_shapes(self.encoder)
        self.student_relu = student_relu_flags(student_activation, self.encoder)
        self.bottleneck = OneClassBottleneck(shapes, oce_blocks=oce_blocks, oce_width=oce_width)
        self.decoder = DeResNetDecoder(
            shapes,
            self.bottleneck.out_channels,
            decoder_blocks,
            decoder_width_ratio,
            output_relu=self.student_relu,
        )
        self.anomaly_map_generator = AnomalyMapGenerator(mode=anomaly_map_mode, sigma=sigma)
        self.map_layers = map_layers  # validated by the setter
        self.distance = distance  # parsed by the setter
        self.score_distance = score_distance  # parsed by the setter
        self.residual_gaussians = ResidualGaussians(len(shapes), fit_hint="RD4ADModel.fit_residual_gaussians")

    @property
    def map_layers(self) -> list[int] | None:
        """Indices (shallow to deep) of the layers whose distance maps make the anomaly map; ``None``: all."""
        return self._map_layers

    @map_layers.setter
    def map_layers(self, value: Sequence[int] | None) -> None:
        count = len(self.student_relu)  # one entry per teacher layer
        if value is not None and (not value or any(not 0 <= int(index) < count for index in value)):
            msg = f"map_layers must be None or a non-empty list of layer indices in [0, {count}); got {value!r}."
            raise ValueError(msg)
        self._map_layers = None if value is None else [int(index) for index in value]

    def train(self, mode: bool = True) -> RD4ADModel:
        """Keep the teacher in eval mode: its BatchNorm statistics are ImageNet's and stay frozen."""
        super().train(mode)
        self.encoder.eval()
        return self

    def features(
        self,
        images: torch.Tensor,
        teacher_features: list[torch.Tensor] | None = None,
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The teacher's features at the distilled layers and the student's, decoded from their bottleneck.

        ``teacher_features``: the teacher's outputs for ``images`` when already known; ``None`` runs the teacher.
        """
        teacher = list(self.encoder(images).values()) if teacher_features is None else teacher_features
        return teacher, self.decoder(self.bottleneck(teacher))

    def forward(
        self,
        images: torch.Tensor,
        teacher_features: list[torch.Tensor] | None = None,
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]] | InferenceBatch:
        """Teacher and student features (training) or the anomaly map and score (eval).

        ``teacher_features``: the teacher's outputs for ``images`` when already known (a feature
        cache during training); ``None`` runs the teacher.
        """
        teacher, student = self.features(images, teacher_features)
        if self.training:
            return teacher, student
        size = (images.shape[-2], images.shape[-1])
        anomaly_map = self.fused_map(teacher, student, self.distance, size)
        scored = anomaly_map
        if self.scored_by is not self.distance:  # a Python option: the exported graph holds one branch
            scored = self.fused_map(teacher, student, self.scored_by, size)
        return InferenceBatch(pred_score=torch.amax(scored, dim=(-2, -1)), anomaly_map=anomaly_map)

    def fused_map(
        self,
        teacher: list[torch.Tensor],
        student: list[torch.Tensor],
        distance: LayerDistance,
        image_size: tuple[int, int],
    ) -> torch.Tensor:
        """The smoothed fusion of the :attr:`map_layers` maps under ``distance``, at ``image_size``."""
        # a fixed Python list: the exported graph keeps only these layers
        layers = range(len(teacher)) if self.map_layers is None else self.map_layers
        if distance is LayerDistance.RESIDUAL_GAUSSIAN:
            distances = self.residual_gaussians.distances(teacher, student, layers)
        else:
            distances = cosine_distances([teacher[i] for i in layers], [student[i] for i in layers])
        return self.anomaly_map_generator.fuse(distances, image_size)

    @torch.no_grad()
    def fit_residual_gaussians(self, batches: Iterable[tuple[torch.Tensor, list[torch.Tensor] | None]]) -> None:
        """Fit each layer's per-position Gaussian on the unit residuals of normal images.

        ``batches`` yields ``(images, teacher_features or None)``. The student runs in eval mode, as
        at test time; the mode it was in is restored.
        """
        was_training = self.training
        self.eval()
        self.residual_gaussians.fit(self.features(images, teacher) for images, teacher in batches)
        self.train(was_training)
