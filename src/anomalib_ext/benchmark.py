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
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

# anomalib built-ins: where their frozen ImageNet backbone lives (the rest stays randomly initialised)
ANOMALIB_FROZEN_BACKBONE = {
    "Padim": "feature_extractor",
    "Patchcore": "feature_extractor",
    "Stfpm": "teacher_model",
    "ReverseDistillation": "encoder",
}
COLUMNS = (
    "model",
    "dataset",
    "backbone",
    "size",
    "epochs",
    "image AUROC",
    "pixel AUROC",
    "AUPRO",
    "train time",
    "torch latency",
    "OpenVINO CPU latency",
    "curve (epoch: image / pixel AUROC)",
    "hardware",
    "date",
)


DEPLOY_COLUMNS = (
    "model",
    "dataset",
    "IR",
    "inference precision",
    "image AUROC",
    "pixel AUROC",
    "batch-1 latency",
    "hardware",
)


def resolve_model_class(name: str) -> type:
    """``RD4AD`` (ours), ``Padim`` (anomalib) or ``package.module.Class``."""
    import anomalib.models

    import anomalib_ext

    if "." in name:
        module_name, _, class_name = name.rpartition(".")
        return getattr(importlib.import_module(module_name), class_name)
    for module in (anomalib_ext, anomalib.models):
        if hasattr(module, name):
            return getattr(module, name)
    msg = f"Unknown model {name!r}: not in anomalib_ext ({anomalib_ext.__all__}) nor anomalib.models."
    raise ValueError(msg)


@contextlib.contextmanager
def weights_never_downloaded() -> Iterator[None]:
    """Build anomalib models with every ``TimmFeatureExtractor`` at random init.

    Some built-ins hard-code ``pre_trained=True`` (``STFPMModel``'s teacher), which asks the hub
    inside ``__init__``; the weights are loaded from the local source right after construction.
    """
    from anomalib.models.components import feature_extractors

    original = feature_extractors.TimmFeatureExtractor.__init__

    def offline_init(self: Any, *args: Any, **kwargs: Any) -> None:
        kwargs["pre_trained"] = False
        original(self, *args, **kwargs)

    feature_extractors.TimmFeatureExtractor.__init__ = offline_init  # type: ignore[method-assign]
    try:
        yield
    finally:
        feature_extractors.TimmFeatureExtractor.__init__ = original  # type: ignore[method-assign]


def build_model(
    model_cls: Any, backbone: str | None, layers: list[str] | None, image_size: int, extra: dict[str, Any]
) -> Any:
    """Instantiate ``model_cls`` offline at ``image_size``, with AUPRO in its evaluator."""
    from anomalib_ext.components.backbone import check_backbone_name, load_into, pretrained_state_dict
    from anomalib_ext.components.evaluation import default_evaluator

    kwargs = dict(extra)
    if backbone:
        kwargs.setdefault("backbone", backbone)
    if layers:
        kwargs.setdefault("layers", layers)
    frozen_attr = ANOMALIB_FROZEN_BACKBONE.get(model_cls.__name__)
    if frozen_attr and "backbone" in kwargs:
        # anomalib's extractor feeds its backbone the pre-processor's output directly: build the
        # network the weights belong to, and normalise the way it was trained
        kwargs["backbone"] = check_backbone_name(kwargs["backbone"])
        kwargs.setdefault("pre_processor", builtin_pre_processor(kwargs["backbone"], image_size))
    kwargs.setdefault("pre_processor", model_cls.configure_pre_processor(image_size=(image_size, image_size)))
    kwargs.setdefault("evaluator", default_evaluator())
    with weights_never_downloaded() if frozen_attr else contextlib.nullcontext():
        model = model_cls(**kwargs)
    if frozen_attr:
        extractor = getattr(model.model, frozen_attr)
        name = kwargs.get("backbone", "")
        load_into(extractor.feature_extractor, pretrained_state_dict(name), name)
    return model


