"""Neighbour-masked attention: tokens on a 2-D grid that may not look at their own neighbourhood.

UniAD (You et al., NeurIPS 2022) reconstructs every feature token from the *other* tokens only:
in each attention a token is barred from its ``k x k`` neighbourhood (itself included), so the
network cannot learn the identity shortcut of copying its input. These pieces are generic:

- :func:`neighbor_mask` builds the boolean ``(H*W, H*W)`` mask for a feature grid;
- :class:`MaskedMultiheadAttention` is multi-head attention (einops + plain torch, export-friendly)
  that takes such a mask;
- :class:`MaskedEncoderLayer` is a post-norm transformer encoder layer around it;
- :class:`QueryDecoderLayer` is UniAD's layer-wise query decoder layer: its *own* learned query
  embedding attends to the encoder memory, then to the previous decoder layer's output.

Token tensors are batch-first, ``(batch, tokens, channels)``.
"""

from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import Tensor, nn
from torch.nn import functional as F  # noqa: N812


def neighbor_mask(grid_size: tuple[int, int], neighbor_size: tuple[int, int]) -> Tensor:
    """Boolean ``(H*W, H*W)`` mask, ``True`` where query token ``i`` may NOT attend to key token ``j``.

    Token ``(y, x)`` is barred from every ``(y', x')`` with ``|y - y'| <= nh // 2`` and
    ``|x - x'| <= nw // 2`` (its ``nh x nw`` window, clipped at the border, itself included),
    exactly as the official ``Transformer.generate_mask``. Raises ``ValueError`` if a token would be
    left with nothing to attend to (the window covers the whole grid), which would make softmax NaN.
    """
    height, width = grid_size
    half_h, half_w = neighbor_size[0] // 2, neighbor_size[1] // 2
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    near_y = (ys[:, None] - ys[None, :]).abs() <= half_h
    near_x = (xs[:, None] - xs[None, :]).abs() <= half_w
    mask = near_y & near_x
    if bool(mask.all(dim=1).any()):
        msg = (
            f"Neighbour mask {tuple(neighbor_size)} hides the whole {height}x{width} feature grid from some "
            "token; use a smaller neighbor_size or a larger input size."
        )
        raise ValueError(msg)
    return mask


class MaskedMultiheadAttention(nn.Module):
    """Multi-head attention with an optional boolean mask (``True`` = blocked).

    Same parameterisation as ``torch.nn.MultiheadAttention`` (one packed ``in_proj`` of shape
    ``(3C, C)``, so Xavier init has the same bounds; dropout on the attention weights), written with
    einops and plain ops so that ONNX / OpenVINO export needs no fused kernels.
    """

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            msg = f"dim {dim} is not divisible by num_heads {num_heads}."
            raise ValueError(msg)
        self.num_heads = num_heads
        self.scale = 1.0 / math.sqrt(dim // num_heads)
        self.in_proj = nn.Linear(dim, 3 * dim)
        self.out_proj = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None = None) -> Tensor:
        """Attend ``query`` (B, Nq, C) to ``key``/``value`` (B, Nk, C); ``mask`` is (Nq, Nk) bool."""
        w_q, w_k, w_v = self.in_proj.weight.chunk(3)
        b_q, b_k, b_v = self.in_proj.bias.chunk(3)
        heads = self.num_heads
        q = rearrange(F.linear(query, w_q, b_q), "b n (h d) -> b h n d", h=heads)
        k = rearrange(F.linear(key, w_k, b_k), "b n (h d) -> b h n d", h=heads)
        v = rearrange(F.linear(value, w_v, b_v), "b n (h d) -> b h n d", h=heads)
        scores = torch.matmul(q, k.transpose(-2, -1)) * self.scale
        if mask is not None:
            scores = scores.masked_fill(mask, float("-inf"))
        weights = self.dropout(scores.softmax(dim=-1))
        out = rearrange(torch.matmul(weights, v), "b h n d -> b n (h d)")
        return self.out_proj(out)


class FeedForward(nn.Sequential):
    """Transformer feed-forward block: linear, ReLU, dropout, linear."""

    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__(nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, dim))


def _with_pos(tokens: Tensor, pos: Tensor | None) -> Tensor:
    return tokens if pos is None else tokens + pos


class MaskedEncoderLayer(nn.Module):
    """Post-norm encoder layer (DETR / official UniAD): masked self-attention, then feed-forward.

    The position embedding is added to queries and keys only, never to values.
    """

    def __init__(self, dim: int, num_heads: int, dim_feedforward: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.self_attn = MaskedMultiheadAttention(dim, num_heads, dropout)
        self.ffn = FeedForward(dim, dim_feedforward, dropout)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.dropout1, self.dropout2 = nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(self, src: Tensor, pos: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        """Return the updated tokens ``(B, N, C)``."""
        qk = _with_pos(src, pos)
        src = self.norm1(src + self.dropout1(self.self_attn(qk, qk, src, mask)))
        return self.norm2(src + self.dropout2(self.ffn(src)))


class QueryDecoderLayer(nn.Module):
    """UniAD's layer-wise query decoder layer (post-norm), as in the official ``TransformerDecoderLayer``.

    1. its own learned query embedding (one per token) attends to the encoder ``memory``
       (``mask_memory``; the official code calls this ``self_attn`` / ``tgt_mask``);
    2. the result attends to ``previous``, the previous decoder layer's output, which is the
       encoder memory for the first layer (``mask_previous``; official ``multihead_attn`` /
       ``memory_mask``);
    3. feed-forward. Each step has a residual connection followed by LayerNorm.
    """

    def __init__(self, dim: int, num_queries: int, num_heads: int, dim_feedforward: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.query_embed = nn.Embedding(num_queries, dim)
        self.memory_attn = MaskedMultiheadAttention(dim, num_heads, dropout)
        self.previous_attn = MaskedMultiheadAttention(dim, num_heads, dropout)
        self.ffn = FeedForward(dim, dim_feedforward, dropout)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.dropout1, self.dropout2, self.dropout3 = nn.Dropout(dropout), nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(
        self,
        previous: Tensor,
        memory: Tensor,
        pos: Tensor | None = None,
        mask_memory: Tensor | None = None,
        mask_previous: Tensor | None = None,
    ) -> Tensor:
        """Decode ``(B, N, C)`` tokens from this layer's queries, ``memory`` and ``previous``."""
        query = self.query_embed.weight.unsqueeze(0).expand(memory.shape[0], -1, -1)
        attended = self.memory_attn(_with_pos(query, pos), _with_pos(memory, pos), memory, mask_memory)
        query = self.norm1(query + self.dropout1(attended))
        attended = self.previous_attn(_with_pos(query, pos), _with_pos(previous, pos), previous, mask_previous)
        query = self.norm2(query + self.dropout2(attended))
        return self.norm3(query + self.dropout3(self.ffn(query)))
