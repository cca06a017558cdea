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

from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from anomalib.data import AnomalibDataModule
from anomalib.data.datasets.base import AnomalibDataset
from anomalib.data.utils import LabelName, Split
from PIL import Image, UnidentifiedImageError
from torchvision.transforms.v2 import Compose, Resize, Transform

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class DatasetError(ValueError):
    """The dataset folder is malformed; the message names the offending file or folder."""


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
                        msg = f"Mask {mask} has size {check_image(mask)} but image {image_path} has {check_image(image_path)}."
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
                    }
                )
    samples = pd.DataFrame(rows, columns=["path", "split", "label", "image_path", "mask_path", "label_index"])
    if not (samples.split == "train").any():
        msg = f"No training images in {root / 'train' / 'good'} (suffixes {IMAGE_SUFFIXES})."
        raise DatasetError(msg)
    samples.attrs["task"] = "segmentation" if (samples.mask_path != "").any() else "classification"
    return samples


class MVTecStyleDataset(AnomalibDataset):
    """One split of an MVTec-style folder."""

    def __init__(
        self,
        root: str | Path,
        split: str | Split | None = None,
        augmentations: Transform | None = None,
        samples: pd.DataFrame | None = None,
    ) -> None:
        super().__init__(augmentations=augmentations)
        self.root = Path(root)
        self.category = self.root.name
        samples = make_mvtec_style_samples(self.root) if samples is None else samples
        if split is not None:
            split_value = split.value if isinstance(split, Split) else split
            task = samples.attrs.get("task")
            samples = samples[samples.split == split_value].reset_index(drop=True)
            samples.attrs["task"] = task
        self.samples = samples


class MVTecStyle(AnomalibDataModule):
    """Data module for one MVTec-style folder (``../shared/datasets/mtd``, a demo category, ...).

    Args:
        root: the category folder itself (the one holding ``train/`` and ``test/``).
        image_size: images and masks are resized on load so that folders with mixed image sizes
            batch; ``None`` keeps the files' sizes (they must then all agree).
        check_files: decode every image and mask once before training and fail with the file name.
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
    ) -> None:
        if image_size is not None:
            size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
            resize = Resize(size, antialias=True)

            def with_resize(transform: Transform | None) -> Transform:
                return resize if transform is None else Compose([resize, transform])

            augmentations = with_resize(augmentations)
            train_augmentations = with_resize(train_augmentations) if train_augmentations else None
            val_augmentations = with_resize(val_augmentations) if val_augmentations else None
            test_augmentations = with_resize(test_augmentations) if test_augmentations else None
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

    def _setup(self, _stage: str | None = None) -> None:
        samples = make_mvtec_style_samples(self.root, check_files=self.check_files)
        self.train_data = MVTecStyleDataset(self.root, split=Split.TRAIN, samples=samples)
        self.test_data = MVTecStyleDataset(self.root, split=Split.TEST, samples=samples)
