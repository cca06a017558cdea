"""How rows are written: Markdown tables under a section, training curves, heat-map and speed figures."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    from anomalib.data import AnomalibDataModule
    from anomalib.models import AnomalibModule

COLUMNS = (
    "model",
    "dataset",
    "backbone",
    "size",
    "epochs",
    "image AUROC",
    "pixel AUROC",
    "AUPRO",
    "train time",
    "torch latency",
    "OpenVINO CPU latency",
    "curve (epoch: image / pixel AUROC)",
    "hardware",
    "date",
)


DEPLOY_COLUMNS = (
    "model",
    "dataset",
    "IR",
    "inference precision",
    "image AUROC",
    "pixel AUROC",
    "batch-1 latency",
    "hardware",
)


def curve_text(points: list[tuple[int, float, float | None]], losses: dict[int, float] | None = None) -> str:
    """``2: 71.3 / 55.0 (loss 0.41), 4: ...``: the test AUROC, and the epoch's train loss if known, at each point."""
    losses = losses or {}
    return ", ".join(
        f"{epoch}: {100 * image:.1f}"
        + (f" / {100 * pixel:.1f}" if pixel is not None else "")
        + (f" (loss {losses[epoch]:.4g})" if epoch in losses else "")
        for epoch, image, pixel in points
    )


def variant_label(variant: dict[str, Any]) -> str:
    """``key=value, ...``: the attributes a variant row changed, as shown after the model name."""
    return ", ".join(f"{key}={value}" for key, value in variant.items())


def format_cell(value: object) -> str:
    """Metrics as percentages with one decimal, a metric the data cannot give (no masks) as n/a, else text."""
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{100 * value:.1f}"
    return str(value)


def append_row(path: Path, section: str, row: dict[str, Any], columns: Sequence[str] = COLUMNS) -> None:
    """Append ``row`` to the table under ``## section`` in ``path``, creating either if missing.

    The row goes to the end of the section's last table with these columns, so tables of other columns written
    below it (a diagnosis's output quoted in the section) keep their own rows.
    """
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    header = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
    line = "| " + " | ".join(format_cell(row.get(column, "")) for column in columns) + " |\n"
    title = f"## {section}\n"
    if title not in text:
        text = text.rstrip("\n") + f"\n\n{title}\n{header}{line}"
    else:
        start = text.index(title) + len(title)
        next_section = text.find("\n## ", start)
        end = len(text) if next_section == -1 else next_section + 1
        body = text[start:end]
        if header not in body:
            body = body.rstrip("\n") + f"\n\n{header}"
        if not body.endswith("\n"):  # a file whose last row lacks its newline
            body += "\n"
        table_end = body.rfind(header) + len(header)
        while body.startswith("|", table_end):
            table_end = body.index("\n", table_end) + 1
        body = body[:table_end] + line + body[table_end:]
        text = text[:start] + body + text[end:]
    path.write_text(text, encoding="utf-8")


def grid_maps(model: AnomalibModule, datamodule: AnomalibDataModule, count: int) -> dict[str, Any]:
    """The model's anomaly maps on ``count`` test images spread over the (sorted, fixed) test set."""
    import numpy as np

    dataset = datamodule.test_data
    indices = np.linspace(0, len(dataset) - 1, min(count, len(dataset))).round().astype(int).tolist()
    batch = dataset.collate_fn([dataset[i] for i in indices])
    model = model.cpu().eval()
    with torch.no_grad():
        maps = model(batch.image).anomaly_map
    masks = batch.gt_mask.float().numpy() if batch.gt_mask is not None else None
    return {"images": batch.image.numpy(), "masks": masks, "maps": maps.reshape(len(indices), *maps.shape[-2:]).numpy()}


def write_plots(rows: list[dict[str, Any]], folder: Path, title: str) -> list[Path]:
    """``heatmaps.png`` (every model on the same test images) and ``accuracy_vs_latency.png``."""
    from anomalib_ext.plots import accuracy_vs_latency, heatmap_grid

    written = [accuracy_vs_latency(rows, folder / "accuracy_vs_latency.png", title)]
    grids = [row for row in rows if "_grid" in row]
    if grids:
        first = grids[0]["_grid"]
        maps = {row["model"]: row["_grid"]["maps"] for row in grids}
        written.append(heatmap_grid(first["images"], first["masks"], maps, folder / "heatmaps.png", title))
    return written
