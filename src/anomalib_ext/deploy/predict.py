"""``anomalib-ext predict-folder``: score a folder of images with an exported model, robustly and incrementally."""

from __future__ import annotations

import argparse
import csv
from pathlib import Path
from typing import Any

import numpy as np

from .heatmap import save_overlay
from .runtime import ExportedModel, InferencePrecision


def predict_folder(
    model_path: Path,
    folder: Path,
    output: Path,
    overlays: bool = True,
    precision: str = InferencePrecision.F32,
) -> list[dict[str, Any]]:
    """Score every image in ``folder`` with an exported OpenVINO model, robustly and incrementally.

    Grayscale, palette and RGBA images are converted to RGB; files that are not images (or are
    corrupt) are skipped with a message. Each result is appended to ``output/predictions.csv`` as
    soon as it is computed, with an overlay PNG in ``output/overlays/``, so an interruption never
    loses what was already written. Images of any size are resized to the exported input size.
    ``precision`` is OpenVINO's inference precision (``f32`` unless ``bf16``/``f16`` is asked for).
    """
    from PIL import Image, UnidentifiedImageError

    folder, output = Path(folder), Path(output)
    if not folder.is_dir():
        msg = f"Prediction folder {folder} does not exist."
        raise FileNotFoundError(msg)
    model = ExportedModel(model_path, precision=precision)
    assert model.input_size is not None, "exports have a fixed height and width"
    height, width = model.input_size
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
            batch = (np.asarray(rgb, dtype=np.float32) / 255.0).transpose(2, 0, 1)[None]
            outputs = model(batch)
            score = float(outputs["pred_score"].ravel()[0])
            label = bool(outputs["pred_label"].ravel()[0]) if "pred_label" in outputs else None
            note = f"converted from {mode}" if mode != "RGB" else ""
            row = {"image": path.name, "score": round(score, 6), "label": label, "note": note}
            writer.writerow(row)
            handle.flush()
            if overlays and "anomaly_map" in outputs:
                save_overlay(
                    np.asarray(rgb),
                    outputs["anomaly_map"].squeeze(),
                    output / "overlays" / f"{path.stem}.png",
                )
            results.append(row)
    return results


def main(argv: list[str] | None = None) -> int:
    """``anomalib-ext predict-folder MODEL.xml FOLDER --output DIR [--precision f32|bf16|f16]``."""
    parser = argparse.ArgumentParser(prog="anomalib-ext predict-folder", description=predict_folder.__doc__)
    parser.add_argument("model", type=Path, help="exported OpenVINO model (.xml)")
    parser.add_argument("folder", type=Path, help="folder of images to score")
    parser.add_argument("--output", type=Path, default=Path("predictions"))
    parser.add_argument("--no-overlays", action="store_true")
    parser.add_argument(
        "--precision",
        choices=[p.value for p in InferencePrecision],
        default=InferencePrecision.F32.value,
        help="OpenVINO inference precision (default f32: the same results on every CPU; bf16 is faster on AMX CPUs)",
    )
    args = parser.parse_args(argv)
    results = predict_folder(args.model, args.folder, args.output, not args.no_overlays, args.precision)
    print(f"{len(results)} images scored; results in {args.output / 'predictions.csv'}")
    return 0
