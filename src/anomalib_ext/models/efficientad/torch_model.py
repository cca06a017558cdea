"""EfficientAD networks: PDN teacher and student, autoencoder, and the fused inference path.

Layer specifications are anomalib's (``SmallPatchDescriptionNetwork``, ``MediumPatchDescriptionNetwork``,
``Encoder``, ``Decoder``), which match nelson1425/EfficientAD's ``common.py`` layer for layer, so
anomalib-format teacher files load unchanged. What differs from anomalib's ``EfficientAdModel``:

* ImageNet normalisation happens once per batch from buffers (anomalib builds the mean/std
  tensors and copies them to the device in each of its three sub-networks, every call);
* map normalisation follows the reproduction: quantile-normalise the raw feature-resolution maps,
  combine, pad with zeros, upsample (anomalib pads raw maps before normalising);
* statistics live in plain buffers whose initial values make every normalisation the identity, so
  the eval path has no data-dependent branch and no host sync;
* :meth:`EfficientADModel.prepare_for_inference` switches to channels-last and/or half precision.
"""

from __future__ import annotations

from enum import StrEnum

import torch
from anomalib.data import InferenceBatch
from anomalib.models.image.efficient_ad.torch_model import (
    Decoder,
    Encoder,
    MediumPatchDescriptionNetwork,
    SmallPatchDescriptionNetwork,
)
from torch import nn
from torchvision.transforms.v2 import functional as TF  # noqa: N812

from anomalib_ext.components.backbone import IMAGENET_MEAN, IMAGENET_STD

from .anomaly_map import distance_maps, normalise_and_combine, to_image_size
from .loss import autoencoder_losses, hard_feature_loss, penalty_loss


class ModelSize(StrEnum):
    """EfficientAD-S or EfficientAD-M (the PDN's width and depth)."""

    SMALL = "small"
    MEDIUM = "medium"


class SmallPDN(SmallPatchDescriptionNetwork):
    """Small PDN (conv4-128, avgpool, conv4-256, avgpool, conv3-256, conv4-C) on ImageNet-normalised input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features ``(N, C, H/4 - 8, W/4 - 8)`` unpadded, ``(N, C, H/4, W/4)`` padded."""
        x = self.avgpool1(torch.relu(self.conv1(x)))
        x = self.avgpool2(torch.relu(self.conv2(x)))
        return self.conv4(torch.relu(self.conv3(x)))


class MediumPDN(MediumPatchDescriptionNetwork):
    """Medium PDN (conv4-256, avgpool, conv4-512, avgpool, conv1-512, conv3-512, conv4-C, conv1-C)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Same output size as :class:`SmallPDN`."""
        x = self.avgpool1(torch.relu(self.conv1(x)))
        x = self.avgpool2(torch.relu(self.conv2(x)))
        x = torch.relu(self.conv4(torch.relu(self.conv3(x))))
        return self.conv6(torch.relu(self.conv5(x)))


def make_pdn(model_size: ModelSize | str, out_channels: int, padding: bool) -> SmallPDN | MediumPDN:
    """A PDN of the given size; ``padding=True`` is the distillation variant (output ``H/4``)."""
    if model_size == "small":
        return SmallPDN(out_channels, padding=padding)
    if model_size == "medium":
        return MediumPDN(out_channels, padding=padding)
    msg = f"model_size must be 'small' or 'medium', got {model_size!r}"
    raise ValueError(msg)


