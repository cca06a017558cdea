"""Deployment: an exported OpenVINO model scores a messy folder without crashing or losing results."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomalib_ext import RD4AD
from anomalib_ext.deploy import export_openvino, predict_folder

LITE0 = {"backbone": "efficientnet_lite0", "layers": ("blocks.1", "blocks.2", "blocks.4")}


@pytest.fixture(autouse=True)
def _run_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """anomalib's OpenVINOInferencer writes ./openvino_cache into the working directory."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def exported_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An (untrained) RD4AD exported at 64 px: enough to exercise the deployment path."""
    model = RD4AD(**LITE0, pre_processor=RD4AD.configure_pre_processor(image_size=(64, 64)))
    return export_openvino(model, tmp_path_factory.mktemp("export"), 64)


def _messy_folder(folder: Path) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (80, 120, 3), dtype=np.uint8)).save(folder / "a_rgb.png")
    Image.fromarray(rng.integers(0, 255, (50, 50), dtype=np.uint8)).save(folder / "b_gray.jpg")
    Image.fromarray(rng.integers(0, 255, (64, 64, 4), dtype=np.uint8), mode="RGBA").save(folder / "c_rgba.png")
    (folder / "d_notes.txt").write_text("not an image")
    (folder / "e_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    return folder


@pytest.mark.slow
def test_predict_folder_converts_skips_and_writes_incrementally(exported_model: Path, tmp_path: Path) -> None:
    folder = _messy_folder(tmp_path / "images")
    results = predict_folder(exported_model, folder, tmp_path / "out")
    assert [row["image"] for row in results] == ["a_rgb.png", "b_gray.jpg", "c_rgba.png"]
    assert [row["note"] for row in results] == ["", "converted from L", "converted from RGBA"]
    with (tmp_path / "out" / "predictions.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["image"] for row in rows] == ["a_rgb.png", "b_gray.jpg", "c_rgba.png"]
    assert all(np.isfinite(float(row["score"])) for row in rows)
    assert len(list((tmp_path / "out" / "overlays").glob("*.png"))) == 3
    # a second run appends instead of overwriting what was written before
    predict_folder(exported_model, folder, tmp_path / "out", overlays=False)
    with (tmp_path / "out" / "predictions.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == 6


def test_empty_folder_is_not_an_error(exported_model: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert predict_folder(exported_model, tmp_path / "empty", tmp_path / "out") == []


def test_missing_folder_is_named(exported_model: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        predict_folder(exported_model, tmp_path / "nowhere", tmp_path / "out")


@pytest.mark.slow
def test_predict_folder_command(exported_model: Path, tmp_path: Path) -> None:
    """The command docs/deploy.md shows."""
    import subprocess
    import sys

    folder = _messy_folder(tmp_path / "images")
    command = [
        str(Path(sys.executable).parent / "anomalib-ext"),
        "predict-folder",
        str(exported_model),
        str(folder),
        "--output",
        str(tmp_path / "out"),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "skipped d_notes.txt" in result.stdout
    assert "3 images scored" in result.stdout
