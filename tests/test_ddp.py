"""All four models train and test under Lightning's ``ddp`` strategy: two CPU processes over gloo.

Each run goes through ``tests/ddp_worker.py`` (a script, because Lightning's DDP launcher starts
the extra rank by re-running the command line). The checks are the ones that go wrong silently
in distributed training: ranks ending with different weights or statistics, RSTPM's stage switch,
EfficientAD's statistics taken from one rank's shard, per-category metrics computed on shards.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("ddp_worker.py")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small EfficientAD teacher distilled in 2 steps: the DDP test needs a teacher file, not a good one."""
    from anomalib_ext.models.efficientad.teacher import distill_teacher

    path = tmp_path_factory.mktemp("ddp_teacher") / "teacher_small.pth"
    return distill_teacher(path, image_size=128, steps=2, batch_size=2, norm_images=2, log_every=0)


def run_ddp(model: str, data: Path, out: Path, *extra: str) -> tuple[dict, dict]:
    """Run the worker on 2 ranks and return the two ranks' records."""
    command = [sys.executable, str(WORKER), "--model", model, "--data", str(data), "--out", str(out), *extra]
    completed = subprocess.run(  # noqa: S603  # this interpreter and the worker script, an argument list
        command,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-5000:]
    rank0, rank1 = (json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1))
    assert rank0["world_size"] == rank1["world_size"] == 2
    assert rank0["digest"] == rank1["digest"], "ranks ended with different weights or buffers"
    assert rank0["metrics"] == rank1["metrics"]
    return rank0, rank1


def score_differences(rank0: dict, rank1: dict) -> str:
    """Why image metrics can differ: the images scored differently under DDP than in one process.

    The same weights score an image a few ulps differently in a batch of one than in a batch of
    two (oneDNN's CPU convolutions), and a rank's shard batches images differently than one
    process does; an image whose score sits on the image threshold then flips its label. Lists
    the threshold, and each image scored differently in the two runs or exactly on the threshold.
    """
    ddp = {**rank0["scores"]["image_scores"], **rank1["scores"]["image_scores"]}
    single = rank0["single_process_scores"]
    threshold = rank0["scores"]["image_threshold"]
    lines = [f"image threshold {threshold!r} (DDP) / {single['image_threshold']!r} (one process)"]
    for path, score in sorted(single["image_scores"].items()):
        if ddp.get(path) != score or threshold in {score, ddp.get(path)}:
            lines.append(f"{'/'.join(Path(path).parts[-4:])}: DDP {ddp.get(path)!r}, one process {score!r}")
    return "\n".join(lines)


def assert_same_as_single_process(rank0: dict, rank1: dict) -> None:
    """The test metrics of 2 ranks equal one process's on the same weights (10 test images, no padding)."""
    single = rank0["single_process_metrics"]
    for key, value in rank0["metrics"].items():
        if key in single:
            assert value == pytest.approx(single[key], abs=1e-4), f"{key}\n{score_differences(rank0, rank1)}"


def test_rd4ad_under_ddp(texture_root: Path, tmp_path: Path) -> None:
    """RD4AD on 2 ranks: equal weights, one process's metrics, residual Gaussians of the whole training set.

    The worker builds RD4AD with ``distance="residual_gaussian"``, whose statistics each rank would
    otherwise take from its own shard; refitted in one process on every training image they agree to
    float32 rounding of a different summation order (relative 1e-4).
    """
    rank0, rank1 = run_ddp("rd4ad", texture_root, tmp_path)
    gaps = rank0["rd4ad"]
    assert gaps["train_images"] >= 2
    for name, gap in gaps.items():
        if name != "train_images":
            assert gap < 1e-4, (name, gaps)
    assert_same_as_single_process(rank0, rank1)


def test_rstpm_switches_stage_on_every_rank(texture_root: Path, tmp_path: Path) -> None:
    """Plain ``ddp`` works although each stage leaves part of the model without gradients."""
    rank0, rank1 = run_ddp("rstpm", texture_root, tmp_path)
    assert rank0["stages"] == rank1["stages"] == [1, 2]
    assert_same_as_single_process(rank0, rank1)


def test_uniad_per_category_metrics_cover_all_ranks(texture_root: Path, tmp_path: Path) -> None:
    """Per-category metrics are computed on every rank's rows, not each rank's shard."""
    rank0, rank1 = run_ddp("uniad", texture_root, tmp_path, "--unified")
    assert set(rank0["per_category"]) == {"brick", "grass"}
    assert rank0["per_category"] == rank1["per_category"] == rank0["single_process_per_category"]


def test_efficientad_statistics_use_all_training_images(texture_root: Path, tmp_path: Path, teacher: Path) -> None:
    """Teacher channel statistics and map quantiles equal those recomputed on the whole train / held-out set."""
    rank0, rank1 = run_ddp("efficientad", texture_root, tmp_path, "--teacher", str(teacher))
    gaps = rank0["efficientad"]
    assert gaps["holdout_images"] >= 1
    assert gaps["train_images"] >= 2
    for name in ("teacher_mean", "teacher_std", "q_st", "q_ae"):
        assert gaps[name] < 1e-5, (name, gaps)
    assert_same_as_single_process(rank0, rank1)
