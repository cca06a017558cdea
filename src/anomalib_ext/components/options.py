"""Model options given as strings or enums: configs and the CLI pass strings, Python callers enums.

Models store the plain string in ``hparams`` (no enum objects in checkpoints or config dumps) and
use :func:`parse_option` to check it, so a typo fails in ``__init__`` with the argument's name and
its choices instead of deep inside training.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TypeVar

OptionT = TypeVar("OptionT", bound=StrEnum)


def parse_option(enum: type[OptionT], value: str, name: str) -> OptionT:
    """``enum(value)``, or a ``ValueError`` naming the argument and its choices."""
    try:
        return enum(value)
    except ValueError:
        msg = f"{name}={value!r}; expected one of {[member.value for member in enum]}."
        raise ValueError(msg) from None
