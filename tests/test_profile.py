"""The step profiler puts each part of a training step in its own column (a tiny module with known costs)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from torch import nn
from torch.utils.data import DataLoader, Dataset

from anomalib_ext.benchmark.profile import StepProfiler, parameterised_networks

if TYPE_CHECKING:
    from pathlib import Path

DATA_SLEEP, TEACHER_SLEEP = 0.02, 0.03


def quiet_trainer(profiler: StepProfiler, root: Path, max_epochs: int) -> Trainer:
    """A CPU trainer with the profiler and nothing else: no logger, checkpoints, progress bar or sanity check."""
    return Trainer(
        max_epochs=max_epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[profiler],
        default_root_dir=root,
    )


class SlowData(Dataset):
    """Four 8-vectors, each taking ``DATA_SLEEP`` seconds to load."""

    def __len__(self) -> int:
        """Four items: four steps per epoch at batch size 1."""
        return 4

    def __getitem__(self, index: int) -> torch.Tensor:
        """A vector filled with ``index``, after the data delay."""
        time.sleep(DATA_SLEEP)  # one item per batch: every step waits this long for its data
        return torch.full((8,), float(index))


class SlowTeacher(nn.Module):
    """A frozen linear layer whose forward pass takes ``TEACHER_SLEEP`` seconds longer."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(8, 8).requires_grad_(requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The layer's output, after the teacher delay."""
        time.sleep(TEACHER_SLEEP)
        return self.layer(x)


class Distillation(LightningModule):
    """A trained student matching the slow frozen teacher, with automatic or manual optimisation."""

    def __init__(self, manual: bool = False) -> None:
        super().__init__()
        self.model = nn.ModuleDict({"teacher": SlowTeacher(), "student": nn.Linear(8, 8)})
        self.automatic_optimization = not manual

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor | None:
        """The squared student-teacher gap; under manual optimisation, also its backward and SGD step."""
        del batch_idx  # Lightning's signature
        loss = (self.model["teacher"](batch) - self.model["student"](batch)).pow(2).mean()
        if self.automatic_optimization:
            return loss
        optimizer = self.optimizers()
        optimizer.zero_grad()
        self.manual_backward(loss)
        optimizer.step()
        return None

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """SGD on the student only."""
        return torch.optim.SGD(self.model["student"].parameters(), lr=0.1)


class StagedDistillation(Distillation):
    """Epoch 1 trains the student; epoch 2 freezes it (as RSTPM's stage 2 does) and trains a head on it."""

    def __init__(self) -> None:
        super().__init__()
        self.model["head"] = nn.Linear(8, 8)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor | None:
        """Epoch 1: the distillation loss. Epoch 2: the frozen student's output through the trained head."""
        if self.current_epoch == 0:
            return super().training_step(batch, batch_idx)
        self.model["student"].requires_grad_(requires_grad=False)
        return self.model["head"](self.model["student"](batch)).pow(2).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """SGD on the student and the head."""
        return torch.optim.SGD([*self.model["student"].parameters(), *self.model["head"].parameters()], lr=0.1)


def test_parameterised_networks_are_the_children_with_weights() -> None:
    """Every top-level child with parameters is a candidate; whether it is frozen is decided per call."""
    model = Distillation().model
    model["activation"] = nn.ReLU()
    assert list(parameterised_networks(model)) == ["teacher", "student"]


