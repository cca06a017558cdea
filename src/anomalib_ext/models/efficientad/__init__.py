"""EfficientAD (Batzner et al., WACV 2024) that trains and runs offline; see ``README.md``."""

from .lightning_model import EfficientADOffline
from .teacher import TeacherWeightsError, distill_teacher, load_teacher_file
from .torch_model import EfficientADModel

__all__ = ["EfficientADModel", "EfficientADOffline", "TeacherWeightsError", "distill_teacher", "load_teacher_file"]
