"""Anomaly maps as pictures: one jet colouring and one overlay, shared by predict-folder, the demo and plots."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from pathlib import Path


def min_max(values: np.ndarray) -> np.ndarray:
    """Scale to ``[0, 1]`` per array (a flat map becomes all zeros, not NaN)."""
    lo, hi = float(values.min()), float(values.max())
    return (values - lo) / (hi - lo + 1e-12)


def colour_map(anomaly_map: np.ndarray) -> np.ndarray:
    """An ``(H, W)`` map as a jet-coloured ``(H, W, 3)`` uint8 image, scaled to its own range.

    Any shape works: ``(N, H, W)`` maps come back as ``(N, H, W, 3)``, scaled over all ``N`` together
    (how :func:`anomalib_ext.plots.heatmap_grid` puts one model's maps on one scale).
    """
    from matplotlib import colormaps

    return (colormaps["jet"](min_max(anomaly_map))[..., :3] * 255).astype(np.uint8)


def overlay(image: np.ndarray, anomaly_map: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Blend the jet-coloured map over an ``(H, W, 3)`` uint8 image of the same size."""
    return ((1 - alpha) * image + alpha * colour_map(anomaly_map)).clip(0, 255).astype(np.uint8)


def save_overlay(image: np.ndarray, anomaly_map: np.ndarray, target: Path) -> Path:
    """Write :func:`overlay` as a PNG."""
    from PIL import Image

    Image.fromarray(overlay(image, anomaly_map)).save(target)
    return target
