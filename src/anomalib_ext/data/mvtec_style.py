"""Any folder in the MVTec AD layout as an anomalib data module, checked before training.

anomalib's ``MVTecAD`` only reads ``.png`` files and only under the 15 official category names,
and its ``Folder`` pairs masks with images by sort order. Real inspection data (e.g. Magnetic
Tile Defects: grayscale JPEGs of varying size) needs neither restriction::

    root/
      train/good/*.jpg
      test/good/*.jpg
      test/<defect>/<stem>.jpg
      ground_truth/<defect>/<stem>_mask.png   (or <stem>.png)

Masks are matched to images by stem, every file is opened once up front, and each problem is
reported with the file that caused it, instead of failing later inside a DataLoader worker
(:mod:`.mvtec_samples` builds and checks the index).
A folder with no ``ground_truth/`` at all is image-level data (classification): its anomalous
images need no masks and only image metrics are computed.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from anomalib.data import AnomalibDataModule, ImageItem
from anomalib.data.datasets.base import AnomalibDataset
from anomalib.data.utils import Split
from torchvision.transforms.v2.functional import to_dtype
from torchvision.tv_tensors import Image as TvImage
from torchvision.tv_tensors import Mask

from .image_cache import DEFAULT_MAX_BYTES, DatasetError, DecodedImageCache
from .mvtec_samples import IMAGE_SUFFIXES, check_image, make_mvtec_style_samples

if TYPE_CHECKING:
    from collections.abc import Sequence

    import pandas as pd
    from torchvision.transforms.v2 import Transform

__all__ = [
    "IMAGE_SUFFIXES",
    "DatasetError",
    "MVTecStyle",
    "MVTecStyleDataset",
    "check_image",
    "make_mvtec_style_samples",
]


class MVTecStyleDataset(AnomalibDataset):
    """One split of an MVTec-style folder, each image decoded and resized once (see :mod:`.image_cache`).

    Args:
        root: the category folder.
        split: ``train`` or ``test`` (``None``: every row of ``samples``).
        augmentations: applied on every access, after the resize.
        samples: a precomputed index (``make_mvtec_style_samples``).
        image_size: ``(height, width)`` every image and mask is resized to on load; ``None`` keeps the files' size.
        cache: decoded-image cache (shared between splits); ``None`` decodes every access.
        landscape: turn portrait images and their masks a quarter turn before the resize (see
            :func:`~anomalib_ext.data.image_cache.to_landscape`).
    """

    def __init__(
        self,
        root: str | Path,
        split: str | Split | None = None,
        augmentations: Transform | None = None,
        samples: pd.DataFrame | None = None,
        image_size: Sequence[int] | None = None,
        cache: DecodedImageCache | None = None,
        landscape: bool = False,
    ) -> None:
        super().__init__(augmentations=augmentations)
        self.landscape = landscape
        self.root = Path(root)
        self.category = self.root.name
        self.image_size = tuple(image_size) if image_size is not None else None
        self.cache = cache if cache is not None else DecodedImageCache(max_bytes=0)
        samples = make_mvtec_style_samples(self.root) if samples is None else samples
        if split is not None:
            split_value = split.value if isinstance(split, Split) else split
            task = samples.attrs.get("task")
            samples = samples[samples.split == split_value].reset_index(drop=True)
            samples.attrs["task"] = task
        self.samples = samples

    def fill_cache(self) -> None:
        """Decode every image and mask of this split into the cache now (before DataLoader workers fork)."""
        for row in self.samples.itertuples():
            self.cache.image(row.image_path, self.image_size, self.landscape)
            if row.mask_path:
                self.cache.mask(row.mask_path, self.image_size, self.landscape)

    def __getitem__(self, index: int) -> ImageItem:
        """Image in ``[0, 1]`` and mask at ``image_size``, then the augmentations (as anomalib's datasets)."""
        row = self.samples.iloc[index]
        pixels = self.cache.image(row.image_path, self.image_size, self.landscape)
        image = TvImage(to_dtype(pixels, torch.float32, scale=True))
        gt_mask = None
        if self.samples.attrs.get("task") == "segmentation":
            if row.mask_path:
                gt_mask = Mask(self.cache.mask(row.mask_path, self.image_size, self.landscape))
            else:
                gt_mask = Mask(torch.zeros(image.shape[-2:], dtype=torch.uint8))
        if self.augmentations:
            if gt_mask is None:
                image = self.augmentations(image)
            else:
                image, gt_mask = self.augmentations(image, gt_mask)
        return ImageItem(
            image=image,
            gt_mask=gt_mask,
            gt_label=torch.tensor(int(row.label_index)),
            image_path=row.image_path,
            mask_path=row.mask_path,
        )


class MVTecStyle(AnomalibDataModule):
    """Data module for one MVTec-style folder (``../shared/datasets/mtd``, a demo category, ...).

    Args:
        root: the category folder itself (the one holding ``train/`` and ``test/``).
        image_size: images and masks are resized on load so that folders with mixed image sizes
            batch; ``None`` keeps the files' sizes (they must then all agree).
        check_files: decode every image and mask once before training and fail with the file name.
        cache_images: keep each image decoded and resized in memory (``uint8``), so later epochs
            skip decoding; augmentations still run per access. ``False`` decodes every access.
        cache_max_bytes: memory budget of that cache (images past it are decoded every time).
        holdout_fraction: share of the training images set aside as ``holdout_data`` before any
            validation split: never trained on, for statistics a model must take on unseen normal
            images (EfficientAD's map quantiles, as in its reproduction). ``0`` holds out nothing.
        holdout_seed: seed of that draw (the same images for every run with the same data).
        landscape: turn every portrait image (and its mask) a quarter turn before resizing, so all
            long sides are horizontal: for parts photographed either way round, such as MTD's tiles.
            Predicted maps are then in the turned frame. ``False`` (default) keeps the files' orientation.
        Other arguments are anomalib's ``AnomalibDataModule`` arguments. Validation defaults to the
        test split, as for anomalib's ``MVTecAD``.
    """

    def __init__(
        self,
        root: str | Path,
        image_size: int | Sequence[int] | None = 256,
        check_files: bool = True,
        train_batch_size: int = 32,
        eval_batch_size: int = 32,
        num_workers: int = 0,
        train_augmentations: Transform | None = None,
        val_augmentations: Transform | None = None,
        test_augmentations: Transform | None = None,
        augmentations: Transform | None = None,
        val_split_mode: str = "same_as_test",
        val_split_ratio: float = 0.5,
        seed: int | None = None,
        cache_images: bool = True,
        cache_max_bytes: int = DEFAULT_MAX_BYTES,
        holdout_fraction: float = 0.0,
        holdout_seed: int = 42,
        landscape: bool = False,
    ) -> None:
        if not 0.0 <= holdout_fraction < 1.0:
            msg = f"holdout_fraction must be in [0, 1), got {holdout_fraction}."
            raise ValueError(msg)
        super().__init__(
            train_batch_size=train_batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            train_augmentations=train_augmentations,
            val_augmentations=val_augmentations,
            test_augmentations=test_augmentations,
            augmentations=augmentations,
            test_split_mode="from_dir",
            val_split_mode=val_split_mode,
            val_split_ratio=val_split_ratio,
            seed=seed,
        )
        self.root = Path(root).expanduser()
        self.check_files = check_files
        self.category = self.root.name
        self.image_size: tuple[int, ...] | None = (
            None
            if image_size is None
            else (image_size, image_size)
            if isinstance(image_size, int)
            else tuple(image_size)
        )
        self.image_cache = DecodedImageCache(cache_max_bytes if cache_images else 0)
        self.holdout_fraction = holdout_fraction
        self.holdout_seed = holdout_seed
        self.holdout_data: MVTecStyleDataset | None = None
        self.landscape = landscape

    def make_dataset(self, root: Path, split: Split, samples: pd.DataFrame) -> MVTecStyleDataset:
        """One split at this module's image size, sharing its decoded-image cache."""
        dataset = MVTecStyleDataset(
            root,
            split=split,
            samples=samples,
            image_size=self.image_size,
            cache=self.image_cache,
            landscape=self.landscape,
        )
        if self.image_cache.max_bytes > 0:
            dataset.fill_cache()
        return dataset

    def _create_val_split(self) -> None:
        """Set ``holdout_data`` aside from the training images first, then anomalib's validation split."""
        self.holdout_data = self._hold_out_training_images()
        super()._create_val_split()

    def _hold_out_training_images(self) -> MVTecStyleDataset | None:
        """Move a seeded ``holdout_fraction`` of ``train_data`` (at least one image) into its own dataset."""
        train = self.train_data
        if self.holdout_fraction <= 0 or len(train) < 2:
            return None
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(self.holdout_seed)).tolist()
        n_held = min(len(train) - 1, max(1, round(self.holdout_fraction * len(train))))
        held = train.subsample(sorted(order[:n_held]), inplace=False)
        train.subsample(sorted(order[n_held:]), inplace=True)
        return held

    def _setup(self, _stage: str | None = None) -> None:
        samples = make_mvtec_style_samples(self.root, check_files=self.check_files)
        self.train_data = self.make_dataset(self.root, Split.TRAIN, samples)
        self.test_data = self.make_dataset(self.root, Split.TEST, samples)
