"""``anomalib-ext demo --model M``: every model runs the demo on its own offline recipe (``demo_arguments``)."""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

import pytest
import torch

import anomalib_ext
from anomalib_ext import demo
from anomalib_ext.models.efficientad import EfficientADOffline

if TYPE_CHECKING:
    from pathlib import Path

# EfficientAD's autoencoder needs at least 128 px; the others run at the texture set's 64 px.
IMAGE_SIZE = {"RD4AD": 64, "RSTPM": 64, "UniAD": 64, "EfficientADOffline": 128}


def test_every_model_has_an_offline_demo_recipe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each exported model builds from its demo arguments on the offline Lite0 weights, without training."""
    monkeypatch.setenv("ANOMALIB_EXT_WEIGHTS_DIR", str(tmp_path / "weights"))
    teacher = tmp_path / "teachers" / "efficientad_teacher_small_lite0_128px_demo.pth"
    teacher.parent.mkdir()
    teacher.touch()  # an existing stand-in is reused, not distilled again (nothing reads it before fit)
    assert set(IMAGE_SIZE) == set(anomalib_ext.__all__)
    for name, size in IMAGE_SIZE.items():
        model_cls = demo.model_class(name)
        arguments = model_cls.demo_arguments(size, tmp_path)
        model = model_cls(**arguments)
        assert model.pre_processor.transform(torch.rand(1, 3, 50, 70)).shape == (1, 3, size, size), name
    assert arguments["teacher_weights"] == str(teacher)


def test_unknown_model_and_too_small_efficientad_fail_before_any_work(tmp_path: Path) -> None:
    """An unknown model and EfficientAD below 128 px fail before any teacher is distilled or file written."""
    with pytest.raises(SystemExit, match="RD4AD, RSTPM"):
        demo.model_class("Padim")
    with pytest.raises(ValueError, match=">= 128"):
        EfficientADOffline.demo_arguments(64, tmp_path)
    assert not (tmp_path / "teachers").exists()


@pytest.mark.slow
@pytest.mark.parametrize("model", list(IMAGE_SIZE))
def test_demo_runs_each_model_offline(
    model: str,
    texture_root: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The demo, shortened (1 epoch on the tiny grass set): train, test, export, compare, heatmaps.

    EfficientADOffline finds no teacher file (an empty weights folder), so the demo distils its
    stand-in first, here in 2 steps instead of ``DEMO_TEACHER_STEPS``.
    """
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ANOMALIB_EXT_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setattr(EfficientADOffline, "DEMO_TEACHER_STEPS", 2)
    output = tmp_path / "out"
    size = IMAGE_SIZE[model]
    arguments = ["--model", model, "--data", str(texture_root / "grass"), "--epochs", "1", "--batch-size", "4"]
    with caplog.at_level(logging.WARNING):
        assert demo.main([*arguments, "--image-size", str(size), "--output", str(output)]) == 0
    summary = json.loads((output / "summary.json").read_text())
    assert (summary["model"], summary["image_size"]) == (model, size)
    assert {"image_AUROC", "pixel_AUROC"} <= set(summary["metrics"])
    assert summary["max_map_difference"] < 1e-3
    assert len(list((output / "heatmaps").glob("*.png"))) >= 4
    if model == "EfficientADOffline":
        assert "distilling a tiny stand-in" in caplog.text
        assert list((output / "teachers").glob("*.pth"))
