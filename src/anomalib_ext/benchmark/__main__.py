"""``python -m anomalib_ext.benchmark``: the same as ``anomalib-ext benchmark``."""

from .cli import main

raise SystemExit(main())
