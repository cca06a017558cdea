"""Accuracy on real industrial data: RD4AD with the offline Lite0 teacher on a subset of MTD.

Runs wherever ``../shared/datasets/mtd`` exists (CI has it) and is skipped elsewhere. The subset
is fixed (every k-th file, sorted) and linked, not copied, into a temporary MVTec-style folder.
The floor is below the AUROC measured for this exact configuration (see the constant), so it
catches a broken model, loss or map without being flaky.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from lightning.pytorch import seed_everything

from anomalib_ext import RD4AD
from anomalib_ext.data import MVTecStyle
from tests.conftest import MTD_ROOT, requires_mtd
from tests.helpers import fit_and_test

# Measured on this subset, 128 px, 4 epochs, seed 0, 2-core CPU: image AUROC 0.654, pixel AUROC 0.746.
# Far below the full-data result (docs/benchmarks.md): a few epochs on 120 images is what CI can afford,
# and random scores give 0.5, so these floors still catch a broken teacher, loss or map.
IMAGE_AUROC_FLOOR = 0.60
PIXEL_AUROC_FLOOR = 0.70


def _link_subset(source: Path, target: Path, train: int = 120, good: int = 40, per_defect: int = 12) -> Path:
    def link(files: list[Path], folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        for file in files:
            (folder / file.name).symlink_to(file)

    def every_kth(folder: Path, count: int) -> list[Path]:
        files = sorted(folder.iterdir())
        step = max(1, len(files) // count)
        return files[::step][:count]

    link(every_kth(source / "train" / "good", train), target / "train" / "good")
    link(every_kth(source / "test" / "good", good), target / "test" / "good")
    for defect in sorted(p.name for p in (source / "test").iterdir() if p.name != "good"):
        images = every_kth(source / "test" / defect, per_defect)
        link(images, target / "test" / defect)
        masks = [source / "ground_truth" / defect / f"{image.stem}_mask.png" for image in images]
        link(masks, target / "ground_truth" / defect)
    return target


@requires_mtd
@pytest.mark.slow
@pytest.mark.realdata
def test_rd4ad_lite0_detects_magnetic_tile_defects(tmp_path: Path) -> None:
    seed_everything(0, workers=True)
    root = _link_subset(MTD_ROOT, tmp_path / "mtd_subset")
    datamodule = MVTecStyle(root, image_size=128, train_batch_size=8, eval_batch_size=16)
    model = RD4AD(
        backbone="efficientnet_lite0",
        layers=("blocks.1", "blocks.2", "blocks.4"),
        pre_processor=RD4AD.configure_pre_processor(image_size=(128, 128)),
    )
    metrics = fit_and_test(model, datamodule, tmp_path / "run", max_epochs=4)
    print(f"MTD subset metrics: {metrics}")
    assert metrics["image_AUROC"] >= IMAGE_AUROC_FLOOR
    assert metrics["pixel_AUROC"] >= PIXEL_AUROC_FLOOR
