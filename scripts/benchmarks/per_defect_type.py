"""Where a trained model's accuracy comes from: image / pixel AUROC per defect type, and per layer for RD4AD.

Scores the test split of an MVTec-layout folder with a checkpoint written by ``anomalib-ext benchmark``
(or ``anomalib train``), and prints a Markdown table: one row per defect type (its images against all
``good`` ones), plus, for RD4AD, the same with each teacher layer's map alone and with the mean of
the map as the image score instead of its max. A diagnosis tool for a row that falls short (RD4AD on
MTD): it says which defects are missed and which layer sees them.

    python scripts/benchmarks/per_defect_type.py --model RD4AD --checkpoint model.ckpt \
        --data ../shared/datasets/mtd --image-size 256
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from anomalib_ext.benchmark.diagnosis import checkpoint_parser, load_trained, model_input
from anomalib_ext.callbacks.progress import auroc_any_scale
from anomalib_ext.models.rd4ad import RD4ADModel

if TYPE_CHECKING:
    from lightning.pytorch import LightningDataModule

Scores = dict[str, dict[str, list[torch.Tensor]]]


def score_test_split(model: torch.nn.Module, datamodule: LightningDataModule) -> Scores:
    """Per test image: its defect type, and for every map variant the image score and the map with its mask."""
    from anomalib_ext.models.rd4ad.anomaly_map import layer_distance_maps

    torch_model = model.model
    results: Scores = defaultdict(lambda: defaultdict(list))
    with torch.no_grad():
        for batch in datamodule.test_dataloader():
            images = model_input(model, batch)
            size = (images.shape[-2], images.shape[-1])
            maps = {"fused (max)": torch_model(images).anomaly_map}
            if isinstance(torch_model, RD4ADModel):  # each teacher layer's map alone, smoothed as the fused one
                teacher, student = torch_model.features(images)
                for index, distance in enumerate(layer_distance_maps(teacher, student, size)):
                    maps[f"layer {index + 1} (max)"] = torch_model.anomaly_map_generator.blur(distance)
            masks = torch.nn.functional.interpolate(batch.gt_mask.float().unsqueeze(1), size=size, mode="nearest")
            for path, mask, *variant_maps in zip(batch.image_path, masks, *maps.values(), strict=True):
                defect = Path(path).parent.name
                for name, anomaly_map in zip(maps, variant_maps, strict=True):
                    results[defect][name].append(anomaly_map.flatten().max())
                    results[defect][f"{name}_map"].append(anomaly_map.flatten()[::16])
                    if name == "fused (max)":
                        results[defect]["fused (mean)"].append(anomaly_map.flatten().mean())
                results[defect]["mask"].append(mask.flatten()[::16])
    return results


def percent_auroc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """AUROC in percent, with the scores brought to [0, 1] first as the test curve does (no sigmoid ties)."""
    return 100 * auroc_any_scale(scores, labels.long())


def auroc_table(results: Scores) -> str:
    """Markdown: image and pixel AUROC of each defect type's images together with the ``good`` ones, per variant."""
    variants = [name for name in results["good"] if not name.endswith("_map") and name != "mask"]
    lines = [
        "| defect type | images | " + " | ".join(f"{name} image / pixel" for name in variants) + " |",
        "|---|---|" + "---|" * len(variants),
    ]
    for defect in sorted(name for name in results if name != "good"):
        cells = []
        for name in variants:
            scores = torch.stack(results["good"][name] + results[defect][name])
            labels = torch.cat([torch.zeros(len(results["good"][name])), torch.ones(len(results[defect][name]))])
            image = percent_auroc(scores, labels)
            pixel = ""
            if f"{name}_map" in results[defect]:
                pixels = torch.cat(results["good"][f"{name}_map"] + results[defect][f"{name}_map"])
                masks = torch.cat(results["good"]["mask"] + results[defect]["mask"]).long()
                pixel = f" / {percent_auroc(pixels, masks):.1f}"
            cells.append(f"{image:.1f}{pixel}")
        lines.append(f"| {defect} | {len(results[defect]['mask'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    """Load the checkpoint, score the test split, print the table."""
    parser = checkpoint_parser(__doc__)
    model, datamodule = load_trained(parser, parser.parse_args())
    print(auroc_table(score_test_split(model, datamodule)))


if __name__ == "__main__":
    main()
