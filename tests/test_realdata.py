"""Accuracy on real industrial data: RD4AD with the offline Lite0 teacher on a subset of MTD.

Runs wherever ``../shared/datasets/mtd`` exists (CI has it) and is skipped elsewhere. The subset
is fixed (every k-th file, sorted) and linked, not copied, into a temporary MVTec-style folder.
The floor is below the AUROC measured for this exact configuration (see the constant), so it
catches a broken model, loss or map without being flaky. It is checked on the raw model outputs:
anomalib's reported AUROC is of post-processed scores clamped to [0, 1] around the threshold, which
ties many scores when the threshold sits at the edge of the score range (0.49 reported against 0.58
raw on this subset).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from lightning.pytorch import seed_everything

from anomalib_ext import RD4AD
from anomalib_ext.callbacks import score_test_set
from anomalib_ext.data import MVTecStyle
from tests.conftest import MTD_ROOT, requires_mtd
from tests.helpers import fit_and_test

if TYPE_CHECKING:
    from pathlib import Path

# Measured on this subset with the TF Lite0 teacher, 128 px, 4 epochs, seed 0, float32 on a 2-core
# Intel CPU, raw outputs: image AUROC 0.576, pixel AUROC 0.628 (the earlier, wrong Lite0 network gave
# 0.654 / 0.746 here; on full MTD at 256 px the two are level, docs/benchmarks.md). Far below full-data
# results: a few epochs on 120 images is what CI can afford. Random scores give 0.5.
IMAGE_AUROC_FLOOR = 0.55
PIXEL_AUROC_FLOOR = 0.60


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
    """RD4AD with the Lite0 teacher, 4 epochs on an MTD subset: raw image and pixel AUROC above the measured floors."""
    seed_everything(0, workers=True)
    root = _link_subset(MTD_ROOT, tmp_path / "mtd_subset")
    datamodule = MVTecStyle(root, image_size=128, train_batch_size=8, eval_batch_size=16)
    model = RD4AD(
        backbone="efficientnet_lite0",
        layers=("blocks.1", "blocks.2", "blocks.4"),
        pre_processor=RD4AD.configure_pre_processor(image_size=(128, 128)),
    )
    metrics = fit_and_test(model, datamodule, tmp_path / "run", max_epochs=4)
    image_auroc, pixel_auroc = score_test_set(model, datamodule.test_dataloader())
    print(f"MTD subset metrics: {metrics}; raw image / pixel AUROC {image_auroc:.4f} / {pixel_auroc:.4f}")
    assert image_auroc >= IMAGE_AUROC_FLOOR
    assert pixel_auroc is not None
    assert pixel_auroc >= PIXEL_AUROC_FLOOR
