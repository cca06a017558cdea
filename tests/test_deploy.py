"""Deployment: an exported OpenVINO model scores a messy folder without crashing or losing results."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from PIL import Image

from anomalib_ext import RD4AD
from anomalib_ext.deploy import ExportedModel, InputSizeError, export_openvino, predict_folder
from anomalib_ext.plugins import DeviceSafeCheckpointIO

if TYPE_CHECKING:
    from anomalib_ext.data import MVTecStyle

LITE0 = {"backbone": "efficientnet_lite0", "layers": ("blocks.1", "blocks.2", "blocks.4")}


@pytest.fixture(autouse=True)
def _run_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Anomalib's OpenVINOInferencer writes ./openvino_cache into the working directory."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def exported_model(exported_rd4ad: tuple[RD4AD, Path]) -> Path:
    """An (untrained) RD4AD exported at 64 px (the session's, conftest): enough for the deployment path."""
    return exported_rd4ad[1]


def test_one_colouring_for_every_heat_map() -> None:
    """predict-folder, the demo and the benchmark grid share it: jet over the array's own range, a 0.45 overlay.

    A stack of maps is scaled together (one model's maps in the grid), and a flat map is not NaN.
    """
    from anomalib_ext.deploy.heatmap import colour_map, min_max, overlay

    low, high = np.zeros((4, 4)), np.full((4, 4), 2.0)
    stack = colour_map(np.stack([low, high]))
    assert stack.shape == (2, 4, 4, 3)
    assert stack.dtype == np.uint8
    assert stack[0, 0, 0, 2] > stack[0, 0, 0, 0]  # blue low
    assert stack[1, 0, 0, 0] > stack[1, 0, 0, 2]  # red high
    np.testing.assert_array_equal(colour_map(high), stack[0])  # alone, a flat map is its own minimum
    image = np.full((4, 4, 3), 100, np.uint8)
    expected = ((1 - 0.45) * image + 0.45 * colour_map(high)).astype(np.uint8)
    np.testing.assert_array_equal(overlay(image, high), expected)
    assert np.isfinite(min_max(np.ones(3))).all()


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
    """Grayscale and RGBA images are converted, non-images skipped, and a second run appends to the CSV."""
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
    """A folder with no images gives no rows rather than an error."""
    (tmp_path / "empty").mkdir()
    assert predict_folder(exported_model, tmp_path / "empty", tmp_path / "out") == []


def test_missing_folder_is_named(exported_model: Path, tmp_path: Path) -> None:
    """A folder that does not exist is named in the error."""
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
    result = subprocess.run(  # noqa: S603  # the package's console script, an argument list
        command,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "skipped d_notes.txt" in result.stdout
    assert "3 images scored" in result.stdout


def test_exported_size_is_enforced_with_a_clear_error(exported_model: Path) -> None:
    """An export at 64 px names its size and the fix for a 96 px image, instead of OpenVINO's shape trace."""
    model = ExportedModel(exported_model)
    assert model.input_size == (64, 64)
    assert model(np.zeros((1, 3, 64, 64), np.float32))["anomaly_map"].shape[-2:] == (64, 64)
    with pytest.raises(InputSizeError, match=r"exported for 64x64 images; got 96x96.*Resize to 64x64"):
        model(np.zeros((1, 3, 96, 96), np.float32))
    with pytest.raises(InputSizeError, match=r"\(batch, 3, height, width\)"):
        model(np.zeros((64, 64, 3), np.float32))
    with pytest.raises(FileNotFoundError, match=r"missing\.xml"):
        ExportedModel(exported_model.parent / "missing.xml")


@pytest.fixture(scope="module")
def trained_rd4ad(texture_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[RD4AD, MVTecStyle, Path]:
    """RD4AD fitted for one epoch on the tiny brick set, with its checkpoint."""
    from anomalib_ext.data import MVTecStyle
    from tests.helpers import make_engine

    root = tmp_path_factory.mktemp("rd4ad_fit")
    datamodule = MVTecStyle(texture_root / "brick", image_size=64, train_batch_size=4, eval_batch_size=4, num_workers=0)
    model = RD4AD(**LITE0, pre_processor=RD4AD.configure_pre_processor(image_size=(64, 64)), visualizer=False)
    engine = make_engine(root)
    engine.fit(model=model, datamodule=datamodule)
    return model, datamodule, Path(engine.trainer.checkpoint_callback.best_model_path)


@pytest.mark.slow
def test_int8_export_is_quantized_and_close_to_fp32(
    trained_rd4ad: tuple[RD4AD, MVTecStyle, Path],
    tmp_path: Path,
) -> None:
    """NNCF INT8 (calibrated on training images) really quantises, and keeps the maps close to fp32."""
    model, datamodule, _ = trained_rd4ad
    fp32 = ExportedModel(export_openvino(model, tmp_path, 64))
    with pytest.raises(ValueError, match="calibration"):
        export_openvino(model, tmp_path, 64, precision="int8")
    int8_path = export_openvino(model, tmp_path, 64, precision="int8", calibration=datamodule.train_dataloader())
    assert int8_path.name == "model_int8.xml"
    assert "FakeQuantize" in int8_path.read_text(), "no quantisation nodes: NNCF did not quantise"
    int8 = ExportedModel(int8_path)
    batch = next(iter(datamodule.test_dataloader()))
    images = batch.image.numpy()
    maps32, maps8 = fp32(images)["anomaly_map"].ravel(), int8(images)["anomaly_map"].ravel()
    assert np.corrcoef(maps32, maps8)[0, 1] > 0.9
    weights_only = ExportedModel(export_openvino(model, tmp_path, 64, precision="int8-weights"))
    assert np.corrcoef(maps32, weights_only(images)["anomaly_map"].ravel())[0, 1] > 0.98
    # anomalib's inferencer and the folder predictor take the INT8 model as they take the fp32 one
    rows = predict_folder(int8_path, texture_root_images(datamodule), tmp_path / "out", overlays=False)
    assert rows
    assert all(np.isfinite(row["score"]) for row in rows)


def texture_root_images(datamodule: MVTecStyle) -> Path:
    """The folder of the brick set's test images of one defect type."""
    return Path(datamodule.root) / "test" / "scratch"


@pytest.mark.slow
def test_checkpoint_saved_on_gpu_loads_on_cpu(trained_rd4ad: tuple[RD4AD, MVTecStyle, Path], tmp_path: Path) -> None:
    """A checkpoint whose tensors are tagged ``cuda:0`` (as saved on a GPU) tests on a CPU-only machine."""
    import torch

    from tests.helpers import make_engine

    model, datamodule, checkpoint = trained_rd4ad
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    gpu_checkpoint = tmp_path / "trained_on_gpu.ckpt"
    save_as_if_on_gpu(state, gpu_checkpoint)
    if not torch.cuda.is_available():  # the file really is a GPU checkpoint: plain torch.load refuses it here
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(gpu_checkpoint, weights_only=False)
    restored = RD4AD.load_from_checkpoint(gpu_checkpoint, map_location=None)
    assert next(restored.parameters()).device.type == "cpu"
    torch.testing.assert_close(restored.state_dict(), model.cpu().state_dict())
    # anomalib 2.7's own checkpoint IO loads with map_location=None and fails here; ours maps to the CPU
    # and tests exactly as the model that wrote it (weights, thresholds and normalisation restored)
    engine = make_engine(tmp_path, plugins=[DeviceSafeCheckpointIO()])
    fresh = RD4AD(**LITE0, pre_processor=RD4AD.configure_pre_processor(image_size=(64, 64)), visualizer=False)
    metrics = engine.test(model=fresh, datamodule=datamodule, ckpt_path=gpu_checkpoint, verbose=False)
    expected = make_engine(tmp_path / "direct").test(model=model, datamodule=datamodule, verbose=False)
    print("MEASURE deploy", metrics, expected)
    assert metrics == expected


def save_as_if_on_gpu(state: dict, path: Path) -> None:
    """``torch.save`` with every storage's location tagged ``cuda:0`` (what a GPU run writes)."""
    import torch

    registry = torch.serialization._package_registry  # noqa: SLF001  # torch's only hook for storage locations
    entry = (-1, lambda _storage: "cuda:0", lambda _storage, _location: None)
    registry.insert(0, entry)
    try:
        torch.save(state, path)
    finally:
        registry.remove(entry)
