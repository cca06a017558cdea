"""The plugin through anomalib's own CLI and ours, the benchmark runner, and model naming."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import anomalib_ext

BIN = Path(sys.executable).parent
LITE0_ARGS = ["--model.backbone", "efficientnet_lite0", "--model.layers", "[blocks.1, blocks.2, blocks.4]"]


def _run(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _data_args(texture_root: Path) -> list[str]:
    return [
        "--data",
        "anomalib_ext.data.MVTecStyle",
        "--data.root",
        str(texture_root / "brick"),
        "--data.image_size",
        "64",
        "--data.train_batch_size",
        "4",
        "--data.eval_batch_size",
        "4",
        "--trainer.max_epochs",
        "1",
        "--trainer.accelerator",
        "cpu",
        "--trainer.enable_progress_bar",
        "false",
    ]


def test_no_model_name_collides_with_an_anomalib_builtin() -> None:
    """anomalib's get_model matches names case-insensitively and the last match wins."""
    import anomalib.models

    builtin = {name.lower() for name in anomalib.models.__all__}
    ours = set(anomalib_ext.__all__)
    assert ours, "nothing exported"
    assert not {name for name in ours if name.lower() in builtin}


@pytest.mark.slow
def test_anomalib_cli_trains_by_dotted_path(texture_root: Path, tmp_path: Path) -> None:
    _run(
        [
            str(BIN / "anomalib"),
            "fit",
            "--model",
            "anomalib_ext.RD4AD",
            *LITE0_ARGS,
            *_data_args(texture_root),
            "--default_root_dir",
            str(tmp_path),
        ],
        tmp_path,
    )
    assert list(tmp_path.rglob("*.ckpt"))


@pytest.mark.slow
def test_our_cli_resolves_short_names_and_tests(texture_root: Path, tmp_path: Path) -> None:
    result = _run(
        [
            str(BIN / "anomalib-ext"),
            "train",
            "--model",
            "RD4AD",
            *LITE0_ARGS,
            *_data_args(texture_root),
            "--default_root_dir",
            str(tmp_path),
        ],
        tmp_path,
    )
    assert "image_AUROC" in result.stdout + result.stderr


def test_cli_help_lists_our_tools(tmp_path: Path) -> None:
    result = _run([str(BIN / "anomalib-ext"), "benchmark", "--help"], tmp_path)
    assert "--model" in result.stdout
    from anomalib_ext.cli import TOOLS

    assert {"demo", "benchmark", "distill-teacher"} <= set(TOOLS)


@pytest.mark.slow
def test_benchmark_appends_measured_rows_and_plots(texture_root: Path, tmp_path: Path) -> None:
    """One command: ours and an anomalib built-in on the same data, a row each, and both figures."""
    from anomalib_ext.benchmark import main

    table = tmp_path / "bench.md"
    table.write_text("# Benchmarks\n\n## Other\n\n| a |\n|---|\n| 1 |\n")
    args = [
        "--models",
        "RD4AD",
        "Padim",
        "--model-args",
        '{"Padim": {"n_features": 50}}',
        "--plots",
        str(tmp_path / "plots"),
        "--data",
        str(texture_root / "grass"),
        "--backbone",
        "efficientnet_lite0",
        "--layers",
        "blocks.1",
        "blocks.2",
        "blocks.4",
        "--image-size",
        "64",
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--num-workers",
        "0",
        "--work-dir",
        str(tmp_path / "work"),
        "--output",
        str(table),
        "--section",
        "RD4AD",
    ]
    assert main(args) == 0
    text = table.read_text()
    assert "## Other\n\n| a |\n|---|\n| 1 |\n" in text  # other sections untouched
    row = next(line for line in text.splitlines() if line.startswith("| RD4AD |"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[1:5] == ["grass", "efficientnet_lite0", "64", "1"]
    assert all(0.0 <= float(value) <= 100.0 for value in cells[5:8])
    assert cells[9].endswith("ms (CPU)") and cells[10].endswith("ms")
    assert any(line.startswith("| Padim | grass |") for line in text.splitlines())
    assert (tmp_path / "work" / "RD4AD" / "benchmark.json").is_file()
    assert (tmp_path / "work" / "Padim" / "benchmark.json").is_file()
    from PIL import Image

    for name in ("heatmaps.png", "accuracy_vs_latency.png"):
        with Image.open(tmp_path / "plots" / name) as image:
            assert image.width > 300 and image.height > 200


@pytest.mark.slow
def test_demo_runs_offline_end_to_end(tmp_path: Path) -> None:
    """The README's main job, shortened: build data, train, test, export, compare, write heatmaps."""
    result = _run(
        [str(BIN / "anomalib-ext"), "demo", "--epochs", "1", "--image-size", "64", "--output", str(tmp_path / "out")],
        tmp_path,
    )
    assert "image_AUROC" in result.stdout
    summary = (tmp_path / "out" / "summary.json").read_text()
    assert '"max_map_difference"' in summary
    import json

    data = json.loads(summary)
    assert data["max_map_difference"] < 1e-3
    assert len(list((tmp_path / "out" / "heatmaps").glob("*.png"))) >= 4
