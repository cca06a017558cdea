"""The raw-output test AUROC behind the training curves ranks any score scale correctly."""

from __future__ import annotations

from types import SimpleNamespace
from typing import TYPE_CHECKING

import torch
from anomalib.data import InferenceBatch
from torch import nn

from anomalib_ext.callbacks import score_test_set

if TYPE_CHECKING:
    from pathlib import Path

    from anomalib_ext.data import MVTecStyle


class FixedScores(nn.Module):
    """A stand-in model whose scores and maps are far above 1, like UniAD's reconstruction errors."""

    def forward(self, images: torch.Tensor) -> InferenceBatch:  # noqa: PLR6301  nn.Module.forward is an instance method
        """Score each image by its mean plus 100; the map is the image's first channel plus 100."""
        return InferenceBatch(pred_score=images.mean(dim=(1, 2, 3)) + 100, anomaly_map=images[:, :1] + 100)


def test_scores_far_above_one_are_ranked_not_squashed() -> None:
    """Such scores would be read as logits by torchmetrics, whose sigmoid ties them all at 1.0 (AUROC 0.5)."""
    images = torch.stack([torch.full((3, 4, 4), value) for value in (0.1, 0.2, 0.8, 0.9)])
    masks = (images[:, 0] > 0.5).int()
    batch = SimpleNamespace(image=images, gt_label=torch.tensor([0, 0, 1, 1]), gt_mask=masks)
    module = nn.Module()
    module.model = FixedScores()
    module.pre_processor = None
    module.device = torch.device("cpu")  # type: ignore[assignment]
    image_auroc, pixel_auroc = score_test_set(module, [batch])  # type: ignore[arg-type]
    assert image_auroc == 1.0
    assert pixel_auroc == 1.0


def test_memory_bank_models_have_no_curve(tiny_datamodule: MVTecStyle, tmp_path: Path) -> None:
    """PaDiM fits its Gaussians only when validation starts: scoring at the epoch's end must not run."""
    from anomalib.models import Padim

    from anomalib_ext.callbacks import TestCurve
    from tests.helpers import make_engine

    tiny_datamodule.setup()
    curve = TestCurve(tiny_datamodule.test_dataloader(), every=1)
    model = Padim(backbone="resnet18", layers=["layer1"], pre_trained=False, n_features=32, visualizer=False)
    make_engine(tmp_path, max_epochs=1, callbacks=[curve]).fit(model, datamodule=tiny_datamodule)
    assert curve.points == []


def test_curve_records_each_points_train_loss(tiny_datamodule: MVTecStyle, tmp_path: Path) -> None:
    """The curve carries the epoch's mean train loss beside each AUROC point, so a row shows whether it flattened."""
    from anomalib_ext import RD4AD
    from anomalib_ext.benchmark import curve_text
    from anomalib_ext.callbacks import TestCurve
    from tests.helpers import make_engine

    tiny_datamodule.setup()
    curve = TestCurve(tiny_datamodule.test_dataloader(), every=1)
    model = RD4AD(
        backbone="efficientnet_lite0",
        layers=("blocks.1", "blocks.2", "blocks.4"),
        pre_processor=RD4AD.configure_pre_processor(image_size=(64, 64)),
        visualizer=False,
    )
    engine = make_engine(tmp_path, max_epochs=2, callbacks=[curve])
    engine.fit(model, datamodule=tiny_datamodule)
    assert [point[0] for point in curve.points] == [1, 2]
    assert set(curve.losses) == {1, 2}
    assert curve.losses[2] == float(engine.trainer.callback_metrics["train_loss_epoch"])
    assert all(loss > 0 for loss in curve.losses.values())
    assert f"(loss {curve.losses[2]:.4g})" in curve_text(curve.points, curve.losses).split(", ")[-1]


def test_curve_text_without_losses_keeps_the_auroc_only_form() -> None:
    """Rows written before losses were recorded, and models that log none, read as before."""
    from anomalib_ext.benchmark import curve_text

    points = [(2, 0.713, 0.55), (4, 0.8, None)]
    assert curve_text(points) == "2: 71.3 / 55.0, 4: 80.0"
    assert curve_text(points, {4: 0.12345}) == "2: 71.3 / 55.0, 4: 80.0 (loss 0.1235)"


def test_unified_curve_scores_each_category_on_its_own() -> None:
    """Two categories each perfectly ranked but on different scales: their mean AUROC is 1, pooling would not be.

    UniAD's unified protocol never ranks one category's scores against another's; pooled, the second
    category's normal images (scores 10, 11) outrank the first's defects (0.8, 0.9).
    """
    values = (0.1, 0.2, 0.8, 0.9, 10.0, 11.0, 18.0, 19.0)
    images = torch.stack([torch.full((3, 4, 4), value) for value in values])
    labels = torch.tensor([0, 0, 1, 1, 0, 0, 1, 1])
    masks = labels[:, None, None].expand(-1, 4, 4).int()
    paths = [f"{name}/{i}.png" for name in ("a", "b") for i in range(4)]
    batch = SimpleNamespace(image=images, gt_label=labels, gt_mask=masks, image_path=paths)
    module = nn.Module()
    module.model = FixedScores()
    module.pre_processor = None
    module.device = torch.device("cpu")  # type: ignore[assignment]
    categories = {path: path.split("/")[0] for path in paths}
    pooled_image, pooled_pixel = score_test_set(module, [batch])  # type: ignore[arg-type]
    image_auroc, pixel_auroc = score_test_set(module, [batch], image_categories=categories)  # type: ignore[arg-type]
    assert (image_auroc, pixel_auroc) == (1.0, 1.0)
    assert pooled_image < 1.0
    assert pooled_pixel < 1.0
