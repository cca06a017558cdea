"""The training images in order, on every rank: for statistics a model fits on its training data.

Lightning's training loader is shuffled and, under DDP, sharded: statistics taken from it would
differ between ranks (and DDP would silently keep rank 0's). Models that fit statistics on the
training images (EfficientAD's teacher normalisation, RD4AD's residual Gaussians) read them
through :func:`ordered_loader` instead, so every rank fits the same numbers as one process.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch.utils.data import DataLoader

if TYPE_CHECKING:
    from anomalib.data import AnomalibDataset
    from lightning.pytorch import Trainer


def ordered_loader(dataset: AnomalibDataset, trainer: Trainer | None) -> DataLoader:
    """All of ``dataset`` in order, unsharded, in batches of the data module's eval batch size (8 without one)."""
    batch_size = getattr(getattr(trainer, "datamodule", None), "eval_batch_size", 8)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=dataset.collate_fn)
