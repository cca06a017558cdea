"""OpenVINO export (fp32, fp16, INT8) of a whole anomalib inference graph, and its parity check against torch."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .runtime import ExportedModel, InferencePrecision

if TYPE_CHECKING:
    from collections.abc import Iterable

    import openvino as ov
    from anomalib.data import Batch
    from anomalib.models import AnomalibModule


def quiet_exporter_logs() -> None:
    """Silence onnxscript's traceback when its opset down-conversion falls back; the export is fine (see README)."""
    logging.getLogger("onnxscript").setLevel(logging.ERROR)


PRECISIONS = ("fp32", "fp16", "int8", "int8-weights")


def openvino_parity(
    model: AnomalibModule,
    batches: list[Batch],
    export_root: Path,
    image_size: int,
) -> dict[str, Any]:
    """Export to OpenVINO and compare its anomaly maps and scores with eager torch on test images."""
    model = model.cpu().eval()
    path = export_openvino(model, export_root, image_size)
    exported = ExportedModel(path, precision=InferencePrecision.F32)  # parity means f32 on every CPU
    worst_map, worst_score = 0.0, 0.0
    for batch in batches[:2]:
        for image in batch.image[:4]:
            single = image.unsqueeze(0).cpu()
            with torch.no_grad():
                expected = model(single)
            outputs = exported(single.numpy())
            worst_map = max(worst_map, float(np.abs(outputs["anomaly_map"] - expected.anomaly_map.numpy()).max()))
            worst_score = max(
                worst_score,
                float(np.abs(outputs["pred_score"].ravel() - expected.pred_score.numpy().ravel()).max()),
            )
    return {"openvino_model": str(path), "max_map_difference": worst_map, "max_score_difference": worst_score}


def export_openvino(
    model: AnomalibModule,
    export_root: Path,
    image_size: int,
    precision: str = "fp32",
    calibration: Iterable[Any] | None = None,
    calibration_images: int = 300,
) -> Path:
    """Export the whole inference graph (pre-processing, model, post-processing) to OpenVINO IR.

    Args:
        model: a trained anomalib module.
        export_root: folder; the IR goes to ``export_root/weights/openvino/model[_fp16|_int8].xml``.
        image_size: the fixed input side (the training size).
        precision: ``fp32``; ``fp16`` (weights stored in half precision); ``int8``: NNCF
            post-training quantisation of weights and activations, calibrated on ``calibration``;
            ``int8-weights``: NNCF weight-only compression (anomalib's ``INT8``; activations stay fp32).
        calibration: batches (anomalib batches or image tensors) of *normal training* images for
            ``int8``. anomalib's ``INT8_PTQ`` calibrates on the validation loader, which for
            MVTec-style data is the test split, anomalies included; pass the train loader here.
        calibration_images: how many images NNCF calibrates on (NNCF recommends about 300).
    """
    if precision not in PRECISIONS:
        msg = f"precision must be one of {PRECISIONS}; got {precision!r}."
        raise ValueError(msg)
    if precision == "int8" and calibration is None:
        msg = (
            "precision='int8' needs `calibration`: a loader of normal training images "
            "(e.g. datamodule.train_dataloader())."
        )
        raise ValueError(msg)
    quiet_exporter_logs()
    name = "model" if precision == "fp32" else f"model_{precision.replace('-', '_')}"
    model = model.cpu().eval()
    if precision in {"fp32", "fp16"}:
        from anomalib.deploy import CompressionType

        compression = CompressionType.FP16 if precision == "fp16" else None
        return model.to_openvino(
            export_root=export_root,
            model_file_name=name,
            input_size=(image_size, image_size),
            compression_type=compression,
        )
    with tempfile.TemporaryDirectory() as scratch:
        fp32 = model.to_openvino(export_root=scratch, input_size=(image_size, image_size))
        return _quantize_int8(fp32, Path(export_root), name, calibration, calibration_images, precision)


def _quantize_int8(
    fp32: Path,
    export_root: Path,
    name: str,
    calibration: Iterable[Any] | None,
    count: int,
    precision: str,
) -> Path:
    """NNCF INT8 of an fp32 IR: weight-only, or post-training quantisation on ``count`` calibration images."""
    import nncf
    import openvino as ov

    model = ov.Core().read_model(str(fp32))
    if precision == "int8-weights":
        quantized = nncf.compress_weights(model)
    else:
        assert calibration is not None
        batches = _first_images(calibration, count)
        ignored = nncf.IgnoredScope(names=map_smoothing_convolutions(model), validate=False)
        quantized = nncf.quantize(model, nncf.Dataset(batches), subset_size=len(batches), ignored_scope=ignored)
        logging.getLogger(__name__).info("INT8: calibrated on %d images", sum(len(b) for b in batches))
    target = Path(export_root) / "weights" / "openvino" / f"{name}.xml"
    target.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(quantized, str(target), compress_to_fp16=False)
    return target


def map_smoothing_convolutions(model: ov.Model) -> list[str]:
    """Names of the single-channel convolutions (the Gaussian blur of the anomaly map).

    Quantising the map to 8 bits before the blur collapsed RD4AD's whole map to zero on the
    tiny test set (correlation with fp32: undefined); keeping these in fp32 gave 0.97. They are
    a negligible share of the compute.
    """
    names = []
    for op in model.get_ops():
        if op.get_type_name() == "Convolution":
            weight = op.input(1).get_partial_shape()
            if weight.is_static and weight[0].get_length() == 1 and weight[1].get_length() == 1:
                names.append(op.get_friendly_name())
    return names


def _first_images(batches: Iterable[Any], count: int) -> list[np.ndarray]:
    """Image arrays of whole batches (anomalib batches or tensors) until ``count`` images are collected."""
    taken: list[np.ndarray] = []
    seen = 0
    for batch in batches:
        images = getattr(batch, "image", batch)
        taken.append(images.cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images))
        seen += len(taken[-1])
        if seen >= count:
            break
    if not taken:
        msg = "The calibration loader yielded no images."
        raise ValueError(msg)
    return taken
