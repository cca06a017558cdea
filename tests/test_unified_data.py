"""Unified multi-class data module and per-category metrics (any anomalib model)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import TYPE_CHECKING

import pytest
import torch
from anomalib.models import Padim
from lightning.pytorch import seed_everything
from sklearn.metrics import roc_auc_score

from anomalib_ext.callbacks import PerCategoryMetrics
from anomalib_ext.data import DatasetError, UnifiedMultiClass
from tests.helpers import fit_and_test

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


def test_category_folders(texture_root: Path, tmp_path: Path) -> None:
    """Root (+categories) and explicit roots are joined; missing folders and duplicate names fail clearly."""
    assert [p.name for p in UnifiedMultiClass.category_folders(texture_root, None, None)] == ["brick", "grass"]
    folders = UnifiedMultiClass.category_folders(texture_root, ["grass"], [texture_root / "brick"])
    assert [p.name for p in folders] == ["grass", "brick"]
    with pytest.raises(ValueError, match="unique"):
        UnifiedMultiClass.category_folders(texture_root, ["brick"], [texture_root / "brick"])
    with pytest.raises(DatasetError, match="train"):
        UnifiedMultiClass.category_folders(tmp_path, ["nothing"], None)
    with pytest.raises(ValueError, match="root"):
        UnifiedMultiClass.category_folders(None, ["brick"], None)


def test_image_level_and_masked_categories_do_not_mix(texture_root: Path, tmp_path: Path) -> None:
    """A category without ground_truth/ beside one with masks fails naming it; image-level ones alone join."""
    image_level = tmp_path / "image_level"
    for split in ("train/good", "test/good", "test/defect"):
        (image_level / split).mkdir(parents=True)
        for source in sorted((texture_root / "brick" / "test" / "good").iterdir())[:2]:
            (image_level / split / source.name).write_bytes(source.read_bytes())
    mixed = UnifiedMultiClass(roots=[texture_root / "brick", image_level], image_size=32)
    with pytest.raises(DatasetError, match="image_level"):
        mixed.setup("fit")
    alone = UnifiedMultiClass(roots=[image_level], image_size=32)
    alone.setup("fit")
    assert alone.test_data.samples.attrs["task"] == "classification"
    assert alone.test_data[len(alone.test_data) - 1].gt_mask is None


def test_one_train_set_without_labels(texture_root: Path) -> None:
    """Train and test sets hold every category; items carry no category (the model never sees it)."""
    datamodule = UnifiedMultiClass(root=texture_root, image_size=32, train_batch_size=4, eval_batch_size=4)
    datamodule.setup("fit")
    train, test = datamodule.train_data.samples, datamodule.test_data.samples
    assert sorted(train.category.unique()) == ["brick", "grass"]
    assert len(train) == 16
    assert (train.label_index == 0).all()
    assert len(test) == 2 * (4 + 3 * 2)
    assert set(datamodule.image_categories.values()) == {"brick", "grass"}
    item = datamodule.train_data[0]
    assert not hasattr(item, "category")
    assert item.image.shape[-2:] == (32, 32)
    batch = next(iter(datamodule.train_dataloader()))
    assert batch.image.shape == (4, 3, 32, 32)


def _batch(paths: list[str], scores: list[float], labels: list[int]) -> SimpleNamespace:
    maps = torch.tensor(scores)[:, None, None, None].expand(-1, 1, 4, 4).clone()
    masks = torch.zeros(len(paths), 4, 4, dtype=torch.bool)
    masks[torch.tensor(labels).bool(), 0, 0] = True
    maps[:, 0, 0, 0] += 1000.0 * torch.tensor(labels)  # defect pixel scores high
    return SimpleNamespace(
        image_path=paths,
        pred_score=torch.tensor(scores),
        gt_label=torch.tensor(labels).bool(),
        anomaly_map=maps,
        gt_mask=masks,
    )


def test_per_category_metrics_match_sklearn() -> None:
    """Rows are grouped by category across batches; raw (unbounded) scores give sklearn's AUROC; mean logged."""
    categories = {f"a{i}": "a" for i in range(6)} | {f"b{i}": "b" for i in range(6)}
    callback = PerCategoryMetrics(image_categories=categories)
    logged: dict[str, float] = {}
    module = SimpleNamespace(log=lambda name, value: logged.__setitem__(name, float(value)))
    callback.on_test_start(SimpleNamespace(datamodule=None), module)
    scores = {"a": [150.0, 170.0, 160.0, 155.0, 180.0, 190.0], "b": [3.0, 1.0, 2.0, 5.0, 4.0, 0.5]}
    labels = {"a": [0, 1, 0, 0, 1, 1], "b": [1, 0, 1, 0, 0, 1]}
    # two mixed batches: a0-a2 + b0-b2, then a3-a5 + b3-b5
    for half in (slice(0, 3), slice(3, 6)):
        paths = [f"a{i}" for i in range(6)][half] + [f"b{i}" for i in range(6)][half]
        batch = _batch(paths, scores["a"][half] + scores["b"][half], labels["a"][half] + labels["b"][half])
        callback.on_test_batch_end(None, module, None, batch, 0)
    callback.on_test_epoch_end(None, module)
    expected = {name: roc_auc_score(labels[name], scores[name]) for name in ("a", "b")}
    for name, value in expected.items():
        assert logged[f"image_AUROC/{name}"] == pytest.approx(value, abs=1e-6)
        assert logged[f"pixel_AUROC/{name}"] == pytest.approx(1.0, abs=1e-6)
    assert logged["image_AUROC/mean"] == pytest.approx(sum(expected.values()) / 2, abs=1e-6)
    assert callback.results()["a"]["image_AUROC"] == pytest.approx(expected["a"], abs=1e-6)


@pytest.mark.slow
def test_per_category_metrics_with_padim(texture_root: Path, tmp_path: Path) -> None:
    """A stock one-class anomalib model on the unified module: per-category metrics appear in engine.test.

    With random ResNet-18 features (seed 0, float32 on the CPU) brick ranks 23 of 24 good/defect
    pairs right on both an AMD EPYC and an Intel Xeon, grass about 17 of 24, close to chance and
    so left unpinned; brick's bound fails if the categories' scores or labels are mixed up.
    """
    seed_everything(0, workers=True)
    datamodule = UnifiedMultiClass(root=texture_root, image_size=64, train_batch_size=8, eval_batch_size=8)
    model = Padim(backbone="resnet18", layers=["layer1"], pre_trained=False, n_features=32, visualizer=False)
    metrics = fit_and_test(model, datamodule, tmp_path, callbacks=[PerCategoryMetrics()])
    for metric in ("image_AUROC", "pixel_AUROC"):
        per_category = [metrics[f"{metric}/{name}"] for name in ("brick", "grass")]
        assert metrics[f"{metric}/mean"] == pytest.approx(sum(per_category) / 2, abs=1e-6)
    assert metrics["image_AUROC/brick"] >= 0.85
    assert 0.0 <= metrics["image_AUROC/grass"] <= 1.0
    assert "image_AUROC" in metrics  # anomalib's overall metrics are still there
