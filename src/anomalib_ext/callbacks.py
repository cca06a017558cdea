"""Lightning callbacks for long unattended runs (benchmarks, the demo, CI logs)."""

from __future__ import annotations

import sys
import time

from lightning.pytorch import Callback, LightningModule, Trainer


class EpochProgress(Callback):
    """Print one plain line per finished epoch (elapsed time, train loss), readable in logs without a TTY."""

    def __init__(self) -> None:
        self.start = 0.0

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        loss = trainer.callback_metrics.get("train_loss_epoch", trainer.callback_metrics.get("train_loss"))
        loss_text = f", train_loss {float(loss):.4f}" if loss is not None else ""
        elapsed = time.perf_counter() - self.start
        print(f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}: {elapsed / 60:.1f} min{loss_text}", flush=True)
        sys.stdout.flush()
