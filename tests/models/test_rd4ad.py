"""RD4AD: the official architecture and loss, a tiny train/test, export parity and checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision.models.resnet import Bottleneck as TorchvisionBottleneck

from anomalib_ext import RD4AD
from anomalib_ext.models.rd4ad.anomaly_map import AnomalyMapGenerator
from anomalib_ext.models.rd4ad.loss import RD4ADLoss
from anomalib_ext.models.rd4ad.torch_model import OneClassBottleneck, RD4ADModel
from tests.helpers import assert_openvino_parity, fit_and_test

LITE0 = {"backbone": "efficientnet_lite0", "layers": ("blocks.1", "blocks.2", "blocks.4")}
WRN50_SHAPES = [(256, 4), (512, 8), (1024, 16)]


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _tiny_model(**kwargs) -> RD4AD:
    return RD4AD(**LITE0, pre_processor=RD4AD.configure_pre_processor(image_size=(64, 64)), **kwargs)


def test_one_class_embedding_has_the_official_width() -> None:
    """OCE = three torchvision bottlenecks at width_per_group 128 (official), MFF = 3x3 stride-2 convs."""
    ocbe = OneClassBottleneck(WRN50_SHAPES)
    downsample = torch.nn.Sequential(torch.nn.Conv2d(3072, 2048, 1, stride=2, bias=False), torch.nn.BatchNorm2d(2048))
    official = torch.nn.Sequential(
        TorchvisionBottleneck(3072, 512, stride=2, downsample=downsample, base_width=128),
        TorchvisionBottleneck(2048, 512, base_width=128),
        TorchvisionBottleneck(2048, 512, base_width=128),
    )
    assert _count(ocbe.oce) == _count(official)
    convs = [[m for m in align.modules() if isinstance(m, torch.nn.Conv2d)] for align in ocbe.align]
    assert [[(c.in_channels, c.out_channels, c.stride) for c in level] for level in convs] == [
        [(256, 512, (2, 2)), (512, 1024, (2, 2))],
        [(512, 1024, (2, 2))],
    ]
    embedding = ocbe([torch.rand(1, c, 64 // (s // 4), 64 // (s // 4)) for c, s in WRN50_SHAPES])
    assert embedding.shape == (1, 2048, 8, 8)


def test_student_mirrors_the_teacher_for_any_backbone() -> None:
    for kwargs in ({"backbone": "resnet18", "layers": ("layer1", "layer2", "layer3")}, LITE0):
        model = RD4ADModel(pre_trained=False, **kwargs).train()
        teacher, student = model(torch.rand(2, 3, 64, 64))
        assert [t.shape for t in teacher] == [s.shape for s in student]


def test_loss_is_one_cosine_over_the_flattened_map() -> None:
    loss = RD4ADLoss()
    t = torch.rand(2, 4, 3, 3)
    assert loss([t], [t]).item() == pytest.approx(0.0, abs=1e-6)
    # scaling one pixel's vector changes per-pixel cosine nowhere, but changes the flattened cosine
    s = t.clone()
    s[:, :, 0, 0] *= 5
    assert loss([t], [s]).item() > 1e-3
    assert loss([t, t], [s, s]).item() == pytest.approx(2 * loss([t], [s]).item())


def test_map_sums_layers_and_smooths_with_a_33_pixel_kernel() -> None:
    generator = AnomalyMapGenerator(mode="add", sigma=4)
    assert generator.blur.kernel.shape[-2:] == (33, 33)
    t = [torch.rand(1, 8, 16, 16), torch.rand(1, 8, 8, 8)]
    assert torch.allclose(generator(t, t, (64, 64)), torch.zeros(1, 1, 64, 64), atol=1e-6)
    opposite = generator(t, [-x for x in t], (64, 64))
    assert torch.allclose(opposite, torch.full((1, 1, 64, 64), 4.0), atol=1e-4)  # (1 - (-1)) per layer, summed


def test_teacher_stays_frozen_and_optimiser_follows_the_official_recipe() -> None:
    model = _tiny_model()
    model.train()
    assert not model.model.encoder.feature_extractor.training
    assert not any(p.requires_grad for p in model.model.encoder.parameters())
    optimizer = model.configure_optimizers()
    assert optimizer.defaults["lr"] == 0.005
    assert optimizer.defaults["betas"] == (0.5, 0.999)
    optimised = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert optimised.isdisjoint(id(p) for p in model.model.encoder.parameters())


@pytest.mark.slow
def test_train_test_export_and_checkpoint(tiny_datamodule, tmp_path: Path) -> None:
    model = _tiny_model()
    metrics = fit_and_test(model, tiny_datamodule, tmp_path / "run", max_epochs=2)
    assert {"image_AUROC", "pixel_AUROC", "pixel_AUPRO"} <= set(metrics)
    assert all(0.0 <= value <= 1.0 for value in metrics.values())

    checkpoint = next((tmp_path / "run").rglob("*.ckpt"))
    restored = RD4AD.load_from_checkpoint(checkpoint, weights_only=True)
    restored.eval()
    model.eval()
    image = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(restored.model(image).anomaly_map, model.model(image).anomaly_map, atol=1e-5)

    assert_openvino_parity(model, tmp_path / "export", (64, 64))
