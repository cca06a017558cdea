"""Progress for long unattended runs (benchmarks, the demo, CI logs): epoch lines and a test-AUROC curve."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from anomalib.data import Batch
    from anomalib.models import AnomalibModule


def epoch_train_loss(trainer: Trainer) -> float | None:
    """The finished epoch's mean train loss as the model logged it (``train_loss`` with ``on_epoch``), if any."""
    loss = trainer.callback_metrics.get("train_loss_epoch", trainer.callback_metrics.get("train_loss"))
    return float(loss) if loss is not None else None


class EpochProgress(Callback):
    """Print one plain line per finished epoch (elapsed time, train loss), readable in logs without a TTY."""

    def __init__(self) -> None:
        self.start = 0.0

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Start the clock for the elapsed time printed after each epoch."""
        del trainer, pl_module  # Lightning's hook signature; not needed here
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Print the epoch, the minutes since training started and the epoch's train loss."""
        del pl_module  # Lightning's hook signature; not needed here
        loss = epoch_train_loss(trainer)
        loss_text = f", train_loss {loss:.4f}" if loss is not None else ""
        elapsed = time.perf_counter() - self.start
        print(f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}: {elapsed / 60:.1f} min{loss_text}", flush=True)
        sys.stdout.flush()


class TestCurve(Callback):
    """Image and pixel AUROC on the test split every ``every`` epochs: the training curve of a run.

    Lightning's validation is the test split for MVTec-style data, but it also refits anomalib's
    thresholds and normalisation; this callback only scores, from the raw model outputs (AUROC
    does not depend on a monotonic normalisation), so the curve costs one test pass per point
    and changes nothing in the run. With ``image_categories`` (unified multi-class data) each point is
    the mean over categories, as UniAD's tables report. Points are ``(epoch, image AUROC, pixel AUROC or None)``;
    ``losses`` holds the epoch's mean train loss at each point, so a reader can see whether the
    loss had flattened when the run stopped.

    Memory-bank models (anomalib's ``MemoryBankMixin``: PaDiM, PatchCore) have no curve: they
    collect features in one pass and only fit their model when validation starts, after the
    epoch's end, so there is nothing to score here; they are skipped. A model that fits scoring
    statistics on the training images after training (RD4AD's ``distance="residual_gaussian"``, EfficientAD's
    map quantiles) does so through its ``prepare_scoring()``, which is called before each point and fits as
    before a validation. The point itself is scored under the trainer's test-step precision context, so a
    ``bf16-mixed`` run's points are scored in bfloat16 autocast, as its test is.
    """

    def __init__(
        self,
        dataloader: Iterable[Batch],
        every: int,
        image_categories: Mapping[str, str] | None = None,
    ) -> None:
        if every < 1:
            msg = f"every must be at least 1 epoch; got {every}."
            raise ValueError(msg)
        self.dataloader = dataloader
        self.every = every
        self.image_categories = image_categories
        self.points: list[tuple[int, float, float | None]] = []
        self.losses: dict[int, float] = {}

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Score the test split every ``every`` epochs and after the last one; record and print the point."""
        from anomalib.models.components import MemoryBankMixin

        epoch = trainer.current_epoch + 1
        if isinstance(pl_module, MemoryBankMixin) or (epoch % self.every and epoch != trainer.max_epochs):
            return
        loss = epoch_train_loss(trainer)
        if loss is not None:
            self.losses[epoch] = loss
        prepare_scoring = getattr(pl_module, "prepare_scoring", None)
        if callable(prepare_scoring):
            prepare_scoring()  # fits as before a validation, at the precision the model's own fit chooses
        with trainer.precision_plugin.test_step_context():  # scored as the test scores it (bf16 autocast or not)
            image_auroc, pixel_auroc = score_test_set(
                pl_module,
                self.dataloader,
                image_categories=self.image_categories,
            )
        self.points.append((epoch, image_auroc, pixel_auroc))
        pixel_text = f", pixel AUROC {100 * pixel_auroc:.1f}" if pixel_auroc is not None else ""
        print(f"epoch {epoch}: image AUROC {100 * image_auroc:.1f}{pixel_text}", flush=True)


def score_test_set(
    pl_module: AnomalibModule,
    dataloader: Iterable[Batch],
    full_graph: bool = False,
    image_categories: Mapping[str, str] | None = None,
) -> tuple[float, float | None]:
    """Image AUROC of the scores and pixel AUROC of the maps over ``dataloader`` (``None`` without masks).

    By default the raw model outputs after the model's pre-processing (what training optimises;
    usable before any threshold exists). ``full_graph=True`` scores the whole inference graph,
    post-processing included, exactly as it is exported. With ``image_categories`` (image path to
    category) both AUROCs are computed per category and averaged: UniAD's unified protocol, where
    one category's scores are never ranked against another's.
    """
    from torch.nn.functional import interpolate

    was_training = pl_module.training
    pl_module.eval()
    paths: list[str] = []
    scores, labels, maps, masks = [], [], [], []
    with torch.no_grad():
        for batch in dataloader:
            images = batch.image.to(pl_module.device)
            if full_graph:
                output = pl_module(images)
            else:
                output = pl_module.model(pl_module.pre_processor(images) if pl_module.pre_processor else images)
            paths += [str(path) for path in getattr(batch, "image_path", None) or [""] * len(images)]
            scores.append(output.pred_score.flatten().float().cpu())
            labels.append(batch.gt_label.flatten().int())
            if batch.gt_mask is not None:
                anomaly_map = output.anomaly_map.reshape(len(images), 1, *output.anomaly_map.shape[-2:]).float()
                if anomaly_map.shape[-2:] != batch.gt_mask.shape[-2:]:
                    anomaly_map = interpolate(anomaly_map, size=batch.gt_mask.shape[-2:], mode="bilinear")
                maps.append(anomaly_map.flatten(1).cpu())
                masks.append(batch.gt_mask.flatten(1).int())
    pl_module.train(was_training)
    groups = [torch.arange(len(paths))]
    if image_categories is not None:
        categories = [image_categories[path] for path in paths]
        names = dict.fromkeys(categories)
        groups = [torch.tensor([i for i, category in enumerate(categories) if category == name]) for name in names]
    all_scores, all_labels = torch.cat(scores), torch.cat(labels)
    image_auroc = sum(auroc_any_scale(all_scores[rows], all_labels[rows]) for rows in groups) / len(groups)
    if not masks:
        return image_auroc, None
    all_maps, all_masks = torch.cat(maps), torch.cat(masks)
    pixel_aurocs = [auroc_any_scale(all_maps[rows].flatten(), all_masks[rows].flatten()) for rows in groups]
    pixel_auroc = sum(pixel_aurocs) / len(groups)
    return image_auroc, pixel_auroc


def auroc_any_scale(scores: torch.Tensor, targets: torch.Tensor) -> float:
    """Binary AUROC of scores on any scale (rescaled to [0, 1] first, see :func:`unit_range`)."""
    from torchmetrics.functional.classification import binary_auroc

    return float(binary_auroc(unit_range(scores), targets))


def unit_range(values: torch.Tensor) -> torch.Tensor:
    """Affine map of ``values`` onto [0, 1] in float64 (all zeros if constant); keeps their order.

    torchmetrics' binary AUROC treats scores outside [0, 1] as logits and applies a sigmoid, which
    rounds raw scores above about 17 (UniAD's reconstruction errors are about 100) to exactly 1.0
    and ties them all; an affine rescaling changes no AUROC and avoids that.
    """
    values = values.double()
    low, high = values.min(), values.max()
    return (values - low) / (high - low).clamp_min(1e-12)
