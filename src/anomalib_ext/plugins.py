"""Lightning plugins that anomalib's Engine accepts through ``Engine(plugins=[...])``, and the CLI's default."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from anomalib.engine.plugins import AnomalibCheckpointIO
from lightning.fabric.plugins import CheckpointIO

if TYPE_CHECKING:
    import torch
    from lightning.fabric.utilities.types import _MAP_LOCATION_TYPE, _PATH


def _storage_on_cpu(storage: torch.UntypedStorage, _location: str) -> torch.UntypedStorage:
    return storage


class DeviceSafeCheckpointIO(AnomalibCheckpointIO):
    """anomalib's checkpoint IO, but a checkpoint written on a GPU restores on a CPU-only machine.

    anomalib 2.7's ``AnomalibCheckpointIO.load_checkpoint`` defaults ``map_location`` to ``None``
    (Lightning's own default keeps storages on the CPU), so ``Engine.test(ckpt_path=...)`` /
    ``anomalib test --ckpt_path`` of a GPU checkpoint fails on a CPU machine with "Attempting to
    deserialize object on a CUDA device". This restores Lightning's default; Lightning then moves
    the weights to whatever device the trainer uses. The Engine recognises it as its own IO and
    keeps it (with the model's safe globals for ``weights_only`` loading).

    Example:
        >>> from anomalib.engine import Engine
        >>> engine = Engine(plugins=[DeviceSafeCheckpointIO()])  # doctest: +SKIP
    """

    def load_checkpoint(
        self,
        path: _PATH,
        map_location: _MAP_LOCATION_TYPE = None,
        weights_only: bool = True,
    ) -> dict[str, Any]:
        """Load with storages on the CPU unless a ``map_location`` is given."""
        return super().load_checkpoint(path, map_location=map_location or _storage_on_cpu, weights_only=weights_only)


def with_device_safe_checkpoint_io(plugins: object = None, strategy: object = None) -> object:
    """``plugins`` plus a :class:`DeviceSafeCheckpointIO`, unless a checkpoint IO is already chosen.

    Used for the ``anomalib-ext`` CLI's trainer so that ``--ckpt_path`` of a GPU checkpoint works
    on a CPU machine by default. A user's own choice wins: if ``plugins`` (one plugin, a list, or
    ``None``) already holds a ``CheckpointIO``, or ``strategy`` was built with one (Lightning
    refuses a checkpoint IO on both), ``plugins`` is returned unchanged; other plugins (precision,
    environment, ...) are kept.

    Args:
        plugins: the trainer's ``plugins`` argument as given.
        strategy: the trainer's ``strategy`` argument as given (a name or a ``Strategy``).

    Returns:
        ``plugins`` unchanged, or a new list of its entries with a ``DeviceSafeCheckpointIO`` appended.
    """
    if plugins is None:
        entries: list[Any] = []
    elif isinstance(plugins, list | tuple):
        entries = list(plugins)
    else:
        entries = [plugins]
    # the private slot: Lightning strategies expose a default ``checkpoint_io`` property even when none was given
    if any(isinstance(plugin, CheckpointIO) for plugin in entries) or isinstance(
        getattr(strategy, "_checkpoint_io", None),
        CheckpointIO,
    ):
        return plugins
    return [*entries, DeviceSafeCheckpointIO()]