def test_a_network_frozen_by_a_later_stage_counts_as_frozen(tmp_path: Path) -> None:
    """The student's forward is "trained fwd" while it trains, "frozen fwd" once a stage freezes it."""
    slow_student = SlowTeacher().requires_grad_(requires_grad=True)
    module = StagedDistillation()
    module.model["student"] = slow_student
    profiler = StepProfiler()
    trainer = quiet_trainer(profiler, tmp_path, max_epochs=2)
    trainer.fit(module, DataLoader(SlowData(), batch_size=1))
    stage1, stage2 = profiler.epochs
    assert 1000 * TEACHER_SLEEP <= stage1["frozen fwd ms"] < 1000 * 2 * TEACHER_SLEEP  # the teacher only
    assert stage1["trained fwd ms"] >= 1000 * TEACHER_SLEEP  # the slow student, while it trains
    assert stage2["frozen fwd ms"] >= 1000 * TEACHER_SLEEP  # the frozen student
    assert stage2["trained fwd ms"] < 1000 * TEACHER_SLEEP


@pytest.mark.parametrize("manual", [False, True])
def test_profile_splits_a_step_into_its_parts(manual: bool, tmp_path: Path) -> None:
    """Data wait, frozen forward and the rest each land in their own column, in both optimisation modes."""
    profiler = StepProfiler()
    trainer = quiet_trainer(profiler, tmp_path, max_epochs=2)
    trainer.fit(Distillation(manual), DataLoader(SlowData(), batch_size=1))
    assert [row["epoch"] for row in profiler.epochs] == [1, 2]
    for row in profiler.epochs:
        assert row["steps"] == 4
        # each sleep lands in its own column and in no other (bounds leave room for a busy CPU)
        assert 1000 * DATA_SLEEP <= row["data ms"] < 1000 * (DATA_SLEEP + TEACHER_SLEEP)
        assert 1000 * TEACHER_SLEEP <= row["frozen fwd ms"] < 1000 * (TEACHER_SLEEP + DATA_SLEEP)
        assert 0 < row["trained fwd ms"] < 1000 * DATA_SLEEP
        assert row["backward ms"] > 0
        assert row["optimiser ms"] > 0
        assert row["compute s"] <= row["train epoch s"]
        assert row["epoch / compute"] >= 1.0


class SlowMetrics(Distillation):
    """Distillation with a validation set whose end-of-epoch metrics take ``TEACHER_SLEEP`` seconds."""

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:  # noqa: PLR6301 (Lightning hook)
        """Nothing per batch: the cost is in the epoch-end metric."""
        del batch, batch_idx  # Lightning's signature

    def on_validation_epoch_end(self) -> None:  # noqa: PLR6301 (Lightning hook)
        """A slow metric computation, as anomalib's evaluator runs at the end of validation."""
        time.sleep(TEACHER_SLEEP)


def test_end_of_validation_metrics_count_as_validation(tmp_path: Path) -> None:
    """Metrics computed at the end of validation (after the profiler's own hook) are not training time."""
    profiler = StepProfiler()
    trainer = quiet_trainer(profiler, tmp_path, max_epochs=1)
    data = DataLoader(SlowData(), batch_size=1)
    trainer.fit(SlowMetrics(), data, data)
    (row,) = profiler.epochs
    assert row["validation s"] >= TEACHER_SLEEP
    step_seconds = row["steps"] * (row["data ms"] + row["frozen fwd ms"]) / 1000
    assert row["train epoch s"] < step_seconds + TEACHER_SLEEP


def test_profile_rows_keep_their_units_in_the_report(tmp_path: Path) -> None:
    """Milliseconds stay milliseconds in the Markdown table (the writer prints bare floats as percentages)."""
    from anomalib_ext.benchmark.profile import PROFILE_COLUMNS, profile_cells
    from anomalib_ext.benchmark.report import append_row

    row = {"model": "RD4AD", "data ms": 13.4, "epoch / compute": 1.104, "steps": 14}
    append_row(tmp_path / "table.md", "speed", profile_cells(row), PROFILE_COLUMNS)
    line = (tmp_path / "table.md").read_text().strip().splitlines()[-1].split(" | ")
    assert line[PROFILE_COLUMNS.index("data ms")] == "13.4"
    assert line[PROFILE_COLUMNS.index("epoch / compute")] == "1.10"
    assert line[PROFILE_COLUMNS.index("steps")] == "14"
