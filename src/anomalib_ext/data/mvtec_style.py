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
reported with the file that caused it, instead of failing later inside a DataLoader worker.
A folder with no ``ground_truth/`` at all is image-level data (classification): its anomalous
images need no masks and only image metrics are computed.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import torch
from anomalib.data import AnomalibDataModule, ImageItem
from anomalib.data.datasets.base import AnomalibDataset
from anomalib.data.utils import LabelName, Split
from PIL import Image, UnidentifiedImageError
from torchvision.transforms.v2.functional import to_dtype
from torchvision.tv_tensors import Image as TvImage
from torchvision.tv_tensors import Mask

from .image_cache import DEFAULT_MAX_BYTES, DatasetError, DecodedImageCache

if TYPE_CHECKING:
    from collections.abc import Sequence

    from torchvision.transforms.v2 import Transform

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
__all__ = ["DatasetError", "MVTecStyle", "MVTecStyleDataset", "make_mvtec_style_samples"]


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _find_mask(root: Path, defect: str, stem: str) -> Path | None:
    folder = root / "ground_truth" / defect
    for name in (f"{stem}_mask", stem):
        for suffix in IMAGE_SUFFIXES:
            candidate = folder / f"{name}{suffix}"
            if candidate.is_file():
                return candidate
    return None


def check_image(path: Path) -> tuple[int, int]:
    """Decode ``path`` fully (catches truncated files) and return its ``(width, height)``."""
    try:
        with Image.open(path) as image:
            image.load()
            return image.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        msg = f"Cannot read image {path}: {error}. Remove or replace the file."
        raise DatasetError(msg) from error


def make_mvtec_style_samples(root: str | Path, check_files: bool = True) -> pd.DataFrame:
    """Index an MVTec-style folder: one row per image with split, label and mask path."""
    root = Path(root).expanduser()
    if not (root / "train" / "good").is_dir():
        msg = f"{root} is not an MVTec-style dataset: {root / 'train' / 'good'} does not exist."
        raise DatasetError(msg)
    rows: list[dict[str, object]] = []
    has_masks = (root / "ground_truth").is_dir()
    for split in ("train", "test"):
        split_dir = root / split
        if not split_dir.is_dir():
            continue
        for label_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
            normal = label_dir.name == "good"
            if split == "train" and not normal:
                continue  # anomalous training images are not used by one-class models
            for image_path in _images_in(label_dir):
                mask_path = ""
                if not normal and not has_masks:
                    if check_files:
                        check_image(image_path)
                elif not normal:
                    mask = _find_mask(root, label_dir.name, image_path.stem)
                    if mask is None:
                        msg = (
                            f"No mask for anomalous image {image_path}: expected "
                            f"{root / 'ground_truth' / label_dir.name / (image_path.stem + '_mask.png')}."
                        )
                        raise DatasetError(msg)
                    mask_path = str(mask)
                    if check_files and check_image(mask) != check_image(image_path):
                        msg = (
                            f"Mask {mask} has size {check_image(mask)} "
                            f"but image {image_path} has {check_image(image_path)}."
                        )
                        raise DatasetError(msg)
                elif check_files:
                    check_image(image_path)
                rows.append(
                    {
                        "path": str(root),
                        "split": split,
                        "label": label_dir.name,
                        "image_path": str(image_path),
                        "mask_path": mask_path,
                        "label_index": int(LabelName.NORMAL if normal else LabelName.ABNORMAL),
                    },
                )
    samples = pd.DataFrame(rows, columns=["path", "split", "label", "image_path", "mask_path", "label_index"])
    if not (samples.split == "train").any():
        msg = f"No training images in {root / 'train' / 'good'} (suffixes {IMAGE_SUFFIXES})."
        raise DatasetError(msg)
    samples.attrs["task"] = "segmentation" if (samples.mask_path != "").any() else "classification"
    return samples


class MVTecStyleDataset(AnomalibDataset):
    """One split of an MVTec-style folder, each image decoded and resized once (see :mod:`.image_cache`).

    Args:
        root: the category folder.
        split: ``train`` or ``test`` (``None``: every row of ``samples``).
        augmentations: applied on every access, after the resize.
        samples: a precomputed index (``make_mvtec_style_samples``).
        image_size: ``(height, width)`` every image and mask is resized to on load; ``None`` keeps the files' size.
        cache: decoded-image cache (shared between splits); ``None`` decodes every access.
    """

    def __init__(
        self,
        root: str | Path,
        split: str | Split | None = None,
        augmentations: Transform | None = None,
        samples: pd.DataFrame | None = None,
        image_size: Sequence[int] | None = None,
        cache: DecodedImageCache | None = None,
    ) -> None:
        super().__init__(augmentations=augmentations)
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
            self.cache.image(row.image_path, self.image_size)
            if row.mask_path:
                self.cache.mask(row.mask_path, self.image_size)

    def __getitem__(self, index: int) -> ImageItem:
        """Image in ``[0, 1]`` and mask at ``image_size``, then the augmentations (as anomalib's datasets)."""
        row = self.samples.iloc[index]
        image = TvImage(to_dtype(self.cache.image(row.image_path, self.image_size), torch.float32, scale=True))
        gt_mask = None
        if self.samples.attrs.get("task") == "segmentation":
            if row.mask_path:
                gt_mask = Mask(self.cache.mask(row.mask_path, self.image_size))
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
    ) -> None:
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

    def make_dataset(self, root: Path, split: Split, samples: pd.DataFrame) -> MVTecStyleDataset:
        """One split at this module's image size, sharing its decoded-image cache."""
        dataset = MVTecStyleDataset(
            root,
            split=split,
            samples=samples,
            image_size=self.image_size,
            cache=self.image_cache,
        )
        if self.image_cache.max_bytes > 0:
            dataset.fill_cache()
        return dataset

    def _setup(self, _stage: str | None = None) -> None:
        samples = make_mvtec_style_samples(self.root, check_files=self.check_files)
        self.train_data = self.make_dataset(self.root, Split.TRAIN, samples)
        self.test_data = self.make_dataset(self.root, Split.TEST, samples)
