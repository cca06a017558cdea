"""The step profiler puts each part of a training step in its own column (a tiny module with known costs)."""

from __future__ import annotations

import time

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from torch import nn
from torch.utils.data import DataLoader, Dataset

from anomalib_ext.benchmark.profile import StepProfiler, frozen_networks

DATA_SLEEP, TEACHER_SLEEP = 0.02, 0.03


class SlowData(Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> torch.Tensor:
        time.sleep(DATA_SLEEP)  # one item per batch: every step waits this long for its data
        return torch.full((8,), float(index))


class SlowTeacher(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(8, 8).requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(TEACHER_SLEEP)
        return self.layer(x)


class Distillation(LightningModule):
    def __init__(self, manual: bool = False) -> None:
        super().__init__()
        self.model = nn.ModuleDict({"teacher": SlowTeacher(), "student": nn.Linear(8, 8)})
        self.automatic_optimization = not manual

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor | None:
        loss = (self.model["teacher"](batch) - self.model["student"](batch)).pow(2).mean()
        if self.automatic_optimization:
            return loss
        optimizer = self.optimizers()
        optimizer.zero_grad()
        self.manual_backward(loss)
        optimizer.step()
        return None

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.model["student"].parameters(), lr=0.1)


def test_frozen_networks_are_the_untrainable_children() -> None:
    assert list(frozen_networks(Distillation().model)) == ["teacher"]


@pytest.mark.parametrize("manual", [False, True])
def test_profile_splits_a_step_into_its_parts(manual: bool, tmp_path) -> None:
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
        assert row["backward ms"] > 0 and row["optimiser ms"] > 0
        assert row["compute s"] <= row["train epoch s"]
        assert row["epoch / compute"] >= 1.0