class AutoEncoder(nn.Module):
    """64-dim bottleneck autoencoder (5 stride-2 convs + one 8x8 conv down to 1x1, bilinear upsampling decoder).

    The paper's input is 256 px, where the last encoder conv is 8x8. For other sizes its kernel is
    ``image_size // 32`` so the bottleneck stays 1x1 (128 px: 4x4); at 256 px this is the paper's net.
    """

    def __init__(self, out_channels: int, padding: bool = False, image_size: int = 256) -> None:
        super().__init__()
        if image_size < 128 or image_size % 32:
            msg = f"EfficientAD's autoencoder needs an image size >= 128 and divisible by 32, got {image_size}."
            raise ValueError(msg)
        self.encoder = Encoder()
        if image_size != 256:
            self.encoder.enconv6 = nn.Conv2d(64, 64, kernel_size=image_size // 32)
        self.decoder = Decoder(out_channels, padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Predicted teacher features at the PDN's output size for ImageNet-normalised ``x``."""
        return self.decoder(self.encoder(x), tuple(x.shape[-2:]))


def color_jitter(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Per image, one of brightness / contrast / saturation with a factor from U(0.8, 1.2) (paper, Sec. 3.3)."""
    functions = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation)
    choices = torch.randint(0, 3, (len(images),), generator=generator).tolist()
    factors = (0.8 + 0.4 * torch.rand(len(images), generator=generator)).tolist()
    return torch.stack(
        [functions[choice](image, factor) for image, choice, factor in zip(images, choices, factors, strict=True)],
    )


class EfficientADModel(nn.Module):
    """Teacher, student and autoencoder with their statistics as buffers.

    Args:
        model_size: ``small`` (EfficientAD-S) or ``medium`` (EfficientAD-M).
        out_channels: teacher channels (384); the student has twice as many.
        padding: padded PDNs (only for experiments; the paper trains and tests unpadded).
        pad_maps: pad the unpadded maps back by 4 feature pixels before upsampling (reproduction).
        image_size: input side the autoencoder is built for (paper: 256).
    """

    def __init__(
        self,
        model_size: ModelSize | str = ModelSize.SMALL,
        out_channels: int = 384,
        padding: bool = False,
        pad_maps: bool = True,
        image_size: int = 256,
    ) -> None:
        super().__init__()
        self.model_size = model_size
        self.out_channels = out_channels
        self.pad_maps = pad_maps and not padding
        self.teacher = make_pdn(model_size, out_channels, padding).eval().requires_grad_(requires_grad=False)
        self.student = make_pdn(model_size, 2 * out_channels, padding)
        self.ae = AutoEncoder(out_channels, padding, image_size)
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.register_buffer("teacher_mean", torch.zeros(1, out_channels, 1, 1))
        self.register_buffer("teacher_std", torch.ones(1, out_channels, 1, 1))
        # (q_0.9, q_0.995) of M_ST and M_AE on held-out training images; (0, 0.1) = identity.
        self.register_buffer("q_st", torch.tensor([0.0, 0.1]))
        self.register_buffer("q_ae", torch.tensor([0.0, 0.1]))

    def train(self, mode: bool = True) -> EfficientADModel:
        """Keep the frozen teacher in eval mode whatever the rest does."""
        super().train(mode)
        self.teacher.eval()
        return self

    def normalize_input(self, images: torch.Tensor) -> torch.Tensor:
        """ImageNet normalisation of ``[0, 1]`` images, in the model's dtype and memory format."""
        images = images.to(dtype=self.pixel_mean.dtype)
        return (images - self.pixel_mean) / self.pixel_std

    def teacher_features(self, x: torch.Tensor) -> torch.Tensor:
        """Teacher output standardised with its channel mean/std (``x`` already normalised)."""
        with torch.no_grad():
            return (self.teacher(x) - self.teacher_mean) / self.teacher_std

    def raw_maps(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unnormalised ``(M_ST, M_AE)`` at feature resolution: what the map quantiles are taken of."""
        x = self.normalize_input(images)
        return distance_maps(self.teacher_features(x), self.student(x), self.ae(x))

    def forward(self, images: torch.Tensor) -> InferenceBatch:
        """Anomaly map ``(N, 1, H, W)`` and score ``(N,)`` (its maximum) for ``[0, 1]`` images."""
        map_st, map_ae = self.raw_maps(images)
        anomaly_map = normalise_and_combine(map_st, map_ae, self.q_st, self.q_ae)
        anomaly_map = to_image_size(anomaly_map, tuple(images.shape[-2:]), self.pad_maps)
        return InferenceBatch(pred_score=anomaly_map.amax(dim=(1, 2, 3)), anomaly_map=anomaly_map)

    def losses(self, images: torch.Tensor, natural: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """The four loss terms for a batch of training images and a batch of natural images."""
        channels = self.out_channels
        x = self.normalize_input(images)
        distance = (self.teacher_features(x) - self.student(x)[:, :channels]).pow(2)
        terms = {"hard": hard_feature_loss(distance)}
        if natural is not None:
            terms["penalty"] = penalty_loss(self.student(self.normalize_input(natural)), channels)
        x_aug = self.normalize_input(color_jitter(images))
        loss_ae, loss_stae = autoencoder_losses(
            self.teacher_features(x_aug),
            self.ae(x_aug),
            self.student(x_aug)[:, channels:],
        )
        terms.update(ae=loss_ae, stae=loss_stae)
        return terms

    @torch.no_grad()
    def set_teacher_statistics(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Store the teacher's channel mean/std (shape ``(C,)`` or ``(1, C, 1, 1)``)."""
        self.teacher_mean.copy_(mean.reshape(self.teacher_mean.shape))
        self.teacher_std.copy_(std.reshape(self.teacher_std.shape))

    @torch.no_grad()
    def set_map_quantiles(self, q_st: torch.Tensor, q_ae: torch.Tensor) -> None:
        """Store ``(q_0.9, q_0.995)`` of each map."""
        self.q_st.copy_(q_st.reshape(2))
        self.q_ae.copy_(q_ae.reshape(2))

    def prepare_for_inference(self, channels_last: bool = True, half: bool = False) -> EfficientADModel:
        """Eval mode, optionally channels-last memory and fp16 weights (GPU); returns ``self``."""
        self.eval()
        if half:
            self.half()
        if channels_last:
            self.to(memory_format=torch.channels_last)
        return self
