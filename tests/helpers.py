"""Helpers the model tests share: a short fit/test run and the OpenVINO parity check."""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING

import numpy as np
import torch
from anomalib.engine import Engine

from anomalib_ext.deploy import ExportedModel

if TYPE_CHECKING:
    from pathlib import Path

    from anomalib.data import AnomalibDataModule
    from anomalib.models import AnomalibModule


def accepted_arguments(cls: type) -> set[str]:
    """Every ``__init__`` argument of ``cls`` and its bases (a config or a spec may set any of them)."""
    return {name for klass in cls.__mro__ if "__init__" in vars(klass) for name in inspect.signature(klass).parameters}


def make_engine(root: Path, max_epochs: int = 1, **kwargs) -> Engine:
    """A CPU engine that writes everything under ``root`` and logs nothing."""
    return Engine(
        default_root_dir=root,
        max_epochs=max_epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        **kwargs,
    )


def fit_and_test(
    model: AnomalibModule,
    datamodule: AnomalibDataModule,
    root: Path,
    max_epochs: int = 1,
    **kwargs,
) -> dict[str, float]:
    """Train for ``max_epochs`` and return the test metrics as floats (validating only after the last epoch)."""
    kwargs.setdefault("check_val_every_n_epoch", max_epochs)
    engine = make_engine(root, max_epochs=max_epochs, **kwargs)
    engine.fit(model=model, datamodule=datamodule)
    results = engine.test(model=model, datamodule=datamodule, verbose=False)
    return {key: float(value) for key, value in results[0].items()}


def assert_openvino_parity(
    model: AnomalibModule,
    root: Path,
    input_size: tuple[int, int],
    atol: float = 1e-4,
) -> dict[str, np.ndarray]:
    """Export ``model`` to OpenVINO and check its map and score against eager torch on one image.

    Assumes float32 in both: torch on the CPU, OpenVINO compiled with an explicit f32 hint (its
    CPU default is bf16 on CPUs with AVX-512 BF16 or AMX, where 1e-4 would not hold).
    """
    model.eval()
    path = model.to_openvino(export_root=root, input_size=input_size)
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, *input_size, generator=generator)
    with torch.no_grad():
        expected = model(image)
    exported = ExportedModel(path, precision="f32")
    assert exported.precision == "f32", f"OpenVINO compiled at {exported.precision}, not the f32 parity needs"
    outputs = exported(image.numpy())
    for name in ("anomaly_map", "pred_score"):
        reference = getattr(expected, name).detach().numpy()
        actual = outputs[name].reshape(reference.shape)
        scale = max(float(np.abs(reference).max()), 1e-6)
        np.testing.assert_allclose(actual / scale, reference / scale, atol=atol, err_msg=name)
    return outputs
