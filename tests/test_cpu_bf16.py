"""The bf16-on-a-slow-CPU warning: its rule, and that the package's bf16 paths raise it."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import pytest
import torch

from anomalib_ext.components import cpu_bf16
from anomalib_ext.components.cpu_bf16 import cpu_lacks_fast_bf16, warn_if_bf16_is_slow
from anomalib_ext.models.efficientad.teacher import distill_autocast
from tests.helpers import make_engine

if TYPE_CHECKING:
    from pathlib import Path

    from anomalib_ext.data import MVTecStyle


@pytest.mark.parametrize(
    ("machine", "capability", "slow"),
    [
        ("x86_64", "AVX2", True),  # the AMD EPYC measured in docs/benchmarks.md
        ("x86_64", "DEFAULT", True),
        ("AMD64", "AVX2", True),
        ("x86_64", "AVX512", False),  # the Xeon with AVX-512 BF16 / AMX
        ("aarch64", "DEFAULT", False),  # not judged: nothing measured there
    ],
)
def test_rule(machine: str, capability: str, slow: bool) -> None:
    """x86 without AVX-512 lacks fast bf16; AVX-512 machines and non-x86 are not flagged."""
    assert cpu_lacks_fast_bf16(machine, capability) is slow


@pytest.fixture(autouse=True)
def fresh_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts as a new process would: nothing warned about yet."""
    monkeypatch.setattr(cpu_bf16, "_warned", set())


@pytest.fixture
def slow_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend the CPU lacks bf16 units, whatever runs the suite."""
    monkeypatch.setattr(cpu_bf16, "cpu_lacks_fast_bf16", lambda: True)


@pytest.mark.usefixtures("slow_cpu")
def test_warns_for_bf16_on_a_slow_cpu_only(caplog: pytest.LogCaptureFixture) -> None:
    """Only a bf16 precision on the CPU warns, once, naming the precision and the f32 option."""
    with caplog.at_level(logging.WARNING, logger=cpu_bf16.__name__):
        assert warn_if_bf16_is_slow("bf16-mixed") is True
        assert warn_if_bf16_is_slow("32-true") is False
        assert warn_if_bf16_is_slow("bf16-mixed", "cuda") is False  # GPUs are not this rule's business
    assert len(caplog.records) == 1
    assert "bf16-mixed" in caplog.text
    assert "32-true" in caplog.text  # the message names the option to use instead


def test_silent_on_a_fast_cpu(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A CPU with bf16 units gets no warning."""
    monkeypatch.setattr(cpu_bf16, "cpu_lacks_fast_bf16", lambda: False)
    with caplog.at_level(logging.WARNING, logger=cpu_bf16.__name__):
        assert warn_if_bf16_is_slow("bf16-mixed") is False
    assert not caplog.records


@pytest.mark.usefixtures("slow_cpu")
def test_teacher_distillation_in_bf16_warns(caplog: pytest.LogCaptureFixture) -> None:
    """EfficientAD's teacher distillation in bf16 raises the same warning."""
    with caplog.at_level(logging.WARNING, logger=cpu_bf16.__name__):
        context = distill_autocast("bf16", "cpu")
    assert isinstance(context, torch.autocast)
    assert "bf16" in caplog.text


@pytest.mark.usefixtures("slow_cpu")
def test_warns_once_per_precision(caplog: pytest.LogCaptureFixture) -> None:
    """A run that passes two warning paths (a benchmark row: its command, then the model) logs one warning."""
    with caplog.at_level(logging.WARNING, logger=cpu_bf16.__name__):
        assert warn_if_bf16_is_slow("bf16-mixed") is True
        assert warn_if_bf16_is_slow("bf16-mixed") is True  # still answers, does not repeat itself
        assert warn_if_bf16_is_slow("bf16-true") is True
    assert [record.args[0] for record in caplog.records] == ["bf16-mixed", "bf16-true"]  # type: ignore[index]


@pytest.mark.usefixtures("slow_cpu")
def test_model_warns_when_its_trainer_asks_for_bf16(
    tiny_datamodule: MVTecStyle,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``anomalib train --trainer.precision bf16-mixed`` reaches the model's fit start: every model warns there."""
    from anomalib_ext import RD4AD

    model = RD4AD(
        backbone="efficientnet_lite0",
        layers=("blocks.1", "blocks.2", "blocks.4"),
        pre_processor=RD4AD.configure_pre_processor(image_size=(64, 64)),
        visualizer=False,
    )
    engine = make_engine(tmp_path, precision="bf16-mixed", limit_train_batches=1, limit_val_batches=0)
    with caplog.at_level(logging.WARNING, logger=cpu_bf16.__name__):
        engine.fit(model=model, datamodule=tiny_datamodule)
    assert len(caplog.records) == 1
    assert "bf16-mixed" in caplog.text
