"""The step profiler puts each part of a training step in its own column (a tiny module with known costs)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from torch import nn
from torch.utils.data import DataLoader, Dataset

from anomalib_ext.benchmark.profile import StepProfiler, frozen_networks

if TYPE_CHECKING:
    from pathlib import Path

DATA_SLEEP, TEACHER_SLEEP = 0.02, 0.03


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


def test_frozen_networks_are_the_untrainable_children() -> None:
    """Only the child whose parameters are all frozen counts as a frozen network."""
    assert list(frozen_networks(Distillation().model)) == ["teacher"]


@pytest.mark.parametrize("manual", [False, True])
def test_profile_splits_a_step_into_its_parts(manual: bool, tmp_path: Path) -> None:
    """Data wait, frozen forward and the rest each land in their own column, in both optimisation modes."""
    profiler = StepProfiler()
    trainer = Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[profiler],
        default_root_dir=tmp_path,
    )
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
