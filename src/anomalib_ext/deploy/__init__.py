"""Deployment: OpenVINO export (fp32/fp16/INT8), one runtime wrapper with an explicit precision, folder prediction.

- :mod:`.runtime`: :class:`ExportedModel` and :func:`compile_openvino`, the only places that
  compile OpenVINO models, always with an explicit inference precision (``f32`` by default);
- :mod:`.export`: :func:`export_openvino` and the torch-vs-OpenVINO parity check;
- :mod:`.predict`: ``anomalib-ext predict-folder``;
- :mod:`.heatmap`: the map colouring and overlay used wherever a map is drawn.
"""

from .export import PRECISIONS, export_openvino, map_smoothing_convolutions, openvino_parity, quiet_exporter_logs
from .heatmap import colour_map, overlay, save_overlay
from .predict import main, predict_folder
from .runtime import ExportedModel, InferencePrecision, InputSizeError, compile_openvino, compiled_precision

__all__ = [
    "PRECISIONS",
    "ExportedModel",
    "InferencePrecision",
    "InputSizeError",
    "colour_map",
    "compile_openvino",
    "compiled_precision",
    "export_openvino",
    "main",
    "map_smoothing_convolutions",
    "openvino_parity",
    "overlay",
    "predict_folder",
    "quiet_exporter_logs",
    "save_overlay",
]
