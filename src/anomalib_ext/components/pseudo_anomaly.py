"""DRAEM-style pseudo-anomalies with the augmentation set RSTPM's paper names (eq. 2).

anomalib's :class:`PerlinAnomalyGenerator` already thresholds Perlin noise into a mask, picks an
anomaly source (an image from a texture folder, or Perlin noise when there is none) and blends
``(1-M)*I + (1-beta)*(M*I) + beta*(M*A)``. Only the source augmentations differ: the paper draws
three of posterize, sharpness, solarize, equalize, brightness, colour and autocontrast (the DRAEM
set), anomalib's list also inverts, rotates and runs AutoAugment. Nothing here downloads DTD.
"""

from __future__ import annotations

from pathlib import Path

from anomalib.data.transforms import MultiRandomChoice
from anomalib.data.utils.generators.perlin import PerlinAnomalyGenerator
from torchvision.transforms import v2


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


def make_pseudo_anomaly_generator(
    anomaly_source_path: str | Path | None = None,
    probability: float = 0.5,
    blend_factor: float | tuple[float, float] = (0.1, 1.0),
) -> PerlinAnomalyGenerator:
    """anomalib's Perlin generator with the paper's source augmentations.

    Args:
        anomaly_source_path: folder of texture images (the paper uses DTD); ``None`` falls back
            to anomalib's Perlin-noise source. A given folder must exist and hold images.
        probability: share of images that get an anomaly (the rest teach "normal").
        blend_factor: ``beta`` of eq. 2, fixed or a ``(min, max)`` range sampled per image.
    """
    if anomaly_source_path is not None and not Path(anomaly_source_path).is_dir():
        msg = f"anomaly_source_path {str(anomaly_source_path)!r} is not a folder (nothing is downloaded)."
        raise FileNotFoundError(msg)
    generator = PerlinAnomalyGenerator(anomaly_source_path, probability=probability, blend_factor=blend_factor)
    if anomaly_source_path is not None and not generator.anomaly_source_paths:
        msg = f"anomaly_source_path {str(anomaly_source_path)!r} holds no images."
        raise FileNotFoundError(msg)
    generator.augmenters = paper_augmenters()
    return generator
