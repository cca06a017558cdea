"""Checkpoints load with each model's own ``load_from_checkpoint`` whichever evaluator wrote them.

The benchmark builds models with :func:`default_evaluator` (AUPRO included). anomalib's AUPRO keeps
``fpr_limit`` as a persistent buffer, so such checkpoints used to fail a strict load into a model
whose class default evaluator had no AUPRO ("Unexpected key(s) in state_dict:
evaluator.test_metrics.4.fpr_limit"). Checkpoints are written with Lightning's own
``Trainer.save_checkpoint`` (what the Engine's checkpoint callback calls), without training.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
import torch
from anomalib.metrics import Evaluator
from lightning.pytorch import Trainer

from anomalib_ext import RD4AD, RSTPM, EfficientADOffline, UniAD
from anomalib_ext.benchmark import build_model
from anomalib_ext.components.evaluation import StatelessEvaluator, default_evaluator, default_test_metrics

if TYPE_CHECKING:
    from pathlib import Path

    from anomalib.models.components import AnomalibModule

LITE0 = ("blocks.1", "blocks.2", "blocks.4")
# Tiny, offline constructions (random backbones: nothing is read from disk).
TINY: dict[type[AnomalibModule], dict[str, Any]] = {
    RD4AD: {"backbone": "efficientnet_lite0", "layers": LITE0, "pre_trained": False},
    RSTPM: {
        "teacher1": "efficientnet_lite0",
        "teacher2": "efficientnet_lite0",
        "layers1": (*LITE0, "blocks.6"),
        "layers2": LITE0,
        "pre_trained": False,
        "discriminator_width": 8,
    },
    UniAD: {
        "backbone": "efficientnet_lite0",
        "pre_trained": False,
        "input_size": (64, 64),
        "hidden_dim": 32,
        "num_encoder_layers": 1,
        "num_decoder_layers": 1,
        "num_heads": 4,
        "dim_feedforward": 64,
        "neighbor_size": (3, 3),
        "pool_size": 4,
    },
    EfficientADOffline: {"image_size": 128},
}
IMAGE_SIZE = {EfficientADOffline: 128}
CLASSES = [pytest.param(model_cls, id=model_cls.__name__) for model_cls in TINY]


def pre_fix_benchmark_evaluator() -> Evaluator:
    """The benchmark's evaluator as it was: anomalib's ``Evaluator`` with a (persistent-buffer) AUPRO."""
    return Evaluator(test_metrics=default_test_metrics())


def benchmark_model(model_cls: type[AnomalibModule], **overrides) -> AnomalibModule:
    """The model as ``anomalib-ext benchmark`` builds it (its ``build_model``), tiny."""
    extra = {**TINY[model_cls], "visualizer": False, **overrides}
    return build_model(model_cls, None, None, IMAGE_SIZE.get(model_cls, 64), extra)


def save_checkpoint(model: AnomalibModule, path: Path) -> Path:
    """Write ``model`` with Lightning's checkpoint writer (hyper-parameters, state dict, anomalib hooks)."""
    trainer = Trainer(logger=False, enable_checkpointing=False, accelerator="cpu", devices=1, enable_progress_bar=False)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(path)
    return path


def assert_same_weights(restored: AnomalibModule, original: AnomalibModule) -> None:
    """The restored model has the original's tensors, thresholds included; the evaluator's are not checkpointed."""
    expected = {k: v for k, v in original.state_dict().items() if not k.startswith("evaluator.")}
    actual = {k: v for k, v in restored.state_dict().items() if not k.startswith("evaluator.")}
    assert actual.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(actual[key], value, equal_nan=True, msg=key)  # thresholds start as NaN


@pytest.mark.parametrize("model_cls", CLASSES)
def test_benchmark_checkpoint_loads_with_the_class_load_from_checkpoint(
    model_cls: type[AnomalibModule],
    tmp_path: Path,
) -> None:
    """A model built with the benchmark's evaluator (AUPRO) loads with ``Model.load_from_checkpoint(path)``."""
    model = benchmark_model(model_cls)
    assert isinstance(model.evaluator, StatelessEvaluator)
    assert not any(key.startswith("evaluator.") for key in model.state_dict())
    path = save_checkpoint(model, tmp_path / "model.ckpt")
    restored = model_cls.load_from_checkpoint(path)
    assert type(restored) is model_cls
    assert_same_weights(restored, model)


@pytest.mark.parametrize("model_cls", CLASSES)
def test_checkpoint_from_the_pre_fix_benchmark_loads(model_cls: type[AnomalibModule], tmp_path: Path) -> None:
    """Checkpoints written before the fix (``evaluator.test_metrics.4.fpr_limit`` persisted) load too."""
    model = benchmark_model(model_cls, evaluator=pre_fix_benchmark_evaluator())
    assert "evaluator.test_metrics.4.fpr_limit" in model.state_dict()  # the key that broke loading
    path = save_checkpoint(model, tmp_path / "legacy.ckpt")
    restored = model_cls.load_from_checkpoint(path)
    assert_same_weights(restored, model)


@pytest.mark.parametrize("model_cls", CLASSES)
def test_every_model_reports_aupro_by_default(model_cls: type[AnomalibModule]) -> None:
    """One evaluator for every entry point: each class's default is the benchmark's (AUPRO included)."""
    evaluator = model_cls.configure_evaluator()
    assert isinstance(evaluator, StatelessEvaluator)
    assert [metric.name for metric in evaluator.test_metrics] == [
        metric.name for metric in default_evaluator().test_metrics
    ]


def test_stateless_evaluator_drops_only_evaluator_entries() -> None:
    """Foreign evaluator entries are ignored on load; any other unexpected key still fails a strict load."""
    evaluator = default_evaluator()
    assert evaluator.state_dict() == {}
    assert float(evaluator.test_metrics[4].fpr_limit) == pytest.approx(0.3)  # still a buffer, moved with the module

    model = RD4AD(**TINY[RD4AD], visualizer=False)
    state = model.state_dict()
    foreign = {"evaluator.test_metrics.4.fpr_limit": torch.tensor(0.3), "evaluator.val_metrics.0.x": torch.ones(2)}
    model.load_state_dict({**state, **foreign})  # strict by default
    with pytest.raises(RuntimeError, match=r"Unexpected key\(s\).*model\.bogus"):
        model.load_state_dict({**state, **foreign, "model.bogus": torch.ones(1)})
