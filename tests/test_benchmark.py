"""The benchmark builds anomalib's built-ins offline with the same local weights as our models."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING
from unittest import mock

import pytest
import torch

from anomalib_ext.benchmark import build_model, resolve_model_class
from anomalib_ext.components.backbone import pretrained_state_dict

if TYPE_CHECKING:
    from pathlib import Path

LAYERS = ["blocks.1", "blocks.2", "blocks.4"]


@pytest.mark.parametrize(
    ("name", "attribute", "extra"),
    [("Stfpm", "teacher_model", {}), ("Padim", "feature_extractor", {"n_features": 50})],
)
def test_builtins_get_local_imagenet_weights_without_the_hub(name: str, attribute: str, extra: dict) -> None:
    """Anomalib's Stfpm and Padim, built as the benchmark builds them, get the local Lite0 weights, not the hub's."""
    model = build_model(resolve_model_class(name), "efficientnet_lite0", LAYERS, 64, extra)
    loaded = getattr(model.model, attribute).feature_extractor.state_dict()
    reference = pretrained_state_dict("efficientnet_lite0")
    assert torch.equal(loaded["conv_stem.weight"], reference["conv_stem.weight"])
    assert model.input_size == (64, 64)


def test_one_pass_models_are_validated_at_the_epoch_they_stop() -> None:
    """PaDiM stops after one epoch whatever the budget; RD4AD trains the budget it is given."""
    from anomalib_ext.benchmark.runner import epochs_that_run

    padim = build_model(resolve_model_class("Padim"), "efficientnet_lite0", LAYERS, 64, {"n_features": 50})
    rd4ad = build_model(resolve_model_class("RD4AD"), "efficientnet_lite0", LAYERS, 64, {})
    assert epochs_that_run(padim, 4) == 1
    assert epochs_that_run(rd4ad, 4) == 4
    assert epochs_that_run(rd4ad, 1) == 1


@pytest.mark.slow
def test_one_pass_model_row_has_thresholds_and_real_scores(texture_root: Path, tmp_path: Path) -> None:
    """A 4-epoch budget for PaDiM still validates (thresholds, normalisation): scores are not all clamped to one value.

    Before the fix, validation waited for epoch 4, which PaDiM never reaches, and its test AUROC read exactly 50.
    """
    import argparse

    from anomalib_ext.benchmark.cli import parse_args
    from anomalib_ext.benchmark.runner import run_benchmark

    args = parse_args(
        [
            "--model", "Padim", "--data", str(texture_root / "brick"), "--backbone", "efficientnet_lite0",
            "--layers", *LAYERS, "--image-size", "64", "--batch-size", "8", "--num-workers", "0",
            "--epochs", "4", "--model-args", '{"n_features": 50}', "--work-dir", str(tmp_path), "--seed", "1",
        ],
    )  # fmt: skip
    row = run_benchmark(argparse.Namespace(**{**vars(args), "model": "Padim"}))
    assert row["model"] == "Padim (seed 1)"  # a second seed's row says so; seed 0 rows keep the plain name
    assert row["epochs"] == 1
    assert row["image AUROC"] != pytest.approx(0.5)
    assert row["image AUROC"] > 0.6


@pytest.mark.slow
def test_several_folders_train_one_unified_model_scored_per_category(texture_root: Path, tmp_path: Path) -> None:
    """Two folders: one model on both, a row per category and a main row holding their mean (UniAD's protocol)."""
    from anomalib_ext.benchmark.cli import main

    table = tmp_path / "table.md"
    main(
        [
            "--model", "Padim", "--data", str(texture_root / "brick"), str(texture_root / "grass"),
            "--backbone", "efficientnet_lite0", "--layers", *LAYERS, "--image-size", "64", "--batch-size", "8",
            "--num-workers", "0", "--model-args", '{"n_features": 50}', "--work-dir", str(tmp_path / "run"),
            "--output", str(table), "--section", "unified",
        ],
    )  # fmt: skip
    saved = json.loads((tmp_path / "run" / "benchmark.json").read_text())
    assert saved["dataset"] == "unified: brick + grass"
    per_category = {row["dataset"]: row for row in saved["categories"]}
    assert sorted(per_category) == ["brick", "grass"]
    for metric in ("image AUROC", "pixel AUROC", "AUPRO"):
        mean = (per_category["brick"][metric] + per_category["grass"][metric]) / 2
        assert saved[metric] == pytest.approx(mean)
    lines = [line for line in table.read_text(encoding="utf-8").splitlines() if line.startswith("| Padim")]
    assert [line.split(" | ")[1] for line in lines] == ["unified: brick + grass", "brick", "grass"]


@pytest.mark.slow
def test_rescore_scores_the_trained_row_again_without_training(texture_root: Path, tmp_path: Path) -> None:
    """``--rescore`` loads the row's checkpoint: a variant scored later equals the same variant scored after training.

    Appends only the new variant row and records it in benchmark.json. CPU, float32.
    """
    from anomalib_ext.benchmark.cli import main

    table, work = tmp_path / "table.md", tmp_path / "run"
    common = [
        "--model", "RD4AD", "--data", str(texture_root / "brick"), "--backbone", "efficientnet_lite0",
        "--layers", *LAYERS, "--image-size", "64", "--batch-size", "8", "--num-workers", "0", "--epochs", "1",
        "--work-dir", str(work), "--output", str(table), "--section", "rescore", "--variants", '{"map_layers": [2]}',
    ]  # fmt: skip
    main(common)
    trained = json.loads((work / "benchmark.json").read_text())["variants"][0]
    rows_before = table.read_text(encoding="utf-8").count("| RD4AD")
    with mock.patch("anomalib.engine.Engine.fit", side_effect=AssertionError("rescore must not train")):
        main([*common, "--rescore"])
    rescored = json.loads((work / "benchmark.json").read_text())["variants"][-1]
    assert rescored["model"] == trained["model"] == "RD4AD [map_layers=[2]]"
    assert rescored["metrics"] == pytest.approx(trained["metrics"], abs=1e-6)
    assert table.read_text(encoding="utf-8").count("| RD4AD") == rows_before + 1
    # the same weights scored at another precision than they trained in say so in their row's name
    with mock.patch("anomalib.engine.Engine.fit", side_effect=AssertionError("rescore must not train")):
        main([*common[:-1], "{}", "--rescore", "--train-precision", "bf16-mixed"])
    assert json.loads((work / "benchmark.json").read_text())["variants"][-1]["model"] == "RD4AD [scored in bf16-mixed]"


def test_rescore_without_a_trained_row_names_what_is_missing(tmp_path: Path) -> None:
    """``--rescore`` on an empty work dir fails naming benchmark.json and the run to do first."""
    from anomalib_ext.benchmark.cli import main

    with pytest.raises(FileNotFoundError, match=r"benchmark\.json.*without --rescore"):
        main(
            [
                "--model", "RD4AD", "--data", str(tmp_path), "--work-dir", str(tmp_path / "none"), "--rescore",
                "--variants", '{"map_layers": [2]}',
            ],
        )  # fmt: skip


def test_a_second_seed_of_a_row_keeps_the_first_seeds_folder(tmp_path: Path) -> None:
    """Seed 0 writes where the spec says; seed 1 of the same row writes beside it, not over it."""
    from anomalib_ext.benchmark.runner import work_dir_for

    row = tmp_path / "00_RSTPM"
    assert work_dir_for(str(row), 0) == row
    assert work_dir_for(str(row), 1) == tmp_path / "00_RSTPM_seed1"
    assert work_dir_for(None, 1).is_dir()


def test_a_row_without_pixel_metrics_says_n_a(tmp_path: Path) -> None:
    """Image-level data (no masks) has no pixel metrics: the table says n/a, not Python's None."""
    from anomalib_ext.benchmark.report import append_row

    table = tmp_path / "table.md"
    columns = ("model", "image AUROC", "pixel AUROC", "AUPRO")
    append_row(table, "screw", {"model": "RD4AD", "image AUROC": 0.9123, "pixel AUROC": None, "AUPRO": None}, columns)
    assert "| RD4AD | 91.2 | n/a | n/a |" in table.read_text(encoding="utf-8")
    assert "None" not in table.read_text(encoding="utf-8")


def test_a_row_joins_its_own_table_not_a_later_one(tmp_path: Path) -> None:
    """A section can quote a table of other columns below its rows: a new row goes under its own header."""
    from anomalib_ext.benchmark.report import append_row

    table = tmp_path / "table.md"
    columns = ("model", "image AUROC")
    append_row(table, "distance", {"model": "RD4AD", "image AUROC": 0.881}, columns)
    with table.open("a", encoding="utf-8") as handle:
        handle.write("\nWhat the diagnosis printed:\n\n| distance | map 1 |\n|---|---|\n| cosine | 88.1 |\n")
    append_row(table, "distance", {"model": "UniAD", "image AUROC": 0.762}, columns)
    append_row(table, "later", {"model": "PaDiM", "image AUROC": 0.962}, columns)
    lines = table.read_text(encoding="utf-8").splitlines()
    assert lines.index("| UniAD | 76.2 |") == lines.index("| RD4AD | 88.1 |") + 1
    assert lines.index("| cosine | 88.1 |") > lines.index("| UniAD | 76.2 |")
    assert lines[-1] == "| PaDiM | 96.2 |"


def test_unknown_model_name_is_reported() -> None:
    """A name found neither in anomalib_ext nor in anomalib.models fails with that name."""
    with pytest.raises(ValueError, match="Unknown model 'Nope'"):
        resolve_model_class("Nope")


def test_heatmap_grid_and_accuracy_plot_validate_and_draw(tmp_path: Path) -> None:
    """Both figures are drawn (constant maps and a failed export included); mismatched map counts are refused."""
    import numpy as np
    from PIL import Image

    from anomalib_ext.plots import accuracy_vs_latency, heatmap_grid

    images = np.random.default_rng(0).random((3, 3, 32, 32))
    masks = np.zeros((3, 32, 32))
    maps = {"A": np.random.default_rng(1).random((3, 32, 32)), "B": np.ones((3, 32, 32))}  # constant maps draw too
    grid = heatmap_grid(images, masks, maps, tmp_path / "grid.png")
    with Image.open(grid) as picture:
        assert picture.width > picture.height  # 3 rows, 4 columns
    with pytest.raises(ValueError, match="B: 2 maps for 3 images"):
        heatmap_grid(images, None, {"B": np.ones((2, 32, 32))}, tmp_path / "bad.png")
    records = [
        {"model": "A", "image AUROC": 0.9, "torch_ms": 3.0, "openvino_ms": 2.0},
        {"model": "B", "image AUROC": 0.7, "torch_ms": 10.0, "openvino_ms": None},
    ]
    assert accuracy_vs_latency(records, tmp_path / "acc.png").is_file()
