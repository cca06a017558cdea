"""Shared pieces of the diagnosis scripts: a trained checkpoint, the data it was scored on, and how they score.

``scripts/benchmarks/per_defect_type.py``, ``map_position_bias.py`` and ``distillation_distance.py`` each take a
checkpoint written by ``anomalib-ext benchmark`` (or ``anomalib train``) and re-score its data; this module
gives them one command line and one loader, so their numbers come from the benchmark's own data module.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from anomalib_ext.benchmark.models import resolve_model_class
from anomalib_ext.benchmark.runner import make_datamodule
from anomalib_ext.callbacks.progress import auroc_any_scale

if TYPE_CHECKING:
    import torch
    from anomalib.data import Batch
    from anomalib.models import AnomalibModule

    from anomalib_ext.data import MVTecStyle


def checkpoint_parser(description: str) -> argparse.ArgumentParser:
    """``--model``, ``--checkpoint``, ``--data`` and ``--image-size``, as every diagnosis script takes them."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model class, as for anomalib-ext benchmark")
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="MVTec-layout folder")
    parser.add_argument("--image-size", type=int, default=256)
    return parser


def load_trained(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[AnomalibModule, MVTecStyle]:
    """The checkpoint's model in eval mode on the CPU, and the data module at ``--image-size`` (batch 16).

    Exits through ``parser.error`` naming the argument when the checkpoint or the data folder is missing.
    """
    if not args.checkpoint.is_file():
        parser.error(f"--checkpoint {args.checkpoint} is not a file")
    if not args.data.is_dir():
        parser.error(f"--data {args.data} is not a folder")
    model_cls: type[AnomalibModule] = resolve_model_class(args.model)
    model = model_cls.load_from_checkpoint(args.checkpoint, map_location="cpu").eval()
    datamodule = make_datamodule(argparse.Namespace(**vars(args), batch_size=16, num_workers=0), model_cls)
    return model, datamodule


def model_input(model: AnomalibModule, batch: Batch) -> torch.Tensor:
    """``batch``'s images as the model's forward sees them: through its pre-processor's transform, if it has one."""
    return model.pre_processor.transform(batch.image) if model.pre_processor else batch.image


def auroc_cell(
    maps: torch.Tensor,
    labels: torch.Tensor,
    masks: torch.Tensor | None,
    scores: torch.Tensor | None = None,
) -> str:
    """``"image / pixel"`` AUROC in percent: images ranked by ``scores``, else by their map's maximum.

    The pixel AUROC takes every 7th pixel of the maps and masks (``"n/a"`` without masks); scores on any
    scale are fine (:func:`~anomalib_ext.callbacks.progress.auroc_any_scale`).
    """
    image = 100 * auroc_any_scale(maps.flatten(1).max(dim=1).values if scores is None else scores, labels)
    if masks is None:
        return f"{image:.1f} / n/a"
    pixel = 100 * auroc_any_scale(maps.flatten()[::7], masks.flatten()[::7].long())
    return f"{image:.1f} / {pixel:.1f}"
