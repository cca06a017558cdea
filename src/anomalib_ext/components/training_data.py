"""The training images in order, on every rank: for statistics a model fits on its training data.

Lightning's training loader is shuffled and, under DDP, sharded: statistics taken from it would
differ between ranks (and DDP would silently keep rank 0's). Models that fit statistics on the
training images (EfficientAD's teacher normalisation, RD4AD's residual Gaussians) read them
through :func:`ordered_loader` instead, so every rank fits the same numbers as one process, and
see each batch through :func:`preprocessed_batches`, as their training step does;
:func:`fit_on_training_images` does both for statistics fitted during ``fit`` (RD4AD's and RSTPM's
residual Gaussians), without disturbing training's random stream.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch.utils.data import DataLoader

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

    from anomalib.data import AnomalibDataset, Batch
    from anomalib.models.components import AnomalibModule
    from lightning.pytorch import Trainer


def ordered_loader(dataset: AnomalibDataset, trainer: Trainer | None) -> DataLoader:
    """All of ``dataset`` in order, unsharded, in batches of the data module's eval batch size (8 without one)."""
    batch_size = getattr(getattr(trainer, "datamodule", None), "eval_batch_size", 8)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=dataset.collate_fn)


def preprocessed_batches(loader: Iterable[Batch], module: AnomalibModule) -> Iterator[tuple[Batch, torch.Tensor]]:
    """Each batch with its images on ``module``'s device after the pre-processor's training transform.

    Outside Lightning's loop nothing applies that transform (anomalib's ``PreProcessor`` does it in its
    ``on_*_batch_start`` hooks), so this does it the same way: skipped when there is no transform.
    """
    transform = getattr(module.pre_processor, "transform", None)
    for batch in loader:
        images = batch.image.to(module.device)
        yield batch, transform(images) if transform else images


def fit_on_training_images(module: AnomalibModule, fit: Callable[[Iterator[tuple[Batch, torch.Tensor]]], None]) -> bool:
    """Call ``fit`` on the attached trainer's training images, in order, as :func:`preprocessed_batches` gives them.

    The pass runs under ``torch.random.fork_rng``: a data loader draws a seed from the global random state, and
    without restoring it the next epoch's shuffle (and so the trained weights) would change. It also runs under
    the trainer's precision context (bfloat16 autocast for ``bf16-mixed``), as validation and test steps do, so
    what is fitted sees the features the model is scored with; outside it, bf16 teacher features cached in
    training would meet float32 students. Returns ``False``, calling nothing, when no trainer or no training
    data is attached (test or predict from a checkpoint).
    """
    trainer = module._trainer  # noqa: SLF001  # Lightning's ``trainer`` property raises when none is attached
    training = None if trainer is None else trainer.train_dataloader
    if training is None:
        return False
    loader = ordered_loader(training.dataset, trainer)  # every image on every rank, as one process
    with torch.random.fork_rng(devices=[]), trainer.precision_plugin.forward_context():
        fit(preprocessed_batches(loader, module))
    return True
