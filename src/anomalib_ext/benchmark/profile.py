"""Where a training step's time goes: data, frozen networks, trained networks, backward, optimiser.

``anomalib-ext profile --model RD4AD --data DIR [benchmark options]`` trains the model through
anomalib's ``Engine`` exactly as ``anomalib-ext benchmark`` does and reports, per epoch, the mean
milliseconds per step in

- **data**: waiting for the next batch (decoding, resizing, collation, host-to-device copy);
- **frozen fwd**: forward passes of the networks that are not trained (teachers: the model's
  top-level sub-networks whose parameters all have ``requires_grad=False`` at the call, so
  RSTPM's students count here in stage 2), timed with hooks;
- **trained fwd**: the rest of the forward pass and the loss;
- **backward** and **optimiser** (``optimizer.step``, every optimiser the step uses);
- **other**: what is left of the step (Lightning's hooks, logging);

and per epoch the wall time of training and of validation. **compute** is frozen fwd + trained
fwd + backward + optimiser: the model's own work. ``epoch / compute`` is how much longer an
epoch takes than that work; data loading and framework overhead are the difference.

Each step's timestamps come from Lightning's callback hooks (``on_train_batch_start``,
``on_before_backward``, ``on_after_backward``, ``on_before_optimizer_step``,
``on_train_batch_end``); on a GPU the device is synchronised at each, which slows it a little.
Under manual optimisation (RSTPM) the time between an optimiser step and the next backward is
counted as optimiser time, so a forward pass computed after a step is counted there too.
Times are wall-clock: run it on a quiet machine (the rows record the load average).
"""

from __future__ import annotations

import argparse
import os
import time
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import nn

from anomalib_ext.components.cpu_bf16 import warn_if_bf16_is_slow

if TYPE_CHECKING:
    from anomalib.data import Batch
    from lightning.pytorch.utilities.types import STEP_OUTPUT

PROFILE_COLUMNS = [
    "model",
    "dataset",
    "size",
    "batch",
    "train precision",
    "epoch",
    "steps",
    "data ms",
    "frozen fwd ms",
    "trained fwd ms",
    "backward ms",
    "optimiser ms",
    "other ms",
    "compute s",
    "train epoch s",
    "epoch / compute",
    "validation s",
    "hardware",
    "load",
    "date",
]


def parameterised_networks(model: nn.Module) -> dict[str, nn.Module]:
    """Top-level sub-networks of ``model`` that have parameters (the candidates for "frozen fwd")."""
    return {name: child for name, child in model.named_children() if next(child.parameters(), None) is not None}


