"""``anomalib-ext``: anomalib's CLI with this package's models registered, plus a few tools.

anomalib has no plugin registry: its CLI (jsonargparse) resolves a model given by dotted path,
or by short name among the ``AnomalibModule`` subclasses already imported. Importing
``anomalib_ext`` first makes ``anomalib-ext train --model RD4AD`` work; every other argument is
anomalib's. Two defaults differ from ``anomalib``'s own command:

- the trainer restores checkpoints with :class:`~anomalib_ext.plugins.DeviceSafeCheckpointIO`, so
  ``anomalib-ext test --ckpt_path`` of a checkpoint written on a GPU works on a CPU-only machine
  (a checkpoint IO given with ``--trainer.plugins`` or on the strategy is kept instead);
- the FutureWarnings that anomalib's and timm's modules raise about their own deprecated imports
  are not printed (they are not the user's to act on). Only our entry point filters them: importing
  the library changes no warning filter. (The console script imports the package, and with it
  anomalib, before :func:`main` runs; those import-time warnings go only once that import is lazy.)

Extra sub-commands:

- ``demo``: the offline end-to-end demo (train, test, export to OpenVINO, heatmaps);
- ``benchmark``: train and test one model on one dataset and append a row to a Markdown table;
- ``profile``: where a training step's time goes (data, frozen and trained networks, backward, optimiser);
- ``distill-teacher``: pretrain an EfficientAD teacher offline;
- ``predict-folder``: score a folder of images with an exported OpenVINO model, robustly.
"""

from __future__ import annotations

import functools
import importlib
import sys
import warnings
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable, Generator, Sequence

    from anomalib.cli.cli import AnomalibCLI

# sub-command -> "module:function" taking argv and returning an exit code; imported lazily
TOOLS: dict[str, str] = {
    "demo": "anomalib_ext.demo:main",
    "benchmark": "anomalib_ext.benchmark:main",
    "profile": "anomalib_ext.benchmark.profile:main",
    "distill-teacher": "anomalib_ext.models.efficientad.teacher:main",
    "predict-folder": "anomalib_ext.deploy:main",
}

# modules whose FutureWarnings concern their own imports of deprecated modules (timm.models.layers,
# anomalib's dinov2 package), raised while anomalib.models imports every built-in model
QUIET_MODULES = r"(anomalib|timm)(\..*)?"


@contextmanager
def third_party_future_warnings_hidden() -> Generator[None, None, None]:
    """Hide FutureWarnings raised from anomalib's and timm's own modules while a command runs.

    Scoped (``warnings.catch_warnings``) so that calling :func:`main` in-process leaves the caller's
    filters as they were; FutureWarnings raised from any other module (the user's, ours) still show.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module=QUIET_MODULES)
        yield


def _load(target: str) -> Callable[[list[str]], int]:
    module_name, _, function = target.partition(":")
    return getattr(importlib.import_module(module_name), function)


@functools.cache
def anomalib_cli_class() -> type[AnomalibCLI]:
    """Anomalib's ``AnomalibCLI`` with :class:`~anomalib_ext.plugins.DeviceSafeCheckpointIO` as default.

    Built on first use so that dispatching to one of our tools does not import anomalib's CLI.
    """
    from anomalib.cli.cli import AnomalibCLI

    from anomalib_ext.plugins import with_device_safe_checkpoint_io

    class AnomalibExtCLI(AnomalibCLI):
        """Adds ``DeviceSafeCheckpointIO`` to the trainer's plugins unless a checkpoint IO is configured."""

        def instantiate_engine(self) -> None:
            """Amend the parsed trainer arguments, then let anomalib build the ``Engine`` from them."""
            trainer = self._get(self.config_init, "trainer")
            if trainer is not None:  # sub-commands without a trainer (export) restore through Lightning's loader
                trainer["plugins"] = with_device_safe_checkpoint_io(trainer.get("plugins"), trainer.get("strategy"))
            super().instantiate_engine()

    return AnomalibExtCLI


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch to one of our tools, or to anomalib's CLI with our models importable by short name."""
    args = list(sys.argv[1:] if argv is None else argv)
    with third_party_future_warnings_hidden():
        if args and args[0] in TOOLS:
            return int(_load(TOOLS[args[0]])(args[1:]) or 0)
        if not args or args[0] in {"-h", "--help"}:
            print(f"anomalib-ext tools: {', '.join(TOOLS)}; anything else is passed to anomalib's CLI:\n")
        from anomalib.loggers import configure_logger

        # registers our models as AnomalibModule subclasses, so that --model takes their short names
        from anomalib_ext import RD4AD, RSTPM, EfficientADOffline, UniAD  # noqa: F401

        cli_class = anomalib_cli_class()
        saved_argv = sys.argv
        # Lightning's DDP launcher starts the other ranks by re-running sys.argv: keep the script's own path
        sys.argv = [saved_argv[0] if argv is None else "anomalib-ext", *args]
        try:
            configure_logger()
            cli_class(args)
        finally:
            sys.argv = saved_argv
    return 0


if __name__ == "__main__":
    sys.exit(main())
