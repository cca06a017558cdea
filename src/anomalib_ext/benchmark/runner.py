"""Train, test and time one benchmark row (and its after-training variants and deployment precisions)."""

from __future__ import annotations

import datetime as dt
import json
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from anomalib_ext.components.cpu_bf16 import warn_if_bf16_is_slow

from .models import build_model, model_arguments, model_backbone, resolve_model_class
from .report import DEPLOY_COLUMNS, append_row, curve_text, grid_maps, variant_label
from .timing import hardware, measure_latency

if TYPE_CHECKING:
    import argparse

    from anomalib.data import AnomalibDataModule
    from anomalib.engine import Engine
    from anomalib.models import AnomalibModule

    from anomalib_ext.data import MVTecStyle


def data_folders(data: str | Path | list[str]) -> list[Path]:
    """The row's MVTec-style folders: one, or several trained as one unified multi-class set."""
    return [Path(folder) for folder in ([data] if isinstance(data, str | Path) else data)]


def dataset_name(data: str | Path | list[str]) -> str:
    """The row's dataset column: the folder's name, or ``unified: a + b + ...`` for several."""
    names = [folder.name for folder in data_folders(data)]
    return names[0] if len(names) == 1 else "unified: " + " + ".join(names)


def make_datamodule(args: argparse.Namespace, model_cls: type[AnomalibModule]) -> MVTecStyle:
    """The row's data at the row's size, with the model's data arguments.

    One folder is an :class:`~anomalib_ext.data.MVTecStyle` module; several are one
    :class:`~anomalib_ext.data.UnifiedMultiClass` set (UniAD's unified setting: one model, no class label).
    """
    from anomalib_ext.data import MVTecStyle, UnifiedMultiClass

    folders = data_folders(args.data)
    unified = len(folders) > 1
    datamodule = (UnifiedMultiClass if unified else MVTecStyle)(
        **({"roots": folders} if unified else {"root": folders[0]}),
        image_size=args.image_size,
        train_batch_size=args.batch_size,
        eval_batch_size=args.batch_size,
        num_workers=args.num_workers,
        cache_images=not getattr(args, "no_image_cache", False),
        landscape=getattr(args, "landscape", False),
        **getattr(model_cls, "data_arguments", {}),
    )
    datamodule.setup()
    return datamodule


def epochs_that_run(model: AnomalibModule, requested: int) -> int:
    """The epochs ``model`` trains for under a budget of ``requested``.

    anomalib's one-pass models (PaDiM, PatchCore: ``trainer_arguments`` ``max_epochs=1``) override
    the trainer's budget. Validation must run at that last epoch: it fits their memory bank and
    sets the post-processor's thresholds and normalisation, without which every test score is
    clamped to the same value (an AUROC of exactly 50).
    """
    return min(requested, int(model.trainer_arguments.get("max_epochs") or requested))


