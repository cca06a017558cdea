"""anomalib-ext: faithful RD4AD, RSTPM, UniAD and EfficientAD as anomalib 2.x model plugins.

anomalib's CLI resolves dotted class paths, so ``anomalib train --model anomalib_ext.RD4AD`` works
once this package is installed; the ``anomalib-ext`` console script also accepts short names.
The models are imported on first access (``anomalib_ext.RD4AD``), not with the package, so that
``anomalib-ext`` can set its warning filters before anomalib is imported.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .models.efficientad import EfficientADOffline
    from .models.rd4ad import RD4AD
    from .models.rstpm import RSTPM
    from .models.uniad import UniAD

__all__: list[str] = ["RD4AD", "RSTPM", "EfficientADOffline", "UniAD"]


def __getattr__(name: str) -> type:
    """Import a model class on first access (PEP 562)."""
    modules = {
        "RD4AD": ".models.rd4ad",
        "RSTPM": ".models.rstpm",
        "EfficientADOffline": ".models.efficientad",
        "UniAD": ".models.uniad",
    }
    if name in modules:
        return getattr(importlib.import_module(modules[name], __name__), name)
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)
