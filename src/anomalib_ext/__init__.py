"""anomalib-ext: faithful RD4AD, RSTPM, UniAD and EfficientAD as anomalib 2.x model plugins.

anomalib's CLI resolves dotted class paths, so ``anomalib train --model anomalib_ext.RD4AD`` works
once this package is installed; the ``anomalib-ext`` console script also accepts short names.
"""

__version__ = "0.1.0"

from .models.efficientad import EfficientADOffline
from .models.rd4ad import RD4AD
from .models.rstpm import RSTPM
from .models.uniad import UniAD

__all__: list[str] = ["RD4AD", "RSTPM", "EfficientADOffline", "UniAD"]
