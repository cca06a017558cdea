"""Accuracy and speed of one trained model's OpenVINO export at each deployment precision, in one run.

The same weights and test images go through: the fp32 IR at f32 (the reference: what torch
computes), the fp32 IR at bf16 (OpenVINO's CPU default on AVX-512 BF16 / AMX CPUs), NNCF INT8
(post-training quantisation calibrated on training images) and NNCF weight-only INT8, both at f32. For each: image and
pixel AUROC from the exported outputs, and the median batch-1 latency.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from anomalib_ext.callbacks.progress import auroc_any_scale
from anomalib_ext.deploy.export import export_openvino
from anomalib_ext.deploy.runtime import ExportedModel, cpu_supports

from .timing import median_ms

if TYPE_CHECKING:
    from collections.abc import Iterable

    from anomalib.data import AnomalibDataModule, Batch
    from anomalib.models import AnomalibModule

VARIANTS = (("fp32", "f32"), ("fp32", "bf16"), ("int8", "f32"), ("int8-weights", "f32"))


def exported_outputs(exported: ExportedModel, dataloader: Iterable[Batch]) -> dict[str, torch.Tensor]:
    """Every test image's outputs beside its labels, concatenated over the loader.

    ``pred_score`` and ``gt_label`` hold one value per image, ``anomaly_map`` one per pixel (in the
    order of the flattened ``(B, H, W)`` masks); ``gt_mask`` is there only when the loader has masks.
    """
    collected: dict[str, list[torch.Tensor]] = {"pred_score": [], "gt_label": [], "anomaly_map": [], "gt_mask": []}
    for batch in dataloader:
        outputs = exported(batch.image.numpy())
        collected["pred_score"].append(torch.from_numpy(outputs["pred_score"]).flatten())
        collected["gt_label"].append(batch.gt_label.flatten().int())
        collected["anomaly_map"].append(torch.from_numpy(outputs["anomaly_map"]).flatten())
        if batch.gt_mask is not None:
            collected["gt_mask"].append(batch.gt_mask.flatten().int())
    return {name: torch.cat(values) for name, values in collected.items() if values}


def score_exported(exported: ExportedModel, dataloader: Iterable[Batch]) -> tuple[float, float | None]:
    """Image AUROC of ``pred_score`` and pixel AUROC of ``anomaly_map`` over a test loader.

    The outputs are rescaled onto [0, 1] first (``auroc_any_scale``, order kept): an IR exported without
    its post-processor gives raw scores, which torchmetrics would squash through a sigmoid into ties.
    """
    outputs = exported_outputs(exported, dataloader)
    image = auroc_any_scale(outputs["pred_score"], outputs["gt_label"])
    pixel = auroc_any_scale(outputs["anomaly_map"], outputs["gt_mask"]) if "gt_mask" in outputs else None
    return image, pixel


def batch1_ms(exported: ExportedModel, image_size: int, repeats: int = 30, warmup: int = 5) -> float:
    """Median wall time of one image through the compiled model."""
    image = np.random.default_rng(0).random((1, 3, image_size, image_size), dtype=np.float32)
    return median_ms(lambda: exported(image), repeats, warmup, sync=lambda: None)


def precision_rows(
    model: AnomalibModule,
    datamodule: AnomalibDataModule,
    image_size: int,
    export_root: Path,
) -> list[dict[str, Any]]:
    """One row per (IR, inference precision) in :data:`VARIANTS`; bf16 rows say when the CPU lacks bf16.

    Each row also names its IR file (``"IR path"``), so its outputs can be compared beyond AUROC.
    """
    paths = {
        "fp32": export_openvino(model, export_root, image_size),
        "int8": export_openvino(
            model,
            export_root,
            image_size,
            precision="int8",
            calibration=datamodule.train_dataloader(),
        ),
        "int8-weights": export_openvino(model, export_root, image_size, precision="int8-weights"),
    }
    rows = []
    for ir, precision in VARIANTS:
        exported = ExportedModel(paths[ir], precision=precision)
        image_auroc, pixel_auroc = score_exported(exported, datamodule.test_dataloader())
        rows.append(
            {
                "IR": ir,
                "IR path": paths[ir],
                "inference precision": exported.precision
                + ("" if precision == exported.precision else f" (asked {precision}; CPU lacks it)"),
                "image AUROC": image_auroc,
                "pixel AUROC": pixel_auroc if pixel_auroc is not None else "n/a",
                "batch-1 latency": f"{batch1_ms(exported, image_size):.1f} ms",
                "bf16 on this CPU": cpu_supports("BF16"),
            },
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    """``python -m anomalib_ext.benchmark.precision --model RD4AD --checkpoint CKPT --data DIR``."""
    import argparse

    from .models import resolve_model_class
    from .report import DEPLOY_COLUMNS, append_row
    from .runner import make_datamodule
    from .timing import hardware

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="model class name (RD4AD, ...) or dotted path")
    parser.add_argument("--checkpoint", type=Path, required=True, help="trained Lightning checkpoint")
    parser.add_argument("--data", type=Path, required=True, help="MVTec-style folder the model was trained on")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--work-dir", type=Path, default=Path("precision_benchmark"))
    parser.add_argument("--output", type=Path, default=None, help="Markdown file to append the rows to")
    parser.add_argument("--section", default="Deployment precisions")
    args = parser.parse_args(argv)
    model_cls: Any = resolve_model_class(args.model)
    model = model_cls.load_from_checkpoint(args.checkpoint, map_location="cpu")
    datamodule = make_datamodule(argparse.Namespace(**vars(args), num_workers=0), model_cls)
    for row in precision_rows(model.eval(), datamodule, args.image_size, args.work_dir):
        labelled = {**row, "model": args.model, "dataset": args.data.name, "hardware": hardware()}
        print(labelled)
        if args.output:
            append_row(args.output, args.section, labelled, DEPLOY_COLUMNS)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
