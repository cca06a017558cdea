"""What a row says about speed: the hardware, and batch-1 latency in eager torch and in OpenVINO."""

from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from collections.abc import Callable

    from anomalib.models import AnomalibModule


def hardware() -> str:
    """A short description of the machine: GPU name, or CPU model and core count."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    cpu = platform.processor() or "CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores"


def median_ms(
    run: Callable[[], object],
    repeats: int = 20,
    warmup: int = 3,
    sync: Callable[[], object] | None = None,
) -> float:
    """Median wall time of ``run`` in milliseconds, after ``sync`` (default: CUDA's, when there is a GPU)."""
    if sync is None:
        sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for _ in range(warmup):
        run()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        sync()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def measure_latency(
    model: AnomalibModule,
    image_size: int,
    export_root: Path,
    device: str,
    precision: str = "f32",
) -> tuple[float, float | None]:
    """Batch-1 latency of the full inference graph: eager torch on ``device``, OpenVINO on CPU at ``precision``."""
    model = model.to(device).eval()
    image = torch.rand(1, 3, image_size, image_size, device=device)
    with torch.no_grad():
        torch_ms = median_ms(lambda: model(image))
    model = model.cpu()
    try:
        from anomalib_ext.deploy import ExportedModel, export_openvino

        compiled = ExportedModel(export_openvino(model, export_root, image_size), precision=precision)
        array = image.cpu().numpy()
        ov_ms: float | None = median_ms(lambda: compiled(array))
    except Exception as error:  # noqa: BLE001  # export problems are reported in the row, not fatal to the benchmark
        print(f"OpenVINO export/timing failed: {error}")
        ov_ms = None
    return torch_ms, ov_ms
