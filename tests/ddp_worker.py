"""Train and test one tiny model under Lightning's DDP strategy on CPU (gloo) and record each rank's state.

Run as a script (Lightning's DDP launcher re-executes this command line once per extra rank)::

    python tests/ddp_worker.py --model rd4ad --data DIR --out DIR --devices 2

Each rank writes ``rank<r>.json``: a digest of every parameter and buffer after training, the
model-specific state that must agree across ranks (EfficientAD's teacher statistics and map
quantiles, RSTPM's stage per epoch), the test metrics, and the image threshold with each test
image's raw score (to explain a metric that differs). With ``--devices 2``, rank 0 then tears
the process group down and tests the same weights in a single process, so the test can check
that the distributed metrics equal the single-process ones.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from anomalib.engine import Engine
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything

if TYPE_CHECKING:
    from anomalib.data import AnomalibDataModule, Batch
    from anomalib.models import AnomalibModule

    from anomalib_ext import EfficientADOffline

SIZE = 64
LITE0_LAYERS = ("blocks.1", "blocks.2", "blocks.4")


def build(name: str, teacher: str | None) -> AnomalibModule:
    """The smallest configuration of each model that still runs its whole training logic."""
    from anomalib_ext import RD4AD, RSTPM, EfficientADOffline, UniAD

    if name == "rd4ad":  # with the option that fits statistics on the training images, as EfficientAD does
        return RD4AD(
            backbone="efficientnet_lite0",
            layers=LITE0_LAYERS,
            distance="residual_gaussian",
            pre_processor=RD4AD.configure_pre_processor((SIZE, SIZE)),
            visualizer=False,
        )
    if name == "rstpm":
        return RSTPM(
            teacher1="efficientnet_lite0",
            teacher2="efficientnet_lite0",
            layers1=(*LITE0_LAYERS, "blocks.6"),
            layers2=LITE0_LAYERS,
            discriminator_width=8,  # stage 1 = a quarter of max_epochs=2, rounded up to 1 epoch
            pre_processor=RSTPM.configure_pre_processor((SIZE, SIZE)),
            visualizer=False,
        )
    if name == "uniad":
        return UniAD(
            backbone="efficientnet_lite0",
            input_size=(SIZE, SIZE),
            hidden_dim=32,
            num_encoder_layers=1,
            num_decoder_layers=1,
            num_heads=4,
            dim_feedforward=64,
            neighbor_size=(3, 3),
            visualizer=False,
        )
    if name == "efficientad":
        return EfficientADOffline(teacher_weights=teacher, image_size=128, visualizer=False)
    raise ValueError(name)


def digest(module: torch.nn.Module) -> dict[str, list[float]]:
    """Sum and sum of squares of each floating tensor: equal across ranks iff the weights are."""
    return {
        key: [float(value.double().sum()), float(value.double().pow(2).sum())]
        for key, value in module.state_dict().items()
        if value.is_floating_point()
    }


def efficientad_statistics(model: EfficientADOffline, data: AnomalibDataModule) -> dict[str, float]:
    """Largest gap between the trained statistics and the same statistics recomputed in one process."""
    from torch.utils.data import DataLoader

    from anomalib_ext.models.efficientad.teacher import channel_statistics

    net = model.model.eval()
    trained = {name: getattr(net, name).clone() for name in ("teacher_mean", "teacher_std", "q_st", "q_ae")}
    loader = DataLoader(data.train_data, batch_size=4, collate_fn=data.train_data.collate_fn)
    with torch.no_grad():
        mean, std = channel_statistics(
            net.teacher(net.normalize_input(model.pre_processor.transform(b.image))) for b in loader
        )
        model.compute_map_quantiles()  # from the held-out training images, as at the end of fit
    expected = {"teacher_mean": mean, "teacher_std": std, "q_st": net.q_st, "q_ae": net.q_ae}
    gaps = {name: float((trained[name] - expected[name].reshape(trained[name].shape)).abs().max()) for name in trained}
    gaps["train_images"] = len(data.train_data)
    gaps["holdout_images"] = len(data.holdout_data)
    return gaps


def rd4ad_statistics(model: AnomalibModule, data: AnomalibDataModule) -> dict[str, float]:
    """Largest relative gap between the residual Gaussians fitted under DDP and refitted here on all training images."""
    fitted = [(gaussian.mean.clone(), gaussian.precision.clone()) for gaussian in model.model.residual_gaussians]
    transform = model.pre_processor.transform
    model.model.fit_residual_gaussians((transform(batch.image), None) for batch in data.train_dataloader())
    gaps: dict[str, float] = {}
    for index, (gaussian, (mean, precision)) in enumerate(zip(model.model.residual_gaussians, fitted, strict=True)):
        gaps[f"mean {index}"] = float((gaussian.mean - mean).abs().max() / mean.abs().max())
        gaps[f"precision {index}"] = float((gaussian.precision - precision).abs().max() / precision.abs().max())
    gaps["train_images"] = len(data.train_data)
    return gaps


class StagesSeen(Callback):
    """Record RSTPM's stage at the start of every training epoch."""

    def __init__(self) -> None:
        self.stages: list[int] = []

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Append the stage the epoch trains in (models without stages add nothing)."""
        del trainer  # Lightning's hook signature
        if hasattr(pl_module, "stage"):
            self.stages.append(int(pl_module.stage))


class ImageScores(Callback):
    """Each test image's raw ``pred_score`` (before normalisation), by image path, bit for bit.

    Trainer callbacks run before the model's own (Lightning puts ``configure_callbacks`` after
    them), so the scores are read before anomalib's post-processor normalises them in place.
    """

    def __init__(self) -> None:
        self.scores: dict[str, float] = {}

    def on_test_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Batch, *args) -> None:
        """Store each image's score under its path."""
        del trainer, pl_module, args  # Lightning's hook signature; batch index and dataloader index unused
        for path, score in zip(outputs.image_path, outputs.pred_score.reshape(-1).tolist(), strict=True):
            self.scores[str(path)] = score


