"""DRAEM-style pseudo-anomalies with the augmentation set RSTPM's paper names (eq. 2).

anomalib's :class:`PerlinAnomalyGenerator` already thresholds Perlin noise into a mask, picks an
anomaly source (an image from a texture folder, or Perlin noise when there is none) and blends
``(1-M)*I + (1-beta)*(M*I) + beta*(M*A)``. Only the source augmentations differ: the paper draws
three of posterize, sharpness, solarize, equalize, brightness, colour and autocontrast (the DRAEM
set), anomalib's list also inverts, rotates and runs AutoAugment.

Anomaly sources (:class:`AnomalySource`): ``"perlin"`` (anomalib's noise source), ``"textures"``
(a folder written once from the photos and textures bundled with scikit-image, see
:func:`write_texture_source`: an offline stand-in for DTD, which the paper uses), or the path of
any local image folder. Nothing here downloads DTD.
"""

from __future__ import annotations

import os
import tempfile
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

from anomalib.data.transforms import MultiRandomChoice
from anomalib.data.utils.generators.perlin import PerlinAnomalyGenerator
from torchvision.io import write_png
from torchvision.transforms import v2

from .natural_images import skimage_photos

if TYPE_CHECKING:
    from collections.abc import Sequence

TEXTURE_DIR_ENV = "ANOMALIB_EXT_TEXTURE_DIR"
# scikit-image's bundled images (no download): the three textures plus varied colour photos.
TEXTURE_NAMES: tuple[str, ...] = (
    "brick",
    "grass",
    "gravel",
    "coffee",
    "rocket",
    "chelsea",
    "astronaut",
    "coins",
    "immunohistochemistry",
    "hubble_deep_field",
)


class AnomalySource(StrEnum):
    """Named anomaly sources; any other value is a folder path."""

    PERLIN = "perlin"
    TEXTURES = "textures"


def paper_augmenters(num_transforms: int = 3) -> MultiRandomChoice:
    """Three distinct picks from the seven augmentations of RSTPM / DRAEM."""
    return MultiRandomChoice(
        transforms=[
            v2.RandomPosterize(bits=4, p=1.0),
            v2.RandomAdjustSharpness(sharpness_factor=2.0, p=1.0),
            v2.RandomSolarize(threshold=0.5, p=1.0),
            v2.RandomEqualize(p=1.0),
            v2.ColorJitter(brightness=(0.8, 1.2)),
            v2.ColorJitter(saturation=(0.5, 1.5)),
            v2.RandomAutocontrast(p=1.0),
        ],
        num_transforms=num_transforms,
        fixed_num_transforms=True,
    )


def default_texture_folder() -> Path:
    """``$ANOMALIB_EXT_TEXTURE_DIR``, else ``~/.cache/anomalib_ext/textures``."""
    return Path(os.environ.get(TEXTURE_DIR_ENV, "~/.cache/anomalib_ext/textures")).expanduser()


def write_texture_source(folder: str | Path | None = None, names: Sequence[str] = TEXTURE_NAMES) -> Path:
    """Write scikit-image's bundled images ``names`` into ``folder`` as ``<name>.png``; return the folder.

    Files already there are kept, and each new file is written under a temporary name and then
    renamed, so concurrent processes (DDP ranks) never read a half-written PNG.
    """
    folder = default_texture_folder() if folder is None else Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    missing = [name for name in names if not (folder / f"{name}.png").is_file()]
    for name, photo in zip(missing, skimage_photos(missing), strict=True):
        handle, temporary = tempfile.mkstemp(suffix=".tmp", dir=folder)
        os.close(handle)
        write_png(photo, temporary)
        Path(temporary).replace(folder / f"{name}.png")
    return folder


def resolve_anomaly_source(source: AnomalySource | str | Path | None) -> Path | None:
    """The texture folder for ``source``: ``None`` for Perlin noise, the written scikit-image folder, or a path.

    The names ``"perlin"`` and ``"textures"`` take precedence over folders of that name (write
    ``./textures`` for one).
    """
    if source is None or (isinstance(source, str) and source == AnomalySource.PERLIN):
        return None
    if isinstance(source, str) and source == AnomalySource.TEXTURES:
        return write_texture_source()
    return Path(source)


def make_pseudo_anomaly_generator(
    anomaly_source: AnomalySource | str | Path | None = AnomalySource.PERLIN,
    probability: float = 0.5,
    blend_factor: float | tuple[float, float] = (0.1, 1.0),
) -> PerlinAnomalyGenerator:
    """Anomalib's Perlin generator with the paper's source augmentations.

    Args:
        anomaly_source: ``"perlin"`` (or ``None``) for anomalib's Perlin-noise source,
            ``"textures"`` for scikit-image's bundled images (:func:`write_texture_source`), or a
            folder of texture images (the paper uses DTD). A given folder must exist and hold images.
        probability: share of images that get an anomaly (the rest teach "normal").
        blend_factor: ``beta`` of eq. 2, fixed or a ``(min, max)`` range sampled per image.
    """
    folder = resolve_anomaly_source(anomaly_source)
    if folder is not None and not folder.is_dir():
        msg = f"anomaly_source {str(folder)!r} is not a folder (nothing is downloaded)."
        raise FileNotFoundError(msg)
    generator = PerlinAnomalyGenerator(folder, probability=probability, blend_factor=blend_factor)
    if folder is not None and not generator.anomaly_source_paths:
        msg = f"anomaly_source {str(folder)!r} holds no images."
        raise FileNotFoundError(msg)
    generator.augmenters = paper_augmenters()
    return generator
