"""Quantiles of arbitrarily large tensors.

``torch.quantile`` refuses inputs with more than 2**24 elements (anomalib issue 1177), which a
batch of EfficientAD distance tensors or the maps of a few hundred validation images exceed.
anomalib works around it by random subsampling, which makes the result non-deterministic. Here
the quantile is computed exactly with ``torch.kthvalue`` (a selection, not a sort, with no size
limit), using the same linear interpolation as ``torch.quantile``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from collections.abc import Sequence


def quantile(tensor: torch.Tensor, q: float) -> torch.Tensor:
    """Exact ``q``-quantile of all elements of ``tensor`` (linear interpolation, as ``torch.quantile``).

    Works on any number of elements; returns a 0-d tensor on the input's device and dtype.
    """
    if not 0.0 <= q <= 1.0:
        msg = f"quantile q must be in [0, 1], got {q}"
        raise ValueError(msg)
    flat = tensor.detach().reshape(-1)
    if flat.numel() == 0:
        msg = "quantile of an empty tensor"
        raise ValueError(msg)
    if flat.dtype in {torch.float16, torch.bfloat16}:
        flat = flat.float()  # kthvalue on half tensors is not implemented on every device
    position = q * (flat.numel() - 1)
    low_index, high_index = math.floor(position), math.ceil(position)
    low = torch.kthvalue(flat, low_index + 1).values
    if high_index == low_index:
        return low.to(tensor.dtype)
    high = torch.kthvalue(flat, high_index + 1).values
    return (low + (position - low_index) * (high - low)).to(tensor.dtype)


def quantiles(tensor: torch.Tensor, qs: Sequence[float]) -> list[torch.Tensor]:
    """Several quantiles of the same tensor (each an exact selection)."""
    return [quantile(tensor, q) for q in qs]
