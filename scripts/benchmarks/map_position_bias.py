"""Do normal images score high at fixed places? A diagnosis of where a trained model's false alarms sit.

RD4AD ranks MTD's images below anomalib's PaDiM on the same teacher features. PaDiM scores each position
against that position's own statistics of normal features; RD4AD scores the raw teacher-student distance,
the same at every position. If normal tiles leave a larger distance at some places (the tile's borders, say),
those places decide the image score of normal images and hide real defects elsewhere. This script measures
that on a checkpoint written by ``anomalib-ext benchmark`` (any model whose output has an ``anomaly_map``):

- where the maximum of each normal test image's map lies: the share inside a border band, against the band's
  share of the area;
- image / pixel AUROC of the model's own map (images scored by the map's maximum, which is RD4AD's and
  RSTPM's default image score but not UniAD's), of the map with a border band cut away, and of the map
  standardised per position by the mean and standard deviation of the maps of normal images. Those come
  from half of the ``good`` test images (every other file); all AUROCs are measured on the other half
  and every defective image, so no image is scored against statistics it helped to make.

    python scripts/benchmarks/map_position_bias.py --model RD4AD --checkpoint model.ckpt \
        --data ../shared/datasets/mtd --image-size 128

The standardised map is a diagnosis, not a model option: it is what per-position statistics would buy.
"""

from __future__ import annotations

from pathlib import Path

import torch

from anomalib_ext.benchmark.diagnosis import auroc_cell, checkpoint_parser, load_trained, model_input

BANDS = (4, 8, 16)


def test_maps(model: torch.nn.Module, datamodule: object) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Every test image's anomaly map ``(N, H, W)``, its mask at the same size, and its path."""
    maps, masks, paths = [], [], []
    with torch.no_grad():
        for batch in datamodule.test_dataloader():  # type: ignore[attr-defined]
            anomaly_map = model.model(model_input(model, batch)).anomaly_map.squeeze(1)
            maps.append(anomaly_map)
            size = anomaly_map.shape[-2:]
            masks.append(torch.nn.functional.interpolate(batch.gt_mask.float().unsqueeze(1), size=size).squeeze(1))
            paths.extend(batch.image_path)
    return torch.cat(maps), torch.cat(masks), paths


def border_mask(shape: torch.Size, band: int) -> torch.Tensor:
    """True inside a band of ``band`` pixels along the edges of an ``(H, W)`` map."""
    inside = torch.zeros(shape[-2:], dtype=torch.bool)
    inside[band:-band, band:-band] = True
    return ~inside


def report(maps: torch.Tensor, masks: torch.Tensor, paths: list[str]) -> str:
    """Markdown: where normal images peak, and what a border cut or per-position statistics change."""
    good = torch.tensor([Path(path).parent.name == "good" for path in paths])
    good_index = torch.nonzero(good).flatten()
    reference = torch.zeros_like(good)
    reference[good_index[::2]] = True  # every other normal image makes the statistics ...
    held = ~reference  # ... and is not scored
    labels = (~good[held]).long()
    maps_held, masks_held = maps[held], masks[held]
    width = maps.shape[-1]
    peaks = maps[good & held].flatten(1).argmax(dim=1)
    peak_rows, peak_cols = peaks // width, peaks % width
    lines = ["| band (px) | band's share of the area | share of normal images peaking in it |", "|---|---|---|"]
    for band in BANDS:
        edge = border_mask(maps.shape, band)
        in_band = edge[peak_rows, peak_cols].float().mean()
        lines.append(f"| {band} | {100 * edge.float().mean():.1f}% | {100 * in_band:.1f}% |")
    mean = maps[reference].mean(dim=0)
    std = maps[reference].std(dim=0).clamp_min(1e-6)
    own = auroc_cell(maps_held, labels, masks_held)
    lines += ["", "| map | image / pixel AUROC |", "|---|---|", f"| the model's map | {own} |"]
    for band in BANDS:
        cut = torch.where(border_mask(maps.shape, band), torch.zeros_like(maps_held), maps_held)
        lines.append(f"| border band of {band} px set to 0 | {auroc_cell(cut, labels, masks_held)} |")
    lines.append(f"| minus the per-position normal mean | {auroc_cell(maps_held - mean, labels, masks_held)} |")
    standardised = (maps_held - mean) / std
    lines.append(f"| standardised per position (normal mean, std) | {auroc_cell(standardised, labels, masks_held)} |")
    normal, defective, statistics = int((labels == 0).sum()), int(labels.sum()), int(reference.sum())
    lines.append(f"\n{normal} normal and {defective} defective images scored; {statistics} normal made the statistics.")
    return "\n".join(lines)


def main() -> None:
    """Load the checkpoint, map the test split, print the tables."""
    parser = checkpoint_parser(__doc__)
    model, datamodule = load_trained(parser, parser.parse_args())
    print(report(*test_maps(model, datamodule)))


if __name__ == "__main__":
    main()
