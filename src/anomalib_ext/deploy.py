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


def openvino_parity(model: Any, batches: list[Any], export_root: Path, image_size: int) -> dict[str, Any]:
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
            outputs = openvino_outputs(compiled, image.numpy())
            worst_map = max(worst_map, float(np.abs(outputs["anomaly_map"] - expected.anomaly_map.numpy()).max()))
            worst_score = max(
                worst_score, float(np.abs(outputs["pred_score"].ravel() - expected.pred_score.numpy().ravel()).max())
            )
    return {"openvino_model": str(path), "max_map_difference": worst_map, "max_score_difference": worst_score}


def openvino_outputs(compiled: Any, image: np.ndarray) -> dict[str, np.ndarray]:
    """Run a compiled OpenVINO model on one array and return its outputs by name."""
    return {output.get_any_name(): value for output, value in compiled(image).items()}


def export_openvino(model: Any, export_root: Path, image_size: int) -> Path:
    """Export the whole inference graph (pre-processing, model, post-processing) to OpenVINO IR."""
    quiet_exporter_logs()
    return model.cpu().eval().to_openvino(export_root=export_root, input_size=(image_size, image_size))


def compile_openvino(path: Path, device: str = "CPU") -> Any:
    """Compile an exported IR for ``device``."""
    import openvino as ov

    return ov.Core().compile_model(str(path), device)


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
