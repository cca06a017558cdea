"""The training images in order, on every rank: for statistics a model fits on its training data.

Lightning's training loader is shuffled and, under DDP, sharded: statistics taken from it would
differ between ranks (and DDP would silently keep rank 0's). Models that fit statistics on the
training images (EfficientAD's teacher normalisation, RD4AD's residual Gaussians) read them
through :func:`ordered_loader` instead, so every rank fits the same numbers as one process, and
see each batch through :func:`preprocessed_batches`, as their training step does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch.utils.data import DataLoader

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    import torch
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
