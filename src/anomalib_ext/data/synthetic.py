"""A small, real-texture anomaly dataset built offline and deterministically.

scikit-image ships photographs of real textures (``brick``, ``grass``, ``gravel``). Random crops
of one photo are the normal images; test defects are drawn on other crops with a pixel mask:

- ``scratch``: a thin bright or dark polyline,
- ``contamination``: an elliptical patch of another texture pasted in,
- ``stain``: a smooth blotch that shifts brightness.

The result is written in the MVTec AD layout, so :class:`~anomalib_ext.data.MVTecStyle` (or any
MVTec-style tool) reads it. The same ``seed`` always gives the same files.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from skimage import data as skdata

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

TEXTURES: dict[str, Callable[[], np.ndarray]] = {
    "brick": skdata.brick,
    "grass": skdata.grass,
    "gravel": skdata.gravel,
}
DEFECTS = ("scratch", "contamination", "stain")


def _crop(texture: np.ndarray, size: int, rng: np.random.Generator) -> Image.Image:
    """A random crop of 1-1.5x ``size`` pixels, resized to ``size``, randomly flipped."""
    height, width = texture.shape
    crop = int(size * rng.uniform(1.0, 1.5))
    crop = min(crop, height, width)
    top = int(rng.integers(0, height - crop + 1))
    left = int(rng.integers(0, width - crop + 1))
    patch = texture[top : top + crop, left : left + crop]
    if rng.random() < 0.5:
        patch = patch[:, ::-1]
    return Image.fromarray(np.ascontiguousarray(patch)).resize((size, size), Image.Resampling.BILINEAR)


def _ellipse_mask(size: int, rng: np.random.Generator, scale: tuple[float, float]) -> Image.Image:
    mask = Image.new("L", (size, size), 0)
    radius_x, radius_y = (rng.uniform(*scale) * size for _ in range(2))
    cx, cy = rng.uniform(0.25, 0.75, size=2) * size
    ImageDraw.Draw(mask).ellipse((cx - radius_x, cy - radius_y, cx + radius_x, cy + radius_y), fill=255)
    return mask


def _draw_defect(
    image: Image.Image,
    kind: str,
    other: Image.Image,
    rng: np.random.Generator,
) -> tuple[Image.Image, Image.Image]:
    size = image.size[0]
    if kind == "scratch":
        mask = Image.new("L", (size, size), 0)
        points = [tuple(rng.uniform(0.15, 0.85, size=2) * size) for _ in range(3)]
        width = max(2, size // 40)
        ImageDraw.Draw(mask).line(points, fill=255, width=width, joint="curve")
        value = 255 if np.asarray(image).mean() < 128 else 0
        defect = Image.composite(Image.new("L", image.size, value), image, mask)
    elif kind == "contamination":
        mask = _ellipse_mask(size, rng, (0.08, 0.16))
        defect = Image.composite(other, image, mask)
    elif kind == "stain":
        mask = _ellipse_mask(size, rng, (0.1, 0.2))
        soft = mask.filter(ImageFilter.GaussianBlur(size / 60))
        shift = float(rng.choice([-1, 1])) * rng.uniform(60, 90)
        shifted = np.clip(np.asarray(image, dtype=np.float32) + shift, 0, 255).astype(np.uint8)
        defect = Image.composite(Image.fromarray(shifted), image, soft)
        mask = soft.point(lambda value: 255 if value > 96 else 0)
    else:
        msg = f"Unknown defect kind {kind!r}; choose from {DEFECTS}."
        raise ValueError(msg)
    return defect, mask


def make_texture_dataset(
    root: str | Path,
    categories: Sequence[str] = tuple(TEXTURES),
    image_size: int = 256,
    n_train: int = 60,
    n_test_good: int = 20,
    n_test_per_defect: int = 8,
    seed: int = 0,
) -> Path:
    """Write one MVTec-style folder per texture under ``root`` and return ``root``.

    Existing folders with a complete ``.done`` marker for the same parameters are reused. A category's
    images depend on its place in ``categories`` (its random stream is ``seed + index``), so
    ``["grass"]`` and ``["brick", "grass"]`` give different grass folders.
    """
    root = Path(root)
    for index, category in enumerate(categories):
        if category not in TEXTURES:
            msg = f"Unknown texture {category!r}; available: {sorted(TEXTURES)}."
            raise ValueError(msg)
        folder = root / category
        marker = folder / ".done"
        # a category's random stream depends on its place in ``categories``: the marker records the stream
        # used, so a folder built by another call (another place) is rebuilt, not reused with other images
        signature = f"{image_size} {n_train} {n_test_good} {n_test_per_defect} {seed + index}"
        if marker.is_file() and marker.read_text() == signature:
            continue
        rng = np.random.default_rng(seed + index)
        texture = TEXTURES[category]()
        others = [TEXTURES[name]() for name in TEXTURES if name != category]
        for split, count in (("train", n_train), ("test", n_test_good)):
            target = folder / split / "good"
            target.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                _crop(texture, image_size, rng).save(target / f"{i:03d}.png")
        for kind in DEFECTS:
            images = folder / "test" / kind
            masks = folder / "ground_truth" / kind
            images.mkdir(parents=True, exist_ok=True)
            masks.mkdir(parents=True, exist_ok=True)
            for i in range(n_test_per_defect):
                other = _crop(others[int(rng.integers(len(others)))], image_size, rng)
                defect, mask = _draw_defect(_crop(texture, image_size, rng), kind, other, rng)
                defect.save(images / f"{i:03d}.png")
                mask.save(masks / f"{i:03d}_mask.png")
        marker.write_text(signature)
    return root
