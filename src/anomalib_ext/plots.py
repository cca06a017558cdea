"""Figures for ``docs/benchmarks.md``: a heat-map grid per model on the same test images, and accuracy vs latency."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from anomalib_ext.deploy.heatmap import colour_map

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from types import ModuleType

    from matplotlib.figure import Figure


def heatmap_grid(
    images: np.ndarray,
    masks: np.ndarray | None,
    maps: Mapping[str, np.ndarray],
    target: Path,
    title: str = "",
) -> Path:
    """One row per test image: the image, its ground-truth mask, then each model's anomaly map.

    Args:
        images: ``(N, 3, H, W)`` in ``[0, 1]``.
        masks: ``(N, H, W)`` ground truth, or ``None``.
        maps: model name -> ``(N, H, W)`` anomaly maps of the same images; each map is shown
            min-max scaled over that model's N maps, so models with different score ranges compare.
            The colouring is :func:`anomalib_ext.deploy.heatmap.colour_map`, the one the demo and
            ``predict-folder`` use, applied to the model's N maps at once.
        target: PNG to write.
        title: figure title above the grid; none when empty.
    """
    plt = _pyplot()
    if images.ndim != 4 or images.shape[1] != 3:
        msg = f"images must be (N, 3, H, W); got {images.shape}"
        raise ValueError(msg)
    for name, values in maps.items():
        if values.shape[0] != images.shape[0]:
            msg = f"{name}: {values.shape[0]} maps for {images.shape[0]} images"
            raise ValueError(msg)
    columns = ["image", *(["ground truth"] if masks is not None else []), *maps]
    rows = images.shape[0]
    figure, axes = plt.subplots(rows, len(columns), figsize=(1.8 * len(columns), 1.8 * rows), squeeze=False)
    coloured = {name: colour_map(np.asarray(values, dtype=np.float64)) for name, values in maps.items()}
    for row in range(rows):
        panels: list[Any] = [images[row].transpose(1, 2, 0)]
        if masks is not None:
            panels.append(masks[row])
        panels.extend(coloured[name][row] for name in maps)
        for column, panel in enumerate(panels):
            axis = axes[row, column]
            axis.imshow(panel, cmap="gray" if columns[column] == "ground truth" else None)
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title(columns[column], fontsize=8)
    if title:
        figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    return _save(figure, target)


def accuracy_vs_latency(records: Sequence[Mapping[str, Any]], target: Path, title: str = "") -> Path:
    """Scatter of image AUROC against batch-1 latency, one labelled point per benchmark record.

    Each record needs ``model``, ``image AUROC`` (0-1) and ``torch_ms``; ``openvino_ms`` adds a
    second marker for the OpenVINO CPU latency of the same model.
    """
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 4))
    for record in records:
        auroc = 100 * float(record["image AUROC"])
        axis.scatter(record["torch_ms"], auroc, marker="o", color="tab:blue")
        axis.annotate(
            str(record["model"]),
            (record["torch_ms"], auroc),
            fontsize=8,
            xytext=(4, 4),
            textcoords="offset points",
        )
        if record.get("openvino_ms") is not None:
            axis.scatter(record["openvino_ms"], auroc, marker="s", color="tab:orange")
    axis.scatter([], [], marker="o", color="tab:blue", label="torch")
    axis.scatter([], [], marker="s", color="tab:orange", label="OpenVINO CPU")
    axis.set_xscale("log")
    axis.set_xlabel("latency, batch 1 (ms, log scale)")
    axis.set_ylabel("image AUROC (%)")
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3)
    if title:
        axis.set_title(title, fontsize=9)
    figure.tight_layout()
    return _save(figure, target)


def _pyplot() -> ModuleType:
    """Matplotlib's pyplot on the file-only Agg backend (no display on servers and CI)."""
    import matplotlib as mpl

    mpl.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure: Figure, target: Path) -> Path:
    plt = _pyplot()
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(target, dpi=110)
    plt.close(figure)
    return target
