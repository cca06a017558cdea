"""Where exported models put their anomaly maps' mass on an MVTec-layout test split.

For each OpenVINO export (``model.xml`` from ``anomalib-ext benchmark``'s work folder): pixel AUROC over
all test pixels, pixel AUROC on foreground pixels only (a pixel is foreground when its grey level,
in [0, 1], is above ``--foreground``: meant for objects on a dark background, such as MVTec 3D-AD
tire), and the share of test images whose map peaks on the background. A check for rows that look
broken (PaDiM's 49.3 pixel AUROC on tire in docs/benchmarks.md), not a benchmark::

    python scripts/benchmarks/where_maps_peak.py datasets/tire WORK/Padim/export/weights/openvino/model.xml ...
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from anomalib_ext.data import MVTecStyle
from anomalib_ext.deploy.runtime import ExportedModel


def main() -> None:
    """Print one line per export."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="MVTec-layout folder with test/ and ground_truth/")
    parser.add_argument("exports", type=Path, nargs="+", help="OpenVINO model.xml files")
    parser.add_argument("--foreground", type=float, default=0.08, help="grey level above which a pixel is object")
    args = parser.parse_args()
    models = [ExportedModel(path) for path in args.exports]
    # the benchmark's own loader and resize, so the maps are those its rows scored
    datamodule = MVTecStyle(args.data, image_size=models[0].input_size, eval_batch_size=16, num_workers=0)
    datamodule.setup()
    batches = list(datamodule.test_dataloader())
    if any(batch.gt_mask is None for batch in batches):
        msg = f"{args.data} has test images without masks: pixel metrics need ground_truth/."
        raise SystemExit(msg)
    masks = np.concatenate([batch.gt_mask.numpy().astype(bool) for batch in batches])
    foreground = np.concatenate([batch.image.numpy().mean(1) > args.foreground for batch in batches])
    print(
        f"{len(masks)} test images at {masks.shape[1:]}, foreground {foreground.mean():.3f} of pixels, "
        f"{foreground[masks].mean():.3f} of defect pixels",
    )
    for path, model in zip(args.exports, models, strict=True):
        maps = np.concatenate([
            model(batch.image.numpy())["anomaly_map"].reshape(batch.gt_mask.shape) for batch in batches
        ])
        peaks = maps.reshape(len(maps), -1).argmax(1)
        on_background = ~foreground.reshape(len(maps), -1)[np.arange(len(maps)), peaks]
        print(
            f"{path}: pixel AUROC {roc_auc_score(masks.ravel(), maps.ravel()):.3f}, "
            f"on foreground only {roc_auc_score(masks[foreground], maps[foreground]):.3f}, "
            f"map peaks on the background in {on_background.mean():.2f} of images",
        )


if __name__ == "__main__":
    main()
