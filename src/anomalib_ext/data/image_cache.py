"""Decode and resize each image once: an in-memory cache of ``uint8`` images and masks for the data modules.

Training for tens of epochs on full-size files spends most of its time in PNG/JPEG decoding and
resizing, not in the model. Images are decoded, resized in ``uint8`` (bilinear, antialiased, as
a PIL-based pipeline such as the official RD4AD code does) and masks resized nearest, once; the
result is kept under a byte budget, keyed by path, file size, modification time, target
size and orientation, so an edited file is read again. The uncached path runs the very same two functions, so
cached and uncached tensors are identical. Augmentations still run on every access.

The cache is shared, not copied, when anomalib clones a dataset (``same_as_test`` validation),
and DataLoader worker processes fork with what the main process has filled (the data module
fills it while it checks the files).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image, UnidentifiedImageError
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2.functional import pil_to_tensor, resize

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

DEFAULT_MAX_BYTES = 4 * 2**30


class DatasetError(ValueError):
    """The dataset folder is malformed; the message names the offending file or folder."""


def _open(path: str | Path, mode: str) -> torch.Tensor:
    try:
        with Image.open(path) as image:
            return pil_to_tensor(image.convert(mode))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        msg = f"Cannot read image {path}: {error}. Remove or replace the file."
        raise DatasetError(msg) from error


def to_landscape(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` turned a quarter counter-clockwise when it is taller than wide, so its long side is horizontal.

    For data whose parts are photographed in either orientation (Magnetic Tile Defects' tiles are cut
    both ways, up to 2.8:1): after this every image's surface texture runs the same way, and a square
    resize squashes every image along the same axis. An image and its mask have the same shape, so
    they turn together.
    """
    return tensor.rot90(1, dims=(-2, -1)) if tensor.shape[-2] > tensor.shape[-1] else tensor


def load_image(path: str | Path, size: Sequence[int] | None, landscape: bool = False) -> torch.Tensor:
    """``(3, H, W)`` uint8 RGB, turned to landscape if asked, then resized to ``size`` (height, width) in uint8."""
    image = _open(path, "RGB")
    if landscape:
        image = to_landscape(image).contiguous()
    if size is not None and tuple(image.shape[-2:]) != tuple(size):
        image = resize(image, list(size), interpolation=InterpolationMode.BILINEAR, antialias=True)
    return image


def load_mask(path: str | Path, size: Sequence[int] | None, landscape: bool = False) -> torch.Tensor:
    """``(H, W)`` uint8 mask of 0/1 (any non-zero pixel is anomalous), as :func:`load_image` turns and resizes."""
    mask = (_open(path, "L") > 0).to(torch.uint8)
    if landscape:
        mask = to_landscape(mask).contiguous()
    if size is not None and tuple(mask.shape[-2:]) != tuple(size):
        mask = resize(mask, list(size), interpolation=InterpolationMode.NEAREST_EXACT)
    return mask[0]


class DecodedImageCache:
    """Decoded, resized images and masks in memory, up to ``max_bytes`` (then files are read as usual).

    Args:
        max_bytes: memory budget; entries past it are not stored (``0`` disables the cache).
    """

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: dict[tuple[Any, ...], torch.Tensor] = {}
        self._current: dict[tuple[str, str], tuple[Any, ...]] = {}  # (kind, path) -> its live key
        self._lock = threading.Lock()

    def __deepcopy__(self, memo: dict[int, Any]) -> DecodedImageCache:
        """The cache itself, not a copy."""
        return self  # shared by a dataset and its clones: one copy of the pixels

    def __getstate__(self) -> dict[str, Any]:
        """The cache for pickling to a worker process, entries included, without the unpicklable lock."""
        state = self.__dict__.copy()
        del state["_lock"]  # worker processes started by spawn/forkserver get the pixels, and a lock of their own
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Restore a pickled cache with a new lock."""
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        """The number of cached images and masks."""
        return len(self._entries)

    def image(self, path: str | Path, size: Sequence[int] | None, landscape: bool = False) -> torch.Tensor:
        """The uint8 image at ``path`` as :func:`load_image` makes it; from memory when the file has not changed."""
        return self._get("image", path, size, landscape, load_image)

    def mask(self, path: str | Path, size: Sequence[int] | None, landscape: bool = False) -> torch.Tensor:
        """The 0/1 mask at ``path`` as :func:`load_mask` makes it; from memory when the file has not changed."""
        return self._get("mask", path, size, landscape, load_mask)

    def _get(
        self,
        kind: str,
        path: str | Path,
        size: Sequence[int] | None,
        landscape: bool,
        load: Callable[[str | Path, Sequence[int] | None, bool], torch.Tensor],
    ) -> torch.Tensor:
        if self.max_bytes <= 0:
            return load(path, size, landscape)
        try:
            stat = Path(path).stat()
        except OSError as error:
            msg = f"Cannot read image {path}: {error}."
            raise DatasetError(msg) from error
        key = (kind, str(path), stat.st_size, stat.st_mtime_ns, tuple(size) if size is not None else None, landscape)
        cached = self._entries.get(key)
        if cached is not None:
            return cached
        tensor = load(path, size, landscape)
        nbytes = tensor.numel() * tensor.element_size()
        with self._lock:
            old = self._current.pop((kind, str(path)), None)
            if old is not None and old in self._entries:  # the file changed, or another size: drop the old pixels
                stale = self._entries.pop(old)
                self.bytes -= stale.numel() * stale.element_size()
            if self.bytes + nbytes <= self.max_bytes:
                self._entries[key] = tensor
                self._current[kind, str(path)] = key
                self.bytes += nbytes
        return tensor
