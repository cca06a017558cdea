"""Deployment helpers: OpenVINO export that stays quiet, and a parity check against eager torch."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch


def quiet_exporter_logs() -> None:
    """onnxscript logs a traceback when its opset down-conversion falls back; the export is fine (see README)."""
    logging.getLogger("onnxscript").setLevel(logging.ERROR)


def openvino_parity(model: Any, batches: list[Any], export_root: Path, image_size: int) -> dict[str, float]:
    """Export to OpenVINO and compare its anomaly maps and scores with eager torch on test images."""
    model = model.cpu().eval()
    path = export_openvino(model, export_root, image_size)
    compiled = compile_openvino(path)
    worst_map, worst_score = 0.0, 0.0
    for batch in batches[:2]:
        for image in batch.image[:4]:
            image = image.unsqueeze(0).cpu()
            with torch.no_grad():
                expected = model(image)
            outputs = {out.get_any_name(): value for out, value in compiled(image.numpy()).items()}
            worst_map = max(worst_map, float(np.abs(outputs["anomaly_map"] - expected.anomaly_map.numpy()).max()))
            worst_score = max(
                worst_score, float(np.abs(outputs["pred_score"].ravel() - expected.pred_score.numpy().ravel()).max())
            )
    return {"openvino_model": str(path), "max_map_difference": worst_map, "max_score_difference": worst_score}


def export_openvino(model: Any, export_root: Path, image_size: int) -> Path:
    """Export the whole inference graph (pre-processing, model, post-processing) to OpenVINO IR."""
    quiet_exporter_logs()
    return model.cpu().eval().to_openvino(export_root=export_root, input_size=(image_size, image_size))


def compile_openvino(path: Path, device: str = "CPU") -> Any:
    """Compile an exported IR for ``device``."""
    import openvino as ov

    return ov.Core().compile_model(str(path), device)
