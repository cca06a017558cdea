"""Train and test one model on one MVTec-style dataset, time it, and append a row to a Markdown table.

Usage::

    anomalib-ext benchmark --model RD4AD --data ../shared/datasets/mtd --backbone efficientnet_lite0 \
        --layers blocks.1 blocks.2 blocks.4 --epochs 50 --output docs/benchmarks.md --section "RD4AD"

``--model`` is one of this package's models, an anomalib built-in (``Padim``, ``Patchcore``,
``Stfpm``, ``ReverseDistillation``) or a dotted class path. anomalib's built-ins are built with
``pre_trained=False`` and their frozen backbone is then filled from the same local weights as
ours (:mod:`anomalib_ext.components.backbone`), so the comparison needs no network either.

The row records what ran: dataset, backbone, image size, epochs, image AUROC, pixel AUROC, AUPRO,
training wall time, batch-1 latency in eager torch (on the training device) and in OpenVINO on
CPU, and the hardware. A JSON file with the same numbers is written next to the run.

A whole table is a YAML spec (datasets x models x recipes, :mod:`.spec`)::

    anomalib-ext benchmark --spec configs/benchmarks/lite0_mtd.yaml [--dry-run] [--only RD4AD]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .report import append_row, write_plots
from .runner import dataset_name, rescore_benchmark, run_benchmark
from .spec import describe, select, spec_commands


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse the benchmark's command line (``sys.argv`` when ``argv`` is None)."""
    parser = argparse.ArgumentParser(prog="anomalib-ext benchmark", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model",
        "--models",
        dest="models",
        nargs="+",
        required=True,
        help="one or more of RD4AD, RSTPM, UniAD, EfficientADOffline, Padim, Patchcore, Stfpm, ... or class paths",
    )
    parser.add_argument(
        "--data",
        nargs="+",
        required=True,
        help=(
            "MVTec-style folder, e.g. ../shared/datasets/mtd; several folders train one unified model "
            "(UniAD's multi-class setting) scored per category, the row being their mean"
        ),
    )
    parser.add_argument("--backbone", default=None, help="timm backbone, e.g. efficientnet_lite0")
    parser.add_argument("--layers", nargs="*", default=None, help="backbone layers, e.g. blocks.1 blocks.2 blocks.4")
    parser.add_argument("--model-args", default="{}", help="extra constructor arguments as JSON")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument(
        "--no-image-cache",
        action="store_true",
        help="decode and resize every image on every access (default: once, kept in memory as uint8)",
    )
    parser.add_argument(
        "--landscape",
        action="store_true",
        help="turn portrait images and masks a quarter turn before resizing, so all long sides are horizontal",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--label", default=None, help="model name shown in the row")
    parser.add_argument("--work-dir", default=None, help="where checkpoints, exports and benchmark.json go")
    parser.add_argument("--output", type=Path, default=None, help="Markdown file to append the row to")
    parser.add_argument("--section", default="Results", help="section title in --output")
    parser.add_argument("--plots", type=Path, default=None, help="folder for heatmaps.png and accuracy_vs_latency.png")
    parser.add_argument("--grid-images", type=int, default=6, help="test images in the heat-map grid")
    parser.add_argument(
        "--variants",
        nargs="*",
        type=json.loads,
        default=[],
        help=(
            "after testing, test again with torch-model attributes set, one JSON object each: "
            '\'{"score_map": "discriminator"}\''
        ),
    )
    parser.add_argument(
        "--rescore",
        action="store_true",
        help=(
            "no training: load the row trained earlier in --work-dir (its benchmark.json and last checkpoint) and "
            "append only its --variants rows, e.g. an option added after it trained"
        ),
    )
    parser.add_argument(
        "--deploy-precisions",
        action="store_true",
        help="also score the OpenVINO export at f32, bf16 and INT8 (accuracy and batch-1 latency, same weights)",
    )
    parser.add_argument(
        "--curve-every",
        type=int,
        default=0,
        help="score the test split every N epochs (the training curve); 0: off",
    )
    parser.add_argument(
        "--train-precision",
        default="32-true",
        choices=("32-true", "bf16-mixed"),
        help="Lightning training precision; bf16-mixed autocasts to bfloat16 (fast on CPUs with AVX-512 BF16 / AMX)",
    )
    parser.add_argument(
        "--precision",
        choices=("f32", "bf16", "f16"),
        default="f32",
        help="OpenVINO inference precision for the latency column (default f32, the same on every CPU)",
    )
    args = parser.parse_args(argv)
    args.data = args.data[0] if len(args.data) == 1 else args.data
    return args


def main(argv: list[str] | None = None) -> int:
    """Run a ``--spec`` table row by row, or benchmark each model in turn and append the rows. Returns the exit code."""
    spec = argparse.ArgumentParser(add_help=False)
    spec.add_argument("--spec", type=Path, default=None)
    spec.add_argument("--dry-run", action="store_true")
    spec.add_argument("--only", default=None)
    known, rest = spec.parse_known_args(argv)
    if known.spec is not None:
        return run_spec(known.spec, known.only, known.dry_run, rest)
    args = parse_args(argv)
    rows = []
    rescore = getattr(args, "rescore", False)
    for name in args.models:  # one after the other, same data, backbone, size, epochs and seed
        run_args = argparse.Namespace(**{**vars(args), "model": name})
        if len(args.models) > 1:
            run_args.label = None
            run_args.work_dir = str(Path(args.work_dir) / name) if args.work_dir else None
        row = rescore_benchmark(run_args) if rescore else run_benchmark(run_args)
        rows.append(row)
        if args.output:
            for table_row in ([] if rescore else [row, *row["categories"]]) + row["variants"]:
                append_row(args.output, args.section, table_row)
            print(f"Appended to {args.output} under '## {args.section}'.")
    if args.plots:
        backbones = {str(row.get("backbone")) for row in rows}  # what each model ran on, --backbone or its model-args
        backbone = backbones.pop() if len(backbones) == 1 else "each model's backbone"
        title = f"{dataset_name(args.data)}, {backbone}, {args.image_size} px, {args.epochs} epochs"
        for path in write_plots(rows, args.plots, title):
            print(f"Wrote {path}")
    return 0


def run_spec(path: Path, only: str | None, dry_run: bool, extra: list[str]) -> int:
    """Every row of a YAML spec (:mod:`.spec`), one after the other; ``extra`` options apply to each."""
    commands = select(spec_commands(path), only)
    if not commands:
        print(f"No row of {path} matches --only {only!r}.")
        return 1
    for number, command in enumerate(commands, 1):
        print(f"[{number}/{len(commands)}] {describe([*command, *extra])}", flush=True)
        if not dry_run:
            main([*command, *extra])
    return 0