def model_backbone(model: Any, requested: str | None) -> str:
    """The backbone(s) ``model`` was built with, from its hyper-parameters, else what was asked for.

    A row must never name the model class as its backbone: when neither is known, say so.
    """
    hparams = dict(getattr(model, "hparams", {}))
    names = [str(hparams[key]) for key in ("backbone", "teacher1", "teacher2") if hparams.get(key)]
    if not names and requested:
        names = [requested]
    from anomalib_ext.components.backbone import split_timm_name

    resolved = [".".join(filter(None, split_timm_name(name))) for name in dict.fromkeys(names)]
    return " + ".join(resolved) if resolved else "model default"


def builtin_pre_processor(backbone: str, image_size: int) -> Any:
    """Resize and normalise with ``backbone``'s own statistics (TF EfficientNet-Lite: (x - 127) / 128)."""
    from anomalib.pre_processing import PreProcessor
    from torchvision.transforms.v2 import Compose, Normalize, Resize

    from anomalib_ext.components.backbone import backbone_normalisation

    mean, std = backbone_normalisation(backbone)
    return PreProcessor(transform=Compose([Resize((image_size, image_size), antialias=True), Normalize(mean, std)]))


def hardware() -> str:
    """A short description of the machine: GPU name, or CPU model and core count."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    cpu = platform.processor() or "CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores"


def median_ms(run: Callable[[], object], repeats: int = 20, warmup: int = 3) -> float:
    """Median wall time of ``run`` in milliseconds (CUDA synchronised)."""
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
    model: Any, image_size: int, export_root: Path, device: str, precision: str = "f32"
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
    except Exception as error:  # export problems are reported in the row, not fatal to the benchmark
        print(f"OpenVINO export/timing failed: {error}")
        ov_ms = None
    return torch_ms, ov_ms


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """Fit, test and time one model; return the row as a dict."""
    from anomalib.engine import Engine
    from lightning.pytorch import seed_everything

    from anomalib_ext.callbacks import EpochProgress, TestCurve
    from anomalib_ext.data import MVTecStyle

    seed_everything(args.seed, workers=True)
    model_cls = resolve_model_class(args.model)
    model = build_model(model_cls, args.backbone, args.layers, args.image_size, model_arguments(args))
    datamodule = MVTecStyle(
        args.data,
        image_size=args.image_size,
        train_batch_size=args.batch_size,
        eval_batch_size=args.batch_size,
        num_workers=args.num_workers,
    )
    datamodule.setup()
    curve = TestCurve(datamodule.test_dataloader(), args.curve_every) if args.curve_every else None
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="anomalib_ext_bench_"))
    accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    engine = Engine(
        default_root_dir=work,
        max_epochs=args.epochs,
        accelerator=accelerator,
        devices=1,
        logger=False,
        callbacks=[EpochProgress(), *([curve] if curve else [])],
        enable_progress_bar=False,
        check_val_every_n_epoch=args.epochs,  # validation is the test split: run it once, for the thresholds
    )
    start = time.perf_counter()
    engine.fit(model=model, datamodule=datamodule)
    train_seconds = time.perf_counter() - start
    metrics = {k: float(v) for k, v in engine.test(model=model, datamodule=datamodule, verbose=False)[0].items()}
    torch_ms, ov_ms = measure_latency(
        model, args.image_size, work / "export", "cuda" if accelerator == "gpu" else "cpu", args.precision
    )
    row = {
        "model": args.label or model_cls.__name__,
        "dataset": Path(args.data).name,
        "backbone": model_backbone(model, args.backbone),
        "size": args.image_size,
        "epochs": args.epochs,
        "image AUROC": metrics.get("image_AUROC"),
        "pixel AUROC": metrics.get("pixel_AUROC"),
        "AUPRO": metrics.get("pixel_AUPRO"),
        "train time": f"{train_seconds / 60:.1f} min",
        "torch latency": f"{torch_ms:.1f} ms ({'GPU' if accelerator == 'gpu' else 'CPU'})",
        "OpenVINO CPU latency": f"{ov_ms:.1f} ms ({args.precision})" if ov_ms is not None else "export failed",
        "hardware": hardware(),
        "date": dt.date.today().isoformat(),
        "curve (epoch: image / pixel AUROC)": curve_text(curve.points) if curve else "",
        "torch_ms": torch_ms,
        "openvino_ms": ov_ms,
        "metrics": metrics,
        "args": vars(args),
    }
    row["variants"] = [
        {
            **row,
            **variant_row(engine, model, datamodule, variant),
            "model": f"{row['model']} [{variant_label(variant)}]",
        }
        for variant in args.variants
    ]
    if args.deploy_precisions:
        from anomalib_ext.deploy.precision_benchmark import precision_rows

        row["deploy"] = precision_rows(model, datamodule, args.image_size, work / "precisions")
        for deploy_row in row["deploy"]:
            print(json.dumps(deploy_row, default=str))
        if args.output:
            for deploy_row in row["deploy"]:
                append_row(
                    args.output,
                    f"{args.section}: deployment precisions",
                    {**deploy_row, "model": row["model"], "dataset": row["dataset"], "hardware": row["hardware"]},
                    DEPLOY_COLUMNS,
                )
    if args.plots:
        row["_grid"] = grid_maps(model, datamodule, args.grid_images)
    saved = {k: v for k, v in row.items() if not k.startswith("_")}
    (work / "benchmark.json").write_text(json.dumps(saved, indent=2, default=str))
    print(json.dumps({k: v for k, v in saved.items() if k != "args"}, indent=2, default=str))
    return row


def variant_label(variant: dict[str, Any]) -> str:
    return ", ".join(f"{key}={value}" for key, value in variant.items())


def variant_row(engine: Any, model: Any, datamodule: Any, variant: dict[str, Any]) -> dict[str, Any]:
    """Test the trained model again with torch-model attributes changed (e.g. RSTPM's ``score_map``).

    For choices a model can switch after training, so one training scores every form of its map.
    The original values are restored afterwards.
    """
    original = {key: getattr(model.model, key) for key in variant}
    for key, value in variant.items():
        setattr(model.model, key, value)
    try:
        metrics = {k: float(v) for k, v in engine.test(model=model, datamodule=datamodule, verbose=False)[0].items()}
    finally:
        for key, value in original.items():
            setattr(model.model, key, value)
    print(f"variant {variant_label(variant)}: {metrics}")
    return {
        "image AUROC": metrics.get("image_AUROC"),
        "pixel AUROC": metrics.get("pixel_AUROC"),
        "AUPRO": metrics.get("pixel_AUPRO"),
        "curve (epoch: image / pixel AUROC)": "",
        "metrics": metrics,
    }


def model_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """``--model-args``: one JSON object for every model, or ``{"RD4AD": {...}, "Padim": {...}}`` per model."""
    extra = json.loads(args.model_args)
    if args.model in extra and isinstance(extra[args.model], dict):
        return extra[args.model]
    if extra and all(isinstance(value, dict) for value in extra.values()):
        return {}  # per-model arguments, none for this model
    return extra


def grid_maps(model: Any, datamodule: Any, count: int) -> dict[str, Any]:
    """The model's anomaly maps on ``count`` test images spread over the (sorted, fixed) test set."""
    import numpy as np

    dataset = datamodule.test_data
    indices = np.linspace(0, len(dataset) - 1, min(count, len(dataset))).round().astype(int).tolist()
    batch = dataset.collate_fn([dataset[i] for i in indices])
    model = model.cpu().eval()
    with torch.no_grad():
        maps = model(batch.image).anomaly_map
    masks = batch.gt_mask.float().numpy() if batch.gt_mask is not None else None
    return {"images": batch.image.numpy(), "masks": masks, "maps": maps.reshape(len(indices), *maps.shape[-2:]).numpy()}


def write_plots(rows: list[dict[str, Any]], folder: Path, title: str) -> list[Path]:
    """``heatmaps.png`` (every model on the same test images) and ``accuracy_vs_latency.png``."""
    from anomalib_ext.plots import accuracy_vs_latency, heatmap_grid

    written = [accuracy_vs_latency(rows, folder / "accuracy_vs_latency.png", title)]
    grids = [row for row in rows if "_grid" in row]
    if grids:
        first = grids[0]["_grid"]
        maps = {row["model"]: row["_grid"]["maps"] for row in grids}
        written.append(heatmap_grid(first["images"], first["masks"], maps, folder / "heatmaps.png", title))
    return written


def curve_text(points: list[tuple[int, float, float | None]]) -> str:
    """``2: 71.3 / 55.0, 4: ...``: the test AUROC at each scored epoch."""
    return ", ".join(
        f"{epoch}: {100 * image:.1f}" + (f" / {100 * pixel:.1f}" if pixel is not None else "")
        for epoch, image, pixel in points
    )


def format_cell(value: Any) -> str:
    """Metrics as percentages with one decimal, everything else as text."""
    if isinstance(value, float):
        return f"{100 * value:.1f}"
    return str(value)


def append_row(path: Path, section: str, row: dict[str, Any], columns: tuple[str, ...] = COLUMNS) -> None:
    """Append ``row`` to the table under ``## section`` in ``path``, creating either if missing."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    header = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
    line = "| " + " | ".join(format_cell(row.get(column, "")) for column in columns) + " |\n"
    title = f"## {section}\n"
    if title not in text:
        text = text.rstrip("\n") + f"\n\n{title}\n{header}{line}"
    else:
        start = text.index(title) + len(title)
        next_section = text.find("\n## ", start)
        end = len(text) if next_section == -1 else next_section + 1
        body = text[start:end]
        if header not in body:
            body = body.rstrip("\n") + f"\n\n{header}"
        table_end = body.rfind("|\n") + 2
        body = body[:table_end] + line + body[table_end:]
        text = text[:start] + body + text[end:]
    path.write_text(text)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="anomalib-ext benchmark", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model",
        "--models",
        dest="models",
        nargs="+",
        required=True,
        help="one or more of RD4AD, RSTPM, UniAD, EfficientADOffline, Padim, Patchcore, Stfpm, ... or class paths",
    )
    parser.add_argument("--data", required=True, help="MVTec-style folder, e.g. ../shared/datasets/mtd")
    parser.add_argument("--backbone", default=None, help="timm backbone, e.g. efficientnet_lite0")
    parser.add_argument("--layers", nargs="*", default=None, help="backbone layers, e.g. blocks.1 blocks.2 blocks.4")
    parser.add_argument("--model-args", default="{}", help="extra constructor arguments as JSON")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--num-workers", type=int, default=2)
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
        help='after testing, test again with torch-model attributes set, one JSON object each: \'{"score_map": "discriminator"}\'',
    )
    parser.add_argument(
        "--deploy-precisions",
        action="store_true",
        help="also score the OpenVINO export at f32, bf16 and INT8 (accuracy and batch-1 latency, same weights)",
    )
    parser.add_argument(
        "--curve-every", type=int, default=0, help="score the test split every N epochs (the training curve); 0: off"
    )
    parser.add_argument(
        "--precision",
        choices=("f32", "bf16", "f16"),
        default="f32",
        help="OpenVINO inference precision for the latency column (default f32, the same on every CPU)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rows = []
    for name in args.models:  # one after the other, same data, backbone, size, epochs and seed
        run_args = argparse.Namespace(**{**vars(args), "model": name})
        if len(args.models) > 1:
            run_args.label = None
            run_args.work_dir = str(Path(args.work_dir) / name) if args.work_dir else None
        row = run_benchmark(run_args)
        rows.append(row)
        if args.output:
            for table_row in (row, *row["variants"]):
                append_row(args.output, args.section, table_row)
            print(f"Appended to {args.output} under '## {args.section}'.")
    if args.plots:
        title = f"{Path(args.data).name}, {args.backbone or 'default backbones'}, {args.image_size} px, {args.epochs} epochs"
        for path in write_plots(rows, args.plots, title):
            print(f"Wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
