"""Lightning plugins that anomalib's Engine accepts through ``Engine(plugins=[...])``."""

from __future__ import annotations

from typing import Any

from anomalib.engine.plugins import AnomalibCheckpointIO


def _storage_on_cpu(storage: Any, _location: str) -> Any:
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

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool = True) -> dict[str, Any]:
        """Load with storages on the CPU unless a ``map_location`` is given."""
        return super().load_checkpoint(path, map_location=map_location or _storage_on_cpu, weights_only=weights_only)
