"""Offline natural images for EfficientAD's penalty term and teacher distillation.

EfficientAD needs "pretraining" images twice: the teacher is distilled from a backbone on them,
and every student step is penalised on one of them. The paper and the reproduction use ImageNet;
anomalib downloads Imagenette. This module gives both uses the same source without a network:

* a folder of images (searched recursively: ImageNet's ``train/``, Imagenette, any photos), or
* ``folder=None``: the natural photos and textures that ship inside scikit-image, made into an
  endless stream by heavy augmentation (random resized crops, flips, rotations, colour jitter,
  grayscale), since 16 photos are far too few on their own.

Images come back as float tensors in ``[0, 1]`` (ImageNet normalisation is the model's job).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".JPEG")
SKIMAGE_PHOTOS = (
    "astronaut",
    "camera",
    "coffee",
    "chelsea",
    "rocket",
    "cat",
    "brick",
    "grass",
    "gravel",
    "coins",
    "moon",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "clock",
    "page",
)
Augment = Literal["heavy", "penalty", "none"]


def skimage_photos(names: Sequence[str] = SKIMAGE_PHOTOS) -> list[torch.Tensor]:
    """The scikit-image sample photos as ``uint8`` tensors ``(3, H, W)`` (bundled files, no download)."""
    import skimage.data

    photos = []
    for name in names:
        array = np.asarray(getattr(skimage.data, name)())
        if array.ndim == 2:
            array = np.repeat(array[..., None], 3, axis=2)
        photos.append(torch.from_numpy(np.ascontiguousarray(array[..., :3])).permute(2, 0, 1).contiguous())
    return photos


def image_files(folder: str | Path) -> list[Path]:
    """All image files below ``folder`` (recursive, sorted), or a clear error if there are none."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        msg = f"Natural-image folder {str(folder)!r} does not exist."
        raise FileNotFoundError(msg)
    files = sorted(p for p in folder.rglob("*") if p.suffix in IMAGE_SUFFIXES or p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        msg = f"No images ({', '.join(IMAGE_SUFFIXES)}) below {str(folder)!r}."
        raise FileNotFoundError(msg)
    return files


def make_transform(image_size: int, augment: Augment) -> v2.Transform:
    """``heavy``: for the few offline photos; ``penalty``: the reproduction's ImageNet penalty transform."""
    to_float = v2.ToDtype(torch.float32, scale=True)
    if augment == "penalty":  # nelson1425: Resize(2s), RandomGrayscale(0.3), CenterCrop(s)
        return v2.Compose(
            [
                v2.Resize((2 * image_size, 2 * image_size), antialias=True),
                v2.RandomGrayscale(0.3),
                v2.CenterCrop(image_size),
                to_float,
            ],
        )
    if augment == "none":
        return v2.Compose([v2.Resize((image_size, image_size), antialias=True), to_float])
    return v2.Compose(
        [
            v2.RandomResizedCrop(image_size, scale=(0.05, 1.0), ratio=(0.5, 2.0), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.RandomVerticalFlip(),
            v2.RandomChoice([v2.Identity(), v2.RandomRotation(90), v2.RandomRotation((90, 90))]),
            v2.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1),
            v2.RandomGrayscale(0.2),
            to_float,
        ],
    )


class NaturalImages(Dataset):
    """Augmented natural images from a folder, or from scikit-image's bundled photos when ``folder`` is ``None``.

    Args:
        folder: image folder (recursive); ``None`` uses :data:`SKIMAGE_PHOTOS`.
        image_size: side of the square output.
        augment: ``heavy`` (default for the bundled photos), ``penalty`` (default for a folder:
            the reproduction's transform) or ``none``.
        length: virtual length for the bundled photos (each index is a fresh random view).
    """

    def __init__(
        self,
        folder: str | Path | None = None,
        image_size: int = 256,
        augment: Augment | None = None,
        length: int = 10_000,
    ) -> None:
        self.folder = None if folder is None else Path(folder)
        self.files = image_files(self.folder) if self.folder is not None else []
        self.photos = skimage_photos() if self.folder is None else []
        self.length = len(self.files) if self.files else length
        self.transform = make_transform(image_size, augment or ("penalty" if self.files else "heavy"))

    def __len__(self) -> int:
        """The number of folder images, or the virtual ``length`` for the bundled photos."""
        return self.length

    def __getitem__(self, index: int) -> torch.Tensor:
        """Image ``index`` through the dataset's transform (the bundled photos repeat), as a float CHW tensor."""
        if self.files:
            with Image.open(self.files[index]) as image:
                array = np.asarray(image.convert("RGB"))
            photo = torch.from_numpy(array.copy()).permute(2, 0, 1)
        else:
            photo = self.photos[index % len(self.photos)]
        return self.transform(photo)

    def describe(self) -> str:
        """One line saying where the images come from (for logs and saved teacher metadata)."""
        if self.folder is not None:
            return f"folder {self.folder} ({len(self.files)} images)"
        return f"scikit-image bundled photos ({len(self.photos)}: {', '.join(SKIMAGE_PHOTOS)}), heavy augmentation"


def endless(loader: DataLoader) -> Iterator[torch.Tensor]:
    """Cycle through ``loader`` forever (a fresh shuffle every pass)."""
    while True:
        yield from loader
