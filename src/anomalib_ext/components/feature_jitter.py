"""Feature jitter: Gaussian noise scaled by each token's norm, added during training only.

UniAD (You et al., NeurIPS 2022, Sec. 3.4) perturbs the input feature tokens so the reconstruction
network must *denoise* rather than copy. As in the official ``UniAD.add_jitter``, the noise for a
token ``f`` with ``C`` channels is ``N(0, 1) * scale * ||f||_2 / C``, and it is applied to a whole
batch with probability ``prob`` (the recipe: scale 20, prob 1). In eval mode the module is the
identity, so exported graphs contain no randomness.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class FeatureJitter(nn.Module):
    """Add norm-scaled Gaussian noise to ``(..., C)`` tokens while ``self.training``.

    Args:
        scale: noise std in units of ``||f|| / C``; ``0`` disables the jitter.
        prob: probability that a training batch is jittered.
    """

    def __init__(self, scale: float = 20.0, prob: float = 1.0) -> None:
        super().__init__()
        if scale < 0 or not 0.0 <= prob <= 1.0:
            msg = f"Feature jitter needs scale >= 0 and 0 <= prob <= 1, got scale={scale}, prob={prob}."
            raise ValueError(msg)
        self.scale = scale
        self.prob = prob

    def forward(self, tokens: Tensor) -> Tensor:
        """Return ``tokens`` plus noise in training, ``tokens`` unchanged in eval."""
        if not self.training or self.scale == 0 or self.prob == 0:
            return tokens
        if self.prob < 1 and float(torch.rand(())) > self.prob:
            return tokens
        norms = tokens.norm(dim=-1, keepdim=True) / tokens.shape[-1]
        return tokens + torch.randn_like(tokens) * norms * self.scale

    def extra_repr(self) -> str:
        """Show the settings in ``print(model)``."""
        return f"scale={self.scale}, prob={self.prob}"