def scores_record(model: AnomalibModule, scores: ImageScores) -> dict[str, Any]:
    """The raw image threshold the labels come from and this process's test scores (JSON floats round-trip)."""
    threshold = getattr(getattr(model, "post_processor", None), "image_threshold", None)
    return {"image_threshold": float("nan") if threshold is None else float(threshold), "image_scores": scores.scores}


def datamodule(args: argparse.Namespace) -> AnomalibDataModule:
    """The brick category, or every category of ``--data`` with ``--unified``; 128 px for EfficientAD."""
    from anomalib_ext.data import MVTecStyle, UnifiedMultiClass

    options: dict[str, Any] = {"image_size": SIZE, "train_batch_size": 4, "eval_batch_size": 2, "num_workers": 0}
    if args.model == "efficientad":
        options["image_size"] = 128
        options["holdout_fraction"] = 0.1
    if args.unified:
        return UnifiedMultiClass(args.data, **options)
    return MVTecStyle(Path(args.data) / "brick", **options)


def category_metrics(args: argparse.Namespace) -> list[Callback]:
    """Per-category metrics, added explicitly when the data is unified."""
    from anomalib_ext.callbacks import PerCategoryMetrics

    return [PerCategoryMetrics()] if args.unified else []


def per_category(trainer: Trainer) -> dict[str, dict[str, float]]:
    """The trainer's per-category test metrics, when a ``PerCategoryMetrics`` callback collected them."""
    from anomalib_ext.callbacks import PerCategoryMetrics

    for callback in trainer.callbacks:
        if isinstance(callback, PerCategoryMetrics):
            return callback.results()
    return {}


def main() -> None:
    """Train and test on this rank, write ``rank<r>.json``; rank 0 also tests in a single process."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--teacher", default=None)
    parser.add_argument("--unified", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    seed_everything(0, workers=True)
    model = build(args.model, args.teacher)
    data = datamodule(args)
    stages = StagesSeen()
    scores = ImageScores()
    engine = Engine(
        default_root_dir=args.out / "run",
        accelerator="cpu",
        devices=args.devices,
        strategy="ddp" if args.devices > 1 else "auto",
        max_epochs=2,
        logger=False,
        enable_progress_bar=False,
        callbacks=[stages, scores, *category_metrics(args)],
    )
    engine.fit(model=model, datamodule=data)
    metrics = engine.test(model=model, datamodule=data, verbose=False)[0]
    rank = engine.trainer.global_rank
    record: dict[str, Any] = {
        "world_size": engine.trainer.world_size,
        "digest": digest(model.model),
        "stages": stages.stages,
        "metrics": {key: float(value) for key, value in metrics.items()},
        "per_category": per_category(engine.trainer),
        # this rank's shard only: the test gathers both ranks' records
        "scores": scores_record(model, scores),
    }
    if args.devices > 1 and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
        if rank == 0:  # the same weights, tested in one process
            single_scores = ImageScores()
            single = Engine(
                default_root_dir=args.out / "single",
                accelerator="cpu",
                devices=1,
                logger=False,
                enable_progress_bar=False,
                callbacks=[single_scores, *category_metrics(args)],
            )
            reference = single.test(model=model, datamodule=datamodule(args), verbose=False)[0]
            record["single_process_metrics"] = {key: float(value) for key, value in reference.items()}
            record["single_process_scores"] = scores_record(model, single_scores)
            record["single_process_per_category"] = per_category(single.trainer)
            if args.model == "efficientad":
                record["efficientad"] = efficientad_statistics(model, data)
            if args.model == "rd4ad":
                record["rd4ad"] = rd4ad_statistics(model, data)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"rank{rank}.json").write_text(json.dumps(record, indent=1))
    print(f"rank {rank} (pid {os.getpid()}) wrote {args.out / f'rank{rank}.json'}")


if __name__ == "__main__":
    main()
