"""Benchmarks: train, test and time models on MVTec-style data, and write the rows docs/benchmarks.md holds.

- :mod:`.models`: build any model offline (ours, anomalib's built-ins on the same local weights);
- :mod:`.runner`: one row (fit, test, latency, after-training variants, deployment precisions);
- :mod:`.timing`: hardware description and latency;
- :mod:`.report`: Markdown rows, training curves, figures;
- :mod:`.spec`: a whole table as data (YAML: datasets x models x recipes), ``--spec FILE``;
- :mod:`.precision`: one trained model's OpenVINO export at f32, bf16 and INT8;
- :mod:`.cli`: ``anomalib-ext benchmark``;
- :mod:`.teacher_speed`: EfficientAD's network speed beside anomalib's.
"""

from .cli import main, parse_args
from .models import build_model, builtin_pre_processor, model_backbone, resolve_model_class
from .report import COLUMNS, append_row, curve_text, format_cell
from .runner import run_benchmark
from .timing import hardware, measure_latency, median_ms

__all__ = [
    "COLUMNS",
    "append_row",
    "build_model",
    "builtin_pre_processor",
    "curve_text",
    "format_cell",
    "hardware",
    "main",
    "measure_latency",
    "median_ms",
    "model_backbone",
    "parse_args",
    "resolve_model_class",
    "run_benchmark",
]
