"""Index an MVTec-style folder: one row per image with its split, label and mask, every file checked.

Masks are matched to images by stem (``<stem>_mask.<ext>`` or ``<stem>.<ext>``), any image suffix
is accepted, and each problem is reported with the file that caused it. A folder with no
``ground_truth/`` is image-level data: its anomalous images need no masks.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from anomalib.data.utils import LabelName
from PIL import Image, UnidentifiedImageError

from .image_cache import DatasetError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


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
