"""The one place this package compiles OpenVINO models: explicit inference precision, checked inputs, named outputs.

OpenVINO's CPU plugin picks its inference precision from the hardware when not told: on CPUs
with AVX-512 BF16 or AMX (recent Xeons) it runs bf16, on others f32. A parity check or a
benchmark that relies on the default therefore means different things on different machines
(torch vs OpenVINO map difference 1e-6 on an AMD EPYC, 1e-2 on a Xeon with AMX). Everything
here compiles with an explicit ``INFERENCE_PRECISION_HINT``: ``f32`` by default, ``bf16`` or
``f16`` only when asked for, as a speed option.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import openvino as ov


class InferencePrecision(StrEnum):
    """Precision the OpenVINO CPU plugin computes in (not how the IR stores its weights)."""

    F32 = "f32"
    BF16 = "bf16"
    F16 = "f16"


class InputSizeError(ValueError):
    """An exported model was given an image of another size than it was exported for."""


def compile_openvino(
    model: str | Path | ov.Model,
    device: str = "CPU",
    precision: str = InferencePrecision.F32,
) -> ov.CompiledModel:
    """Compile an OpenVINO model (``.xml`` path or ``ov.Model``) at an explicit inference precision.

    A device that cannot compute in ``bf16`` or ``f16`` falls back to ``f32`` (OpenVINO's rule);
    :func:`compiled_precision` tells which one the compiled model uses.
    """
    import openvino as ov
    import openvino.properties.hint as hints

    precision = InferencePrecision(precision)
    source = str(model) if isinstance(model, str | Path) else model
    element_type = {"f32": ov.Type.f32, "bf16": ov.Type.bf16, "f16": ov.Type.f16}[precision.value]
    return ov.Core().compile_model(source, device, {hints.inference_precision: element_type})


def cpu_supports(capability: str) -> bool:
    """Whether OpenVINO's CPU plugin lists ``capability`` (``BF16``, ``FP16``, ``INT8``) on this machine."""
    import openvino as ov

    return capability in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def compiled_precision(compiled: ov.CompiledModel) -> str:
    """The inference precision a compiled model actually runs at (``f32``, ``bf16``, ``f16``)."""
    import openvino.properties.hint as hints

    return compiled.get_property(hints.inference_precision).get_type_name()


class ExportedModel:
    """A compiled OpenVINO export that names its outputs and refuses images of the wrong size.

    The exports have a fixed height and width (the training size; the batch is dynamic).
    OpenVINO's own error for another size is a shape-inference trace; this one says what to do.

    Args:
        path: the exported ``.xml``.
        device: OpenVINO device.
        precision: inference precision, ``f32`` (default: outputs match torch on every CPU),
            ``bf16`` or ``f16`` (faster where the CPU has them, about 1e-2 from torch).
    """

    def __init__(self, path: str | Path, device: str = "CPU", precision: str = InferencePrecision.F32) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            msg = f"No exported model at {self.path} (export one with `anomalib export --export_type openvino`)."
            raise FileNotFoundError(msg)
        self.compiled = compile_openvino(self.path, device, precision)
        self.precision = compiled_precision(self.compiled)
        shape = self.compiled.inputs[0].get_partial_shape()
        self.input_size: tuple[int, int] | None = (
            (shape[2].get_length(), shape[3].get_length()) if shape[2].is_static and shape[3].is_static else None
        )

    def check(self, image: np.ndarray) -> None:
        """Raise :class:`InputSizeError` unless ``image`` is ``(N, 3, H, W)`` at the exported size."""
        if image.ndim != 4 or image.shape[1] != 3:
            msg = f"{self.path} expects a (batch, 3, height, width) array; got shape {tuple(image.shape)}."
            raise InputSizeError(msg)
        if self.input_size is not None and tuple(image.shape[2:]) != self.input_size:
            height, width = self.input_size
            msg = (
                f"{self.path} was exported for {height}x{width} images; got {image.shape[2]}x{image.shape[3]}. "
                f"Resize to {height}x{width} first (`anomalib-ext predict-folder` does), or export again with "
                f"input_size=({image.shape[2]}, {image.shape[3]})."
            )
            raise InputSizeError(msg)

    def __call__(self, image: np.ndarray) -> dict[str, np.ndarray]:
        """Outputs by name (``anomaly_map``, ``pred_score``, ``pred_label``, ...) for a batch of ``[0, 1]`` images."""
        self.check(image)
        return {output.get_any_name(): value for output, value in self.compiled(image).items()}
