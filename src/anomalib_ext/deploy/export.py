"""Deployment helpers: OpenVINO export that stays quiet, and a parity check against eager torch."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch


def quiet_exporter_logs() -> None:
    """onnxscript logs a traceback when its opset down-conversion falls back; the export is fine (see README)."""
    logging.getLogger("onnxscript").setLevel(logging.ERROR)


PRECISIONS = ("fp32", "fp16", "int8", "int8-weights")


class InputSizeError(ValueError):
    """An exported model was given an image of another size than it was exported for."""


class ExportedModel:
    """A compiled OpenVINO export that names its outputs and refuses images of the wrong size.

    The exports have a fixed height and width (the training size; the batch is dynamic).
    OpenVINO's own error for another size is a shape-inference trace; this one says what to do.
    """

    def __init__(self, path: str | Path, device: str = "CPU") -> None:
        import openvino as ov

        self.path = Path(path)
        if not self.path.is_file():
            msg = f"No exported model at {self.path} (export one with `anomalib export --export_type openvino`)."
            raise FileNotFoundError(msg)
        self.compiled = ov.Core().compile_model(str(self.path), device)
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
        """Outputs by name (``anomaly_map``, ``pred_score``, ...) for a batch of ``[0, 1]`` images."""
        self.check(image)
        return {output.get_any_name(): value for output, value in self.compiled(image).items()}


def openvino_parity(model: Any, batches: list[Any], export_root: Path, image_size: int) -> dict[str, Any]:
    """Export to OpenVINO and compare its anomaly maps and scores with eager torch on test images."""
    model = model.cpu().eval()
    path = export_openvino(model, export_root, image_size)
    exported = ExportedModel(path)
    worst_map, worst_score = 0.0, 0.0
    for batch in batches[:2]:
        for image in batch.image[:4]:
            image = image.unsqueeze(0).cpu()
            with torch.no_grad():
                expected = model(image)
            outputs = exported(image.numpy())
            worst_map = max(worst_map, float(np.abs(outputs["anomaly_map"] - expected.anomaly_map.numpy()).max()))
            worst_score = max(
                worst_score, float(np.abs(outputs["pred_score"].ravel() - expected.pred_score.numpy().ravel()).max())
            )
    return {"openvino_model": str(path), "max_map_difference": worst_map, "max_score_difference": worst_score}


def export_openvino(
    model: Any,
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
        msg = "precision='int8' needs `calibration`: a loader of normal training images (e.g. datamodule.train_dataloader())."
        raise ValueError(msg)
    quiet_exporter_logs()
    name = "model" if precision == "fp32" else f"model_{precision.replace('-', '_')}"
    model = model.cpu().eval()
    if precision in ("fp32", "fp16"):
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
    fp32: Path, export_root: Path, name: str, calibration: Iterable[Any] | None, count: int, precision: str
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


def map_smoothing_convolutions(model: Any) -> list[str]:
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


def predict_folder(model_path: Path, folder: Path, output: Path, overlays: bool = True) -> list[dict[str, Any]]:
    """Score every image in ``folder`` with an exported OpenVINO model, robustly and incrementally.

    Grayscale, palette and RGBA images are converted to RGB; files that are not images (or are
    corrupt) are skipped with a message. Each result is appended to ``output/predictions.csv`` as
    soon as it is computed, with an overlay PNG in ``output/overlays/``, so an interruption never
    loses what was already written. Images of any size are resized to the exported input size.
    """
    import csv

    from anomalib.deploy import OpenVINOInferencer
    from PIL import Image, UnidentifiedImageError

    folder, output = Path(folder), Path(output)
    if not folder.is_dir():
        msg = f"Prediction folder {folder} does not exist."
        raise FileNotFoundError(msg)
    inferencer = OpenVINOInferencer(path=model_path, device="CPU")
    shape = inferencer.model.inputs[0].get_partial_shape()  # batch is dynamic, height and width are fixed
    height, width = shape[2].get_length(), shape[3].get_length()
    output.mkdir(parents=True, exist_ok=True)
    (output / "overlays").mkdir(exist_ok=True)
    table = output / "predictions.csv"
    new_table = not table.exists()
    results: list[dict[str, Any]] = []
    files = sorted(p for p in folder.iterdir() if p.is_file())
    if not files:
        print(f"No files in {folder}: nothing to predict.")
    with table.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["image", "score", "label", "note"])
        if new_table:
            writer.writeheader()
        for path in files:
            try:
                with Image.open(path) as image:
                    mode = image.mode
                    rgb = image.convert("RGB").resize((width, height), Image.Resampling.BILINEAR)
            except (UnidentifiedImageError, OSError) as error:
                print(f"skipped {path.name}: not a readable image ({error})")
                continue
            prediction = inferencer.predict(np.asarray(rgb, dtype=np.float32) / 255.0)
            score = float(np.asarray(prediction.pred_score).ravel()[0])
            label = bool(np.asarray(prediction.pred_label).ravel()[0]) if prediction.pred_label is not None else None
            note = f"converted from {mode}" if mode != "RGB" else ""
            row = {"image": path.name, "score": round(score, 6), "label": label, "note": note}
            writer.writerow(row)
            handle.flush()
            if overlays and prediction.anomaly_map is not None:
                _save_overlay(
                    np.asarray(rgb),
                    np.asarray(prediction.anomaly_map).squeeze(),
                    output / "overlays" / f"{path.stem}.png",
                )
            results.append(row)
    return results


def _save_overlay(image: np.ndarray, anomaly_map: np.ndarray, target: Path) -> None:
    """Blend a jet-coloured anomaly map over the image."""
    from matplotlib import colormaps
    from PIL import Image

    lo, hi = float(anomaly_map.min()), float(anomaly_map.max())
    normalised = (anomaly_map - lo) / (hi - lo + 1e-12)
    heat = (colormaps["jet"](normalised)[..., :3] * 255).astype(np.uint8)
    blended = (0.55 * image + 0.45 * heat).clip(0, 255).astype(np.uint8)
    Image.fromarray(blended).save(target)


def main(argv: list[str] | None = None) -> int:
    """``anomalib-ext predict-folder MODEL.xml FOLDER --output DIR``."""
    import argparse

    parser = argparse.ArgumentParser(prog="anomalib-ext predict-folder", description=predict_folder.__doc__)
    parser.add_argument("model", type=Path, help="exported OpenVINO model (.xml)")
    parser.add_argument("folder", type=Path, help="folder of images to score")
    parser.add_argument("--output", type=Path, default=Path("predictions"))
    parser.add_argument("--no-overlays", action="store_true")
    args = parser.parse_args(argv)
    results = predict_folder(args.model, args.folder, args.output, overlays=not args.no_overlays)
    print(f"{len(results)} images scored; results in {args.output / 'predictions.csv'}")
    return 0
