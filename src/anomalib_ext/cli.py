"""``anomalib-ext``: anomalib's CLI with this package's models registered, plus a few tools.

anomalib has no plugin registry: its CLI (jsonargparse) resolves a model given by dotted path,
or by short name among the ``AnomalibModule`` subclasses already imported. Importing
``anomalib_ext`` first makes ``anomalib-ext train --model RD4AD`` work; every other argument is
anomalib's. Extra sub-commands:

- ``demo``: the offline end-to-end demo (train, test, export to OpenVINO, heatmaps);
- ``benchmark``: train and test one model on one dataset and append a row to a Markdown table;
- ``distill-teacher``: pretrain an EfficientAD teacher offline;
- ``predict-folder``: score a folder of images with an exported OpenVINO model, robustly.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence

# sub-command -> "module:function" taking argv and returning an exit code; imported lazily
TOOLS: dict[str, str] = {
    "demo": "anomalib_ext.demo:main",
    "benchmark": "anomalib_ext.benchmark:main",
    "distill-teacher": "anomalib_ext.models.efficientad.teacher:main",
    "predict-folder": "anomalib_ext.deploy:main",
}


def _load(target: str) -> Callable[[list[str]], int]:
    module_name, _, function = target.partition(":")
    return getattr(importlib.import_module(module_name), function)


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch to one of our tools, or to anomalib's CLI with our models importable by short name."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in TOOLS:
        return int(_load(TOOLS[args[0]])(args[1:]) or 0)
    if not args or args[0] in {"-h", "--help"}:
        print(f"anomalib-ext tools: {', '.join(TOOLS)}; anything else is passed to anomalib's CLI:\n")
    from anomalib.cli.cli import main as anomalib_main

    import anomalib_ext  # noqa: F401  (registers RD4AD, RSTPM, ... as AnomalibModule subclasses)

    sys.argv = ["anomalib-ext", *args]
    anomalib_main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
