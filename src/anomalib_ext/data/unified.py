"""Unified multi-class training: one model, many categories, metrics reported per category.

anomalib trains one model per category (its issue 2973). UniAD's setting (You et al., NeurIPS
2022) trains a *single* model on the normal images of all categories, with no class label given
to the model, and reports every metric per category plus their mean. Here:

- :class:`UnifiedMultiClass` concatenates several MVTec-style folders (``root`` + ``categories``,
  e.g. the 15 MVTec AD categories or anomalib's prepared VisA ``visa_pytorch/<category>``
  folders, and/or explicit ``roots``) into one train set and one test set. The batches are
  ordinary anomalib batches (the category is not in them), so any anomalib model trains on it.
- :class:`PerCategoryMetrics` is a callback that groups test predictions by category (looked up
  from ``batch.image_path``) and logs ``<metric>/<category>`` and ``<metric>/mean``. The data
  module adds it to the trainer by itself, so ``engine.test`` / ``anomalib test`` report per
  category with any model.

Per-category metrics see the model's raw scores: the callback is put first so it runs before the
model's post-processor, whose normalisation clamps scores to [0, 1] (which can merge ties and
change AUROC); it rescales each category's scores affinely instead. anomalib's own overall
metrics are logged unchanged next to them.
"""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch
from anomalib.data.utils import Split
from anomalib.metrics import AUPRO, AUROC, AnomalibMetric
from lightning.pytorch import Callback, LightningModule, Trainer

from .mvtec_style import DatasetError, MVTecStyle, make_mvtec_style_samples

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anomalib.data import Batch
    from lightning.pytorch.utilities.types import STEP_OUTPUT
    from torchvision.transforms.v2 import Transform

MVTEC_CATEGORIES = (
    "bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut",
    "pill", "screw", "tile", "toothbrush", "transistor", "wood", "zipper",
)  # fmt: skip
VISA_CATEGORIES = (
    "candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1",
    "macaroni2", "pcb1", "pcb2", "pcb3", "pcb4", "pipe_fryum",
)  # fmt: skip


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
                    fields[field] = _min_max(fields[field])
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


def _min_max(values: torch.Tensor) -> torch.Tensor:
    """Affine map of ``values`` onto [0, 1] (all zeros if constant); keeps their order."""
    values = values.double()
    low, high = values.min(), values.max()
    return ((values - low) / (high - low).clamp_min(1e-12)).float()


class UnifiedMultiClass(MVTecStyle):
    """One train set and one test set made of several MVTec-style categories.

    Args:
        root: a folder holding one MVTec-style folder per category (MVTec AD, prepared VisA, the
            demo textures, ...); used with ``categories``.
        categories: category folder names under ``root``; ``None`` takes every subfolder of
            ``root`` that has ``train/good``.
        roots: further category folders given by path (e.g. ``../shared/datasets/mtd``); the
            category name is the folder name and must be unique.
        image_size: every image is resized on load (categories differ in size).
        per_category_metrics: add :class:`PerCategoryMetrics` to the trainer at setup.
        category_metrics: metric templates for it (default image + pixel AUROC).
        Other arguments as :class:`~anomalib_ext.data.MVTecStyle`.
    """

    def __init__(
        self,
        root: str | Path | None = None,
        categories: Sequence[str] | None = None,
        roots: Sequence[str | Path] | None = None,
        image_size: int | Sequence[int] | None = 256,
        check_files: bool = True,
        train_batch_size: int = 32,
        eval_batch_size: int = 32,
        num_workers: int = 0,
        per_category_metrics: bool = True,
        category_metrics: Sequence[AnomalibMetric] | None = None,
        train_augmentations: Transform | None = None,
        val_augmentations: Transform | None = None,
        test_augmentations: Transform | None = None,
        augmentations: Transform | None = None,
        seed: int | None = None,
    ) -> None:
        folders = self.category_folders(root, categories, roots)
        super().__init__(
            root=folders[0],
            image_size=image_size,
            check_files=check_files,
            train_batch_size=train_batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            train_augmentations=train_augmentations,
            val_augmentations=val_augmentations,
            test_augmentations=test_augmentations,
            augmentations=augmentations,
            seed=seed,
        )
        self.folders = folders
        self.category = "unified"
        self.per_category_metrics = per_category_metrics
        self.category_metrics = list(category_metrics) if category_metrics is not None else None
        self.image_categories: dict[str, str] = {}

    @staticmethod
    def category_folders(
        root: str | Path | None,
        categories: Sequence[str] | None,
        roots: Sequence[str | Path] | None,
    ) -> list[Path]:
        """The category folders to join, checked for existence and unique names."""
        folders: list[Path] = []
        if root is not None:
            base = Path(root).expanduser()
            if categories is None:
                if not base.is_dir():
                    msg = f"Dataset root {base} does not exist."
                    raise DatasetError(msg)
                folders += sorted(p for p in base.iterdir() if (p / "train" / "good").is_dir())
            else:
                folders += [base / name for name in categories]
        elif categories is not None:
            msg = "`categories` needs `root`, the folder that holds them."
            raise ValueError(msg)
        folders += [Path(path).expanduser() for path in roots or ()]
        if not folders:
            msg = "No categories: give `root` (and optionally `categories`) and/or `roots`."
            raise ValueError(msg)
        names = [folder.name for folder in folders]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            msg = f"Category names must be unique, got {duplicates} more than once: {folders}."
            raise ValueError(msg)
        for folder in folders:
            if not (folder / "train" / "good").is_dir():
                msg = f"Category folder {folder} is not MVTec-style: {folder / 'train' / 'good'} does not exist."
                raise DatasetError(msg)
        return folders

    @property
    def categories(self) -> list[str]:
        """Category names, in the order given."""
        return [folder.name for folder in self.folders]

    def make_samples(self) -> pd.DataFrame:
        """All categories' samples with a ``category`` column (never shown to the model)."""
        frames = []
        for folder in self.folders:
            samples = make_mvtec_style_samples(folder, check_files=self.check_files)
            frames.append(samples.assign(category=folder.name))
        samples = pd.concat(frames, ignore_index=True)
        tasks = {frame.attrs.get("task") for frame in frames}
        samples.attrs["task"] = "segmentation" if "segmentation" in tasks else "classification"
        return samples

    def _setup(self, _stage: str | None = None) -> None:
        samples = self.make_samples()
        self.image_categories = dict(zip(samples.image_path, samples.category, strict=True))
        self.train_data = self.make_dataset(self.folders[0].parent, Split.TRAIN, samples)
        self.test_data = self.make_dataset(self.folders[0].parent, Split.TEST, samples)

    def setup(self, stage: str | None = None) -> None:
        """Build the datasets, then put :class:`PerCategoryMetrics` first in the trainer's callbacks."""
        super().setup(stage)
        trainer = getattr(self, "trainer", None)
        if not self.per_category_metrics or trainer is None:
            return
        if not any(isinstance(callback, PerCategoryMetrics) for callback in trainer.callbacks):
            trainer.callbacks.insert(0, PerCategoryMetrics(self.category_metrics, self.image_categories))