class StepProfiler(Callback):
    """Split every training step's wall time into data / frozen fwd / trained fwd / backward / optimiser.

    Args:
        frozen: the networks whose forward passes count as "frozen fwd" when none of their
            parameters is trainable at the call (default: every top-level sub-network of
            ``pl_module.model`` with parameters, :func:`parameterised_networks`).
    """

    def __init__(self, frozen: dict[str, nn.Module] | None = None) -> None:
        self.frozen = frozen
        self.epochs: list[dict[str, float]] = []
        self._handles: list[Any] = []
        self._sync = False
        self._reset_epoch()

    # ------------------------------------------------------------------ clock
    def _now(self) -> float:
        if self._sync:
            torch.cuda.synchronize()
        return time.perf_counter()

    def _reset_epoch(self) -> None:
        self._sums: dict[str, float] = defaultdict(float)
        self._steps = 0
        self._epoch_start = self._last_end = self._step_start = self._mark = 0.0
        self._frozen_start = self._frozen_before = 0.0
        self._in_optimizer = False
        self._validation = self._validation_start = 0.0

    # ------------------------------------------------------------------ frozen-network hooks
    def _frozen_pre(self, module: nn.Module, *_: object) -> None:
        """Forward pre-hook: start the clock if ``module`` is frozen now (its inputs are not needed).

        Checked per call, so a network a later training stage freezes (RSTPM's students in stage 2)
        counts as frozen from then on.
        """
        if not any(parameter.requires_grad for parameter in module.parameters()):
            self._frozen_start = self._now()

    def _frozen_post(self, *_: object) -> None:
        """Forward hook of a frozen network: add its forward time (module, inputs, output not needed)."""
        if self._step_start and self._frozen_start:
            self._sums["frozen"] += self._now() - self._frozen_start
        self._frozen_start = 0.0

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Hook the frozen networks' forward passes; synchronise the clock on a GPU."""
        del trainer  # Lightning's hook signature; not needed here
        self._sync = pl_module.device.type == "cuda"
        model = getattr(pl_module, "model", pl_module)
        networks = self.frozen if self.frozen is not None else parameterised_networks(model)
        for network in networks.values():
            self._handles.append(network.register_forward_pre_hook(self._frozen_pre))
            self._handles.append(network.register_forward_hook(self._frozen_post))

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Remove the forward hooks, leaving the model as it was."""
        del trainer, pl_module  # Lightning's hook signature; not needed here
        for handle in self._handles:
            handle.remove()
        self._handles = []

    # ------------------------------------------------------------------ step phases
    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Zero the epoch's sums and start its clock."""
        del trainer, pl_module  # Lightning's hook signature; not needed here
        self._reset_epoch()
        self._epoch_start = self._last_end = self._now()

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Batch, batch_idx: int) -> None:
        """The step starts: the time since the last step ended was spent waiting for this batch."""
        del trainer, pl_module, batch, batch_idx  # Lightning's hook signature; only the time matters
        now = self._now()
        self._sums["data"] += now - self._last_end
        self._step_start = self._mark = now
        self._frozen_before = self._sums["frozen"]
        self._in_optimizer = False

    def on_before_backward(self, trainer: Trainer, pl_module: LightningModule, loss: torch.Tensor) -> None:
        """The forward pass (or, under manual optimisation, an optimiser step) ends: count it."""
        del trainer, pl_module, loss  # Lightning's hook signature; only the time matters
        now = self._now()
        if self._in_optimizer:  # manual optimisation: an optimiser stepped since the last backward
            self._sums["optimiser"] += now - self._mark
            self._in_optimizer = False
        else:
            frozen = self._sums["frozen"] - self._frozen_before
            self._sums["trained_fwd"] += now - self._mark - frozen
        self._frozen_before = self._sums["frozen"]
        self._mark = now

    def on_after_backward(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """The backward pass ends: count it."""
        del trainer, pl_module  # Lightning's hook signature; only the time matters
        now = self._now()
        self._sums["backward"] += now - self._mark
        self._mark = now

    def on_before_optimizer_step(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        optimizer: torch.optim.Optimizer,
    ) -> None:
        """Called right before ``optimizer.step`` updates the weights (after the closure's backward)."""
        del trainer, pl_module, optimizer  # Lightning's hook signature; only the time matters
        self._mark = self._now()
        self._in_optimizer = True

    def on_train_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: STEP_OUTPUT,
        batch: Batch,
        batch_idx: int,
    ) -> None:
        """The step ends: count the optimiser step (or a step with no backward) and the whole step."""
        del trainer, pl_module, outputs, batch, batch_idx  # Lightning's hook signature; only the time matters
        now = self._now()
        if self._in_optimizer:
            self._sums["optimiser"] += now - self._mark
            self._in_optimizer = False
        elif self._mark == self._step_start:  # no backward (a step that only computed statistics)
            self._sums["trained_fwd"] += now - self._mark - (self._sums["frozen"] - self._frozen_before)
        self._sums["step"] += now - self._step_start
        self._steps += 1
        self._last_end = now
        self._step_start = 0.0

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Start the validation clock."""
        del trainer, pl_module  # Lightning's hook signature; only the time matters
        self._validation_start = self._now()

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Add the validation time to the epoch's, so that it can be taken out of the training time.

        ``on_validation_end``, not ``on_validation_epoch_end``: the end-of-epoch hooks of the
        callbacks after this one (anomalib's evaluator computes its metrics there) and of the
        module run after this callback's, and are validation work.
        """
        del trainer, pl_module  # Lightning's hook signature; only the time matters
        if self._epoch_start:  # in-fit validation: it runs inside the training epoch, before its end hook
            self._validation += self._now() - self._validation_start

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Record the epoch's row: mean milliseconds per step of each part, training and validation seconds."""
        del pl_module  # Lightning's hook signature; not needed here
        wall = self._now() - self._epoch_start - self._validation
        steps = max(1, self._steps)
        sums = self._sums
        compute = sums["frozen"] + sums["trained_fwd"] + sums["backward"] + sums["optimiser"]
        other = sums["step"] - compute
        self.epochs.append(
            {
                "epoch": trainer.current_epoch + 1,
                "steps": self._steps,
                "data ms": 1000 * sums["data"] / steps,
                "frozen fwd ms": 1000 * sums["frozen"] / steps,
                "trained fwd ms": 1000 * sums["trained_fwd"] / steps,
                "backward ms": 1000 * sums["backward"] / steps,
                "optimiser ms": 1000 * sums["optimiser"] / steps,
                "other ms": 1000 * other / steps,
                "compute s": compute,
                "train epoch s": wall,
                "epoch / compute": wall / compute if compute > 0 else float("nan"),
                "validation s": self._validation,
            },
        )


