"""Inference speed of EfficientADOffline beside anomalib's EfficientAd, measured the same way.

Both models get random weights (speed does not depend on their values) and the same input.
Modes: ``eager`` (fp32), ``channels_last``, ``half`` (fp16 weights + channels-last; anomalib's model
builds fp32 normalisation tensors on every call, which may reject it), ``autocast`` (fp16), ``compile``
(``torch.compile``, max-autotune without CUDA graphs), ``cuda_graph`` (captured once, replayed)
and ``openvino`` (CPU, FP32 IR). Latency is per batch-1 call; throughput is images/s at larger
batches. Timing brackets every call with a device synchronisation (CUDA) so it is wall time.

    python -m anomalib_ext.benchmark.teacher_speed --device cuda --batch-sizes 1 16 64
"""

from __future__ import annotations

import argparse
import platform
from typing import TYPE_CHECKING

import torch
from torch import nn

from anomalib_ext.benchmark.timing import median_ms
from anomalib_ext.models.efficientad.torch_model import EfficientADModel

if TYPE_CHECKING:
    from collections.abc import Callable

MODES = ("eager", "channels_last", "half", "autocast", "compile", "cuda_graph", "openvino")


class _Outputs(nn.Module):
    """Plain-tuple outputs (map, score), so every runtime sees the same graph."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        output = self.model(images)
        return output.anomaly_map, output.pred_score


def build(kind: str, model_size: str = "small", image_size: int = 256) -> nn.Module:
    """``ours`` (EfficientADModel with set statistics) or ``anomalib`` (EfficientAdModel with set statistics)."""
    torch.manual_seed(0)
    if kind == "ours":
        model = EfficientADModel(model_size, image_size=image_size)  # type: ignore[arg-type]
        model.set_teacher_statistics(torch.rand(384), torch.rand(384) + 0.5)
        model.set_map_quantiles(torch.tensor([0.1, 0.5]), torch.tensor([0.1, 0.5]))
    elif kind == "anomalib":
        from anomalib.models.image.efficient_ad.torch_model import EfficientAdModel

        model = EfficientAdModel(model_size="small" if model_size == "small" else "medium")
        model.mean_std.update({"mean": torch.rand(1, 384, 1, 1), "std": torch.rand(1, 384, 1, 1) + 0.5})
        model.quantiles.update(
            {k: torch.tensor(v) for k, v in zip(("qa_st", "qb_st", "qa_ae", "qb_ae"), (0.1, 0.5) * 2, strict=True)},
        )
    else:
        msg = f"unknown model kind {kind!r}"
        raise ValueError(msg)
    return _Outputs(model).eval()


def torch_runner(model: nn.Module, images: torch.Tensor, mode: str) -> Callable[[], object]:
    """A zero-argument callable running ``model`` on ``images`` in the given torch mode."""
    if mode in {"channels_last", "half", "compile", "cuda_graph"}:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    if mode == "half":
        model, images = model.half(), images.half()
    if mode == "compile":
        model = torch.compile(model, mode="max-autotune-no-cudagraphs")
    if mode == "cuda_graph":
        static = images.clone()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), torch.no_grad():
            for _ in range(3):
                model(static)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), torch.no_grad():
            model(static)
        return graph.replay

    def run() -> object:
        with torch.no_grad(), torch.autocast(images.device.type, torch.float16, enabled=mode == "autocast"):
            return model(images)

    return run


def openvino_runner(model: nn.Module, images: torch.Tensor, precision: str = "f32") -> Callable[[], object]:
    """Convert to OpenVINO and compile for CPU at an explicit inference precision (f32 unless asked)."""
    import openvino as ov

    from anomalib_ext.deploy import compile_openvino

    with torch.no_grad():
        converted = ov.convert_model(model.cpu(), example_input=images.cpu())
    compiled = compile_openvino(converted, "CPU", precision)
    array = images.cpu().numpy()
    return lambda: compiled(array)


def measure(kind: str, mode: str, batch: int, device: str, image_size: int, warmup: int, iters: int) -> float:
    """Milliseconds per call of ``kind`` in ``mode`` for a batch of ``batch`` images."""
    model = build(kind, image_size=image_size)
    images = torch.rand(batch, 3, image_size, image_size)
    if mode == "openvino":
        return median_ms(openvino_runner(model, images), iters, warmup, sync=lambda: None)
    model, images = model.to(device), images.to(device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    return median_ms(torch_runner(model, images, mode), iters, warmup, sync=sync)


def hardware(device: str) -> str:
    """Short description of the device the numbers come from."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def main(argv: list[str] | None = None) -> int:
    """Print one Markdown row per (model, mode, batch size)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", nargs="+", default=["ours", "anomalib"])
    parser.add_argument("--modes", nargs="+", default=None, choices=MODES)
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 16])
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=10)
    args = parser.parse_args(argv)
    gpu = args.device.startswith("cuda")
    modes = args.modes or (list(MODES) if gpu else ["eager", "channels_last", "openvino"])
    print(f"| model | mode | batch | ms/batch | images/s | hardware ({hardware(args.device)}) |")
    print("|---|---|---|---|---|---|")
    for kind in args.models:
        for mode in modes:
            for batch in args.batch_sizes:
                try:
                    ms = measure(kind, mode, batch, args.device, args.image_size, args.warmup, args.iters)
                except Exception as error:  # noqa: BLE001  # one unsupported mode should not stop the table
                    print(f"| {kind} | {mode} | {batch} | failed: {type(error).__name__}: {error} | | |")
                    continue
                print(f"| {kind} | {mode} | {batch} | {ms:.2f} | {1000 * batch / ms:.1f} | |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