def work_dir_for(work_dir: str | None, seed: int) -> Path:
    """Where a row's checkpoints and exports go: ``work_dir``, or ``work_dir_seed{N}`` for a seed other than 0.

    A spec names one folder per row; a second seed of the same row gets its own folder beside it instead
    of overwriting the first seed's checkpoints. Without ``work_dir``, a fresh temporary folder.
    """
    if not work_dir:
        return Path(tempfile.mkdtemp(prefix="anomalib_ext_bench_"))
    return Path(f"{work_dir}_seed{seed}") if seed else Path(work_dir)


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """Fit, test and time one model; return the row as a dict."""
    from anomalib.engine import Engine
    from lightning.pytorch import seed_everything

    from anomalib_ext.callbacks import EpochProgress, PerCategoryMetrics, TestCurve, default_category_metrics

    seed_everything(args.seed, workers=True)
    model_cls = resolve_model_class(args.model)
    model = build_model(model_cls, args.backbone, args.layers, args.image_size, model_arguments(args))
    datamodule = make_datamodule(args, model_cls)
    epochs = epochs_that_run(model, args.epochs)
    categories = getattr(datamodule, "image_categories", None)  # only unified data has categories
    per_category = PerCategoryMetrics(default_category_metrics(aupro=True)) if categories else None
    curve = TestCurve(datamodule.test_dataloader(), args.curve_every, categories) if args.curve_every else None
    work = work_dir_for(args.work_dir, args.seed)
    accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    warn_if_bf16_is_slow(getattr(args, "train_precision", "32-true"), "cuda" if accelerator == "gpu" else "cpu")
    engine = Engine(
        default_root_dir=work,
        max_epochs=args.epochs,
        accelerator=accelerator,
        devices=1,
        logger=False,
        callbacks=[EpochProgress(), *([curve] if curve else []), *([per_category] if per_category else [])],
        enable_progress_bar=False,
        # validation is the test split: run it once, at the last epoch that runs, for the thresholds
        check_val_every_n_epoch=epochs,
        precision=getattr(args, "train_precision", "32-true"),
    )
    start = time.perf_counter()
    engine.fit(model=model, datamodule=datamodule)
    train_seconds = time.perf_counter() - start
    metrics = test_metrics(engine, model, datamodule)
    torch_ms, ov_ms = measure_latency(
        model,
        args.image_size,
        work / "export",
        "cuda" if accelerator == "gpu" else "cpu",
        args.precision,
    )
    row = {
        "model": (args.label or model_cls.__name__) + (f" (seed {args.seed})" if args.seed else ""),
        "dataset": dataset_name(args.data),
        "train precision": getattr(args, "train_precision", "32-true"),
        "backbone": model_backbone(model, args.backbone),
        "size": args.image_size,
        "epochs": epochs,
        "image AUROC": metrics.get("image_AUROC"),
        "pixel AUROC": metrics.get("pixel_AUROC"),
        "AUPRO": metrics.get("pixel_AUPRO"),
        "train time": f"{train_seconds / 60:.1f} min",
        "torch latency": f"{torch_ms:.1f} ms ({'GPU' if accelerator == 'gpu' else 'CPU'})",
        "OpenVINO CPU latency": f"{ov_ms:.1f} ms ({args.precision})" if ov_ms is not None else "export failed",
        "hardware": hardware(),
        "date": dt.datetime.now().astimezone().date().isoformat(),  # the local date, as date.today()
        "curve (epoch: image / pixel AUROC)": curve_text(curve.points, curve.losses) if curve else "",
        "torch_ms": torch_ms,
        "openvino_ms": ov_ms,
        "metrics": metrics,
        "args": vars(args),
    }
    row["categories"] = [
        {
            **row,
            "dataset": category,
            "image AUROC": values.get("image_AUROC"),
            "pixel AUROC": values.get("pixel_AUROC"),
            "AUPRO": values.get("pixel_AUPRO"),
            "curve (epoch: image / pixel AUROC)": "",
            "metrics": values,
        }
        for category, values in (per_category.results().items() if per_category else ())
    ]
    row["variants"] = [
        {
            **row,
            **variant_row(engine, model, datamodule, variant),
            "model": f"{row['model']} [{variant_label(variant)}]",
        }
        for variant in args.variants
    ]
    if args.deploy_precisions:
        from .precision import precision_rows

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


def load_trained(args: argparse.Namespace, checkpoint: Path) -> tuple[AnomalibModule, MVTecStyle]:
    """The row's model and data module, the model built as its run built it and ``checkpoint`` loaded strictly.

    Loads the weights and the fitted statistics (quantiles, Gaussians) the checkpoint holds.
    """
    model_cls = resolve_model_class(args.model)
    model = build_model(model_cls, args.backbone, args.layers, args.image_size, model_arguments(args))
    model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"])
    return model, make_datamodule(args, model_cls)


