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
from PIL import Image
from sklearn.metrics import roc_auc_score

from anomalib_ext.deploy.runtime import ExportedModel


def load_split(root: Path, size: tuple[int, int]) -> tuple[list[np.ndarray], np.ndarray]:
    """Test images as ``(1, 3, H, W)`` arrays in [0, 1] and their masks (all zero for ``good``)."""
    images, masks = [], []
    for path in sorted((root / "test").glob("*/*.png")):
        rgb = Image.open(path).convert("RGB").resize(size[::-1], Image.BILINEAR)
        images.append((np.asarray(rgb, dtype=np.float32) / 255).transpose(2, 0, 1)[None])
        if path.parent.name == "good":
            masks.append(np.zeros(size, dtype=bool))
            continue
        mask_path = root / "ground_truth" / path.parent.name / f"{path.stem}_mask.png"
        if not mask_path.is_file():
            msg = f"No mask for {path}: expected {mask_path}."
            raise SystemExit(msg)
        masks.append(np.asarray(Image.open(mask_path).resize(size[::-1], Image.NEAREST)) > 0)
    if not images:
        msg = f"No test images under {root / 'test'}."
        raise SystemExit(msg)
    return images, np.stack(masks)


def main() -> None:
    """Print one line per export."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="MVTec-layout folder with test/ and ground_truth/")
    parser.add_argument("exports", type=Path, nargs="+", help="OpenVINO model.xml files")
    parser.add_argument("--foreground", type=float, default=0.08, help="grey level above which a pixel is object")
    args = parser.parse_args()
    models = [ExportedModel(path) for path in args.exports]
    size = models[0].input_size or (128, 128)
    images, masks = load_split(args.data, size)
    foreground = np.stack([image[0].mean(0) > args.foreground for image in images])
    print(
        f"{len(images)} test images at {size}, foreground {foreground.mean():.3f} of pixels, "
        f"{foreground[masks].mean():.3f} of defect pixels",
    )
    for path, model in zip(args.exports, models, strict=True):
        maps = np.stack([model(image)["anomaly_map"].reshape(size) for image in images])
        peaks = maps.reshape(len(maps), -1).argmax(1)
        on_background = ~foreground.reshape(len(maps), -1)[np.arange(len(maps)), peaks]
        print(
            f"{path}: pixel AUROC {roc_auc_score(masks.ravel(), maps.ravel()):.3f}, "
            f"on foreground only {roc_auc_score(masks[foreground], maps[foreground]):.3f}, "
            f"map peaks on the background in {on_background.mean():.2f} of images",
        )


if __name__ == "__main__":
    main()
