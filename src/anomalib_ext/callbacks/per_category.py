"""Test metrics per category with their mean: UniAD's unified (multi-class) tables, for any model.

With :class:`~anomalib_ext.data.UnifiedMultiClass` one model is tested on several categories at
once (no class label is given to the model). :class:`PerCategoryMetrics` groups the test
predictions by category (looked up from ``batch.image_path`` in the data module's
``image_categories``) and logs ``<metric>/<category>`` and ``<metric>/mean``.

It is added explicitly, like any callback: ``Engine(callbacks=[PerCategoryMetrics()])``, or in a
config under ``trainer.callbacks`` (``configs/uniad/mvtec_unified.yaml``). It sees the model's raw
scores: Lightning runs trainer callbacks before the model's own (anomalib's post-processor, whose
normalisation clamps scores to [0, 1] and can merge ties), and it rescales each category's scores
affinely instead, which changes neither AUROC nor AUPRO. anomalib's own overall metrics are logged
unchanged next to them.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import torch
from anomalib.metrics import AUPRO, AUROC, AnomalibMetric
from lightning.pytorch import Callback, LightningModule, Trainer

from .progress import unit_range

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anomalib.data import Batch
    from lightning.pytorch.utilities.types import STEP_OUTPUT


def default_category_metrics(aupro: bool = False) -> list[AnomalibMetric]:
    """Image and pixel AUROC (the paper's tables); pixel AUPRO on request (slower)."""
    metrics: list[AnomalibMetric] = [
        AUROC(fields=["pred_score", "gt_label"], prefix="image_"),
        AUROC(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False),
    ]
    if aupro:
        metrics.append(AUPRO(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False))
    return metrics


class PerCategoryMetrics(Callback):
    """Compute test metrics separately for each category and log them with their mean.

    The model's raw outputs of each category are kept (on the CPU) during the test epoch and
    min-max scaled per category before the metrics see them: torchmetrics' ROC curves squash
    scores outside [0, 1] with a sigmoid, which saturates on raw reconstruction errors, while an
    affine rescaling changes neither AUROC nor AUPRO. Memory: one float map and one bool mask per
    test image.

    Args:
        metrics: metric templates (copied once per category); default image + pixel AUROC.
        image_categories: ``image_path -> category``; default: ``trainer.datamodule.image_categories``.
    """

    score_fields = ("pred_score", "anomaly_map")

    def __init__(
        self,
        metrics: Sequence[AnomalibMetric] | None = None,
        image_categories: dict[str, str] | None = None,
    ) -> None:
        self.templates = list(metrics) if metrics is not None else default_category_metrics()
        self.image_categories = image_categories
        self.fields = sorted({field for metric in self.templates for field in metric.fields})
        self.outputs: dict[str, dict[str, list[torch.Tensor]]] = {}
        self.values: dict[str, dict[str, float]] = {}

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Find the category of every test image; forget earlier runs."""
        del pl_module
        if self.image_categories is None:
            self.image_categories = getattr(trainer.datamodule, "image_categories", None)
        if not self.image_categories:
            msg = "PerCategoryMetrics needs image_categories, or a data module with an `image_categories` mapping."
            raise ValueError(msg)
        self.outputs = {}
        self.values = {}

    def on_test_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: STEP_OUTPUT,
        batch: Batch,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Keep the batch rows of each category (the fields the metrics need, and the image paths)."""
        del trainer, pl_module, outputs, batch_idx, dataloader_idx
        assert self.image_categories is not None
        paths = [str(path) for path in batch.image_path]
        categories = [self.image_categories[path] for path in paths]
        for name in dict.fromkeys(categories):
            rows = [i for i, category in enumerate(categories) if category == name]
            index = torch.tensor(rows)
            stored = self.outputs.setdefault(name, {})
            stored.setdefault("image_path", []).extend(paths[i] for i in rows)
            for field in self.fields:
                value = getattr(batch, field, None)
                if isinstance(value, torch.Tensor):
                    stored.setdefault(field, []).append(value[index.to(value.device)].detach().cpu())

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Log ``<metric>/<category>`` for each category and ``<metric>/mean`` over categories.

        Under a distributed strategy every rank first receives every rank's rows (images the
        ``DistributedSampler`` repeated to even out the shards are counted once), so each rank
        computes, on the whole test set, the numbers a single process would.
        """
        per_metric: dict[str, list[torch.Tensor]] = {}
        gathered = _gather_rows(self.outputs, getattr(trainer, "world_size", 1))
        for name in sorted(gathered):
            fields = gathered[name]
            for field in self.score_fields:
                if field in fields:
                    fields[field] = unit_range(fields[field]).float()
            for template in self.templates:
                if any(field not in fields for field in template.fields):
                    continue  # e.g. pixel metrics without masks
                metric = copy.deepcopy(template)
                metric.distributed_available_fn = _not_distributed  # the rows are already complete
                metric.update(SimpleNamespace(**fields))
                value = metric.compute().detach().float().cpu()
                pl_module.log(f"{metric.name}/{name}", value)
                self.values.setdefault(name, {})[metric.name] = float(value)
                per_metric.setdefault(metric.name, []).append(value)
        for metric_name, values in per_metric.items():
            pl_module.log(f"{metric_name}/mean", torch.stack(values).mean())
        self.outputs = {}

    def results(self) -> dict[str, dict[str, float]]:
        """``{category: {metric: value}}`` of the last test run (for scripts and tables)."""
        return self.values


def _not_distributed() -> bool:
    return False


def _gather_rows(outputs: dict[str, dict[str, list[Any]]], world_size: int) -> dict[str, dict[str, torch.Tensor]]:
    """Concatenate each category's rows, across ranks when distributed, one row per image path."""
    shards = [outputs]
    if world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        shards = [{} for _ in range(world_size)]
        torch.distributed.all_gather_object(shards, outputs)
    merged: dict[str, dict[str, torch.Tensor]] = {}
    for name in sorted({category for shard in shards for category in shard}):
        paths: list[str] = []
        tensors: dict[str, list[torch.Tensor]] = {}
        for shard in shards:
            stored = shard.get(name, {})
            paths.extend(stored.get("image_path", []))
            for field, values in stored.items():
                if field != "image_path":
                    tensors.setdefault(field, []).extend(values)
        first: dict[str, int] = {}  # path -> its first row (the sampler's repeats come later)
        for row, path in enumerate(paths):
            first.setdefault(path, row)
        keep = list(first.values())
        merged[name] = {field: torch.cat(values)[keep] for field, values in tensors.items()}
    return merged
