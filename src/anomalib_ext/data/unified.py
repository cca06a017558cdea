"""Unified multi-class training: one model, many categories, metrics reported per category.

anomalib trains one model per category (its issue 2973). UniAD's setting (You et al., NeurIPS
2022) trains a *single* model on the normal images of all categories, with no class label given
to the model, and reports every metric per category plus their mean. Here:

- :class:`UnifiedMultiClass` concatenates several MVTec-style folders (``root`` + ``categories``,
  e.g. the 15 MVTec AD categories or anomalib's prepared VisA ``visa_pytorch/<category>``
  folders, and/or explicit ``roots``) into one train set and one test set. The batches are
  ordinary anomalib batches (the category is not in them), so any anomalib model trains on it.
- ``image_categories`` maps every image path to its category, which
  :class:`anomalib_ext.callbacks.PerCategoryMetrics` (added to the trainer explicitly, e.g.
  ``Engine(callbacks=[PerCategoryMetrics()])`` or a config's ``trainer.callbacks``) uses to log
  ``<metric>/<category>`` and ``<metric>/mean``. The data module itself never touches the trainer.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
from anomalib.data.utils import Split

from .image_cache import DEFAULT_MAX_BYTES
from .mvtec_style import DatasetError, MVTecStyle, make_mvtec_style_samples

if TYPE_CHECKING:
    from collections.abc import Sequence

    from torchvision.transforms.v2 import Transform

MVTEC_CATEGORIES = (
    "bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut",
    "pill", "screw", "tile", "toothbrush", "transistor", "wood", "zipper",
)  # fmt: skip
VISA_CATEGORIES = (
    "candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1",
    "macaroni2", "pcb1", "pcb2", "pcb3", "pcb4", "pipe_fryum",
)  # fmt: skip


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
        cache_images, cache_max_bytes: one decoded-image cache for all categories (see
            :class:`~anomalib_ext.data.MVTecStyle`).
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
        train_augmentations: Transform | None = None,
        val_augmentations: Transform | None = None,
        test_augmentations: Transform | None = None,
        augmentations: Transform | None = None,
        seed: int | None = None,
        cache_images: bool = True,
        cache_max_bytes: int = DEFAULT_MAX_BYTES,
        holdout_fraction: float = 0.0,
        holdout_seed: int = 42,
        landscape: bool = False,
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
            cache_images=cache_images,
            cache_max_bytes=cache_max_bytes,
            holdout_fraction=holdout_fraction,
            holdout_seed=holdout_seed,
            landscape=landscape,
        )
        self.folders = folders
        self.category = "unified"
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
        image_level = [folder for folder in self.folders if not (folder / "ground_truth").is_dir()]
        if image_level and len(image_level) < len(self.folders):
            with_masks = [str(folder) for folder in self.folders if folder not in image_level]
            msg = (
                f"Cannot join image-level categories (no ground_truth/: {[str(f) for f in image_level]}) with "
                f"categories that have masks ({with_masks}): pixel metrics would count the image-level "
                "categories' defects as normal pixels. Join categories of one kind, or train those separately."
            )
            raise DatasetError(msg)
        samples = pd.concat(frames, ignore_index=True)
        samples.attrs["task"] = "classification" if image_level else "segmentation"
        return samples

    def _setup(self, _stage: str | None = None) -> None:
        samples = self.make_samples()
        self.image_categories = dict(zip(samples.image_path, samples.category, strict=True))
        self.train_data = self.make_dataset(self.folders[0].parent, Split.TRAIN, samples)
        self.test_data = self.make_dataset(self.folders[0].parent, Split.TEST, samples)