def run_profile(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Train ``args.model`` for ``args.epochs`` through the Engine and return one row per epoch."""
    import datetime as dt
    import tempfile

    from anomalib.engine import Engine
    from lightning.pytorch import seed_everything

    from .models import build_model, model_arguments, resolve_model_class
    from .runner import dataset_name, make_datamodule
    from .timing import hardware

    seed_everything(args.seed, workers=True)
    model_cls = resolve_model_class(args.model)
    model = build_model(model_cls, args.backbone, args.layers, args.image_size, model_arguments(args))
    datamodule = make_datamodule(args, model_cls)
    profiler = StepProfiler()
    warn_if_bf16_is_slow(args.train_precision, "cuda" if torch.cuda.is_available() else "cpu")
    engine = Engine(
        default_root_dir=Path(args.work_dir or tempfile.mkdtemp(prefix="anomalib_ext_profile_")),
        max_epochs=args.epochs,
        accelerator="gpu" if torch.cuda.is_available() else "cpu",
        devices=1,
        logger=False,
        callbacks=[profiler],
        enable_progress_bar=False,
        check_val_every_n_epoch=1,
        precision=args.train_precision,
    )
    load_before = os.getloadavg()[0]
    engine.fit(model=model, datamodule=datamodule)
    load = f"{load_before:.2f} -> {os.getloadavg()[0]:.2f}"
    common = {
        "model": args.label or model_cls.__name__,
        "dataset": dataset_name(args.data),
        "size": args.image_size,
        "batch": args.batch_size,
        "train precision": args.train_precision,
        "hardware": hardware(),
        "load": load,
        "date": dt.datetime.now().astimezone().date().isoformat(),  # the local date, as date.today()
    }
    return [{**common, **epoch} for epoch in profiler.epochs]


def profile_cells(row: dict[str, Any]) -> dict[str, Any]:
    """``row`` with its times as text (ms and s to 0.1, the ratio to 0.01).

    The report writer prints floats as percentages (its metric columns); times must not be scaled.
    """
    return {
        key: (f"{value:.2f}" if key == "epoch / compute" else f"{value:.1f}") if isinstance(value, float) else value
        for key, value in row.items()
    }


def main(argv: list[str] | None = None) -> int:
    """``anomalib-ext profile``: the benchmark's options (``--model``, ``--data``, ...), one row per epoch."""
    from .cli import parse_args
    from .report import append_row

    args = parse_args(argv)
    for name in args.models:
        for row in run_profile(argparse.Namespace(**{**vars(args), "model": name})):
            text = profile_cells(row)
            print(" | ".join(f"{key}: {value}" for key, value in text.items()))
            if args.output:
                append_row(args.output, args.section, text, PROFILE_COLUMNS)
    return 0