def rescore_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """Score the row trained earlier in ``args.work_dir`` with ``args.variants``, without training it again.

    Reads the row's ``benchmark.json`` and the last checkpoint under the folder, builds the model as the
    row did and loads its weights (and fitted statistics) strictly, then tests each variant as
    :func:`variant_row` does after training, at ``--train-precision`` (a precision other than the row's
    own is named in each new row, e.g. ``[score_map=combined, scored in 32-true]``; ``{}`` scores the row
    itself). Returns the saved row with only the new variant rows;
    they are also added to ``benchmark.json``. Only a one-folder row (unified rows score per category).
    """
    from anomalib.engine import Engine
    from lightning.pytorch import seed_everything

    if not args.work_dir:
        msg = "--rescore needs the --work-dir the row trained in (its benchmark.json and checkpoint)."
        raise ValueError(msg)
    work = work_dir_for(args.work_dir, args.seed)
    saved_path = work / "benchmark.json"
    checkpoints = sorted(work.rglob("weights/lightning/*.ckpt"), key=lambda path: path.stat().st_mtime)
    if not saved_path.is_file() or not checkpoints:
        msg = (
            f"--rescore scores a row trained earlier: it needs {saved_path} and a checkpoint under "
            f"{work}/**/weights/lightning/. Run the row once without --rescore (same --work-dir and --seed) first."
        )
        raise FileNotFoundError(msg)
    if len(data_folders(args.data)) > 1:
        msg = "--rescore takes one data folder; a unified row is scored per category during its own run."
        raise ValueError(msg)
    if not args.variants:
        msg = "--rescore needs --variants: the row itself is already in the table."
        raise ValueError(msg)
    if args.plots or args.deploy_precisions:
        msg = "--rescore appends variant rows only; run the row without it for --plots or --deploy-precisions."
        raise ValueError(msg)
    saved = json.loads(saved_path.read_text())
    seed_everything(args.seed, workers=True)
    model, datamodule = load_trained(args, checkpoints[-1])
    engine = Engine(
        default_root_dir=work / "rescore",
        max_epochs=1,
        accelerator="gpu" if torch.cuda.is_available() else "cpu",  # as the row's own run
        devices=1,
        logger=False,
        enable_progress_bar=False,
        precision=getattr(args, "train_precision", "32-true"),
    )
    today = dt.datetime.now().astimezone().date().isoformat()
    base = {key: value for key, value in saved.items() if key not in {"variants", "categories"}}
    # the same weights scored at another precision than they trained in: say so in the row's name
    scored_in = getattr(args, "train_precision", "32-true")
    precision_note = [] if scored_in == base.get("train precision", "32-true") else [f"scored in {scored_in}"]
    rows = [
        {
            **base,
            **variant_row(engine, model, datamodule, variant),
            "model": f"{base['model']} [{', '.join(filter(None, [variant_label(variant), *precision_note]))}]",
        }
        | {"date": today}
        for variant in args.variants
    ]
    saved["variants"] = [*saved.get("variants", []), *rows]
    saved_path.write_text(json.dumps(saved, indent=2, default=str))
    return {**base, "categories": [], "variants": rows}


def test_metrics(engine: Engine, model: AnomalibModule, datamodule: AnomalibDataModule) -> dict[str, float]:
    """Test once and return the metrics; on unified data the per-category means, under the usual names.

    UniAD's protocol scores each category on its own and reports their mean
    (:class:`~anomalib_ext.callbacks.PerCategoryMetrics` logs ``<metric>/mean``); anomalib's own metrics
    would rank one category's scores against another's.
    """
    results = engine.test(model=model, datamodule=datamodule, verbose=False)[0]
    metrics = {key: float(value) for key, value in results.items()}
    means = {key.removesuffix("/mean"): value for key, value in metrics.items() if key.endswith("/mean")}
    return means or metrics


def variant_row(
    engine: Engine,
    model: AnomalibModule,
    datamodule: AnomalibDataModule,
    variant: dict[str, Any],
) -> dict[str, Any]:
    """Test the trained model again with torch-model attributes changed (e.g. RSTPM's ``score_map``).

    For choices a model can switch after training, so one training scores every form of its map.
    Another map has another scale, so the post-processor's thresholds and normalisation are refit
    on the validation split first (anomalib clamps normalised scores, and stale statistics would
    tie them); the original attributes and post-processor state are restored afterwards.
    """
    import copy

    original = {key: getattr(model.model, key) for key in variant}
    post_processor = getattr(model, "post_processor", None)
    saved_state = copy.deepcopy(post_processor.state_dict()) if post_processor is not None else None
    for key, value in variant.items():
        setattr(model.model, key, value)
    try:
        engine.validate(model=model, datamodule=datamodule, verbose=False)
        metrics = test_metrics(engine, model, datamodule)
    finally:
        for key, value in original.items():
            setattr(model.model, key, value)
        if post_processor is not None and saved_state is not None:
            post_processor.load_state_dict(saved_state)
    print(f"variant {variant_label(variant)}: {metrics}")
    return {
        "image AUROC": metrics.get("image_AUROC"),
        "pixel AUROC": metrics.get("pixel_AUROC"),
        "AUPRO": metrics.get("pixel_AUPRO"),
        "curve (epoch: image / pixel AUROC)": "",
        "metrics": metrics,
    }
