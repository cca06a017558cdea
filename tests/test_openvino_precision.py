"""OpenVINO runs at the precision we ask for, on every CPU: f32 by default, bf16 only when asked.

OpenVINO's CPU plugin defaults to bf16 on CPUs with AVX-512 BF16 or AMX and to f32 elsewhere, so
an unhinted parity check passes on one machine and fails on the next. These tests hold on both.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import torch
from lightning.pytorch import seed_everything

from anomalib_ext import RD4AD
from anomalib_ext.deploy import ExportedModel, compile_openvino, compiled_precision

if TYPE_CHECKING:
    from anomalib_ext.data import MVTecStyle

SRC = Path(__file__).resolve().parents[1] / "src" / "anomalib_ext"
RUNTIME = SRC / "deploy" / "runtime.py"


def cpu_has_bf16() -> bool:
    """Whether OpenVINO's CPU plugin computes in bf16 on this machine."""
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def test_default_is_f32_and_matches_torch(exported_rd4ad: tuple[RD4AD, Path]) -> None:
    """Assumes torch computes in f32 on the CPU; OpenVINO then matches it to 1e-4 of the map's scale."""
    model, path = exported_rd4ad
    runtime = ExportedModel(path)
    assert runtime.precision == "f32"
    image = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(image).anomaly_map.numpy()
    actual = runtime(image.numpy())["anomaly_map"].reshape(expected.shape)
    np.testing.assert_allclose(actual / np.abs(expected).max(), expected / np.abs(expected).max(), atol=1e-4)


def test_bf16_is_bf16_where_the_cpu_has_it(exported_rd4ad: tuple[RD4AD, Path]) -> None:
    """Asking for bf16 gives bf16 on CPUs that compute it, and OpenVINO's f32 fallback elsewhere."""
    _, path = exported_rd4ad
    runtime = ExportedModel(path, precision="bf16")
    assert runtime.precision == ("bf16" if cpu_has_bf16() else "f32")
    assert np.isfinite(runtime(np.zeros((1, 3, 64, 64), np.float32))["anomaly_map"]).all()


def test_unknown_precision_is_refused(exported_rd4ad: tuple[RD4AD, Path]) -> None:
    """A precision outside f32, bf16 and f16 is refused by name."""
    with pytest.raises(ValueError, match="'f64' is not a valid InferencePrecision"):
        ExportedModel(exported_rd4ad[1], precision="f64")


def test_converted_models_are_compiled_with_the_hint_too() -> None:
    """An in-memory ``ov.Model`` compiles at the explicit f32 hint too, not only an ``.xml`` path."""
    import openvino as ov

    converted = ov.convert_model(torch.nn.Conv2d(3, 4, 3).eval(), example_input=torch.rand(1, 3, 8, 8))
    assert compiled_precision(compile_openvino(converted)) == "f32"


def test_nothing_compiles_openvino_without_an_explicit_precision() -> None:
    """Every compile goes through ``deploy/runtime.py``, which always passes the precision hint."""
    pattern = re.compile(r"\bcompile_model\(|OpenVINOInferencer\(")
    offenders = [
        str(path.relative_to(SRC.parent.parent))
        for folder in (SRC, Path(__file__).parent)
        for path in folder.rglob("*.py")
        if path not in {RUNTIME, Path(__file__).resolve()} and pattern.search(path.read_text())
    ]
    assert not offenders, f"compile OpenVINO through anomalib_ext.deploy.compile_openvino instead: {offenders}"
    assert "inference_precision" in RUNTIME.read_text()


@pytest.mark.slow
def test_precision_rows_score_the_same_weights(tiny_datamodule: MVTecStyle, tmp_path: Path) -> None:
    """The f32 row reproduces torch's AUROC of the same inference graph; bf16 and INT8 rows are there and sane."""
    from anomalib_ext.benchmark.precision import exported_outputs, precision_rows
    from anomalib_ext.callbacks import score_test_set
    from tests.helpers import make_engine

    seed_everything(0, workers=True)
    model = RD4AD(
        backbone="efficientnet_lite0",
        layers=("blocks.1", "blocks.2", "blocks.4"),
        pre_processor=RD4AD.configure_pre_processor(image_size=(64, 64)),
        visualizer=False,
    )
    make_engine(tmp_path / "fit").fit(model=model, datamodule=tiny_datamodule)  # thresholds and normalisation
    torch_image, torch_pixel = score_test_set(model, tiny_datamodule.test_dataloader(), full_graph=True)
    rows = precision_rows(model, tiny_datamodule, 64, tmp_path)
    assert [(row["IR"], row["inference precision"].split()[0]) for row in rows] == [
        ("fp32", "f32"),
        ("fp32", "bf16" if cpu_has_bf16() else "f32"),
        ("int8", "f32"),
        ("int8-weights", "f32"),
    ]
    assert rows[0]["image AUROC"] == pytest.approx(torch_image, abs=1e-6)
    assert rows[0]["pixel AUROC"] == pytest.approx(torch_pixel, abs=1e-4)
    # One epoch leaves this model near chance (seed 0, float32 on the CPU: image AUROC 0.42, pixel AUROC
    # 0.46), so AUROC cannot tell a faithful quantised map from garbage, and full INT8's AUROC depends on
    # the CPU's int8 kernels (pixel AUROC 0.38 on an AVX-512 Xeon, 0.35 on an AVX2 EPYC). What holds on
    # every CPU is that each map tracks the f32 map: bf16 within 0.01 pixel AUROC, and the INT8 maps
    # correlated with f32's over the test set (measured r = 0.87 full INT8, 0.99 weight-only, AVX2 EPYC);
    # a constant or scrambled map would correlate about 0.
    assert rows[1]["pixel AUROC"] == pytest.approx(rows[0]["pixel AUROC"], abs=0.01)
    maps = {  # each IR compiled at f32
        row["IR"]: exported_outputs(ExportedModel(row["IR path"]), tiny_datamodule.test_dataloader())["anomaly_map"]
        for row in (rows[0], rows[2], rows[3])
    }
    assert np.corrcoef(maps["fp32"], maps["int8"])[0, 1] > 0.75
    assert np.corrcoef(maps["fp32"], maps["int8-weights"])[0, 1] > 0.95
    assert all(row["batch-1 latency"].endswith(" ms") for row in rows)


def test_score_exported_ranks_raw_scores() -> None:
    """Raw outputs (an IR without its post-processor) score by their order, not by torchmetrics' sigmoid.

    torchmetrics' binary AUROC treats values outside [0, 1] as logits: 100-103 all become 1.0 and tie
    at 0.5. ``score_exported`` rescales first, so perfectly ordered raw scores give 1.0.
    """
    from types import SimpleNamespace

    from anomalib_ext.benchmark.precision import score_exported

    labels = torch.tensor([0, 0, 1, 1])
    scores = np.array([100.0, 101.0, 102.0, 103.0], dtype=np.float32)
    masks = labels.view(4, 1, 1).expand(4, 2, 2)
    maps = (50.0 + 10.0 * masks.numpy()).astype(np.float32)

    def exported(images: np.ndarray) -> dict[str, np.ndarray]:
        assert images.shape == (4, 3, 2, 2)
        return {"pred_score": scores, "anomaly_map": maps}

    batch = SimpleNamespace(image=torch.zeros(4, 3, 2, 2), gt_label=labels, gt_mask=masks)
    image_auroc, pixel_auroc = score_exported(exported, [batch])  # type: ignore[arg-type]
    assert image_auroc == 1.0
    assert pixel_auroc == 1.0
