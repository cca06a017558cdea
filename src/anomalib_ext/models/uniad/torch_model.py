"""PyTorch UniAD: frozen CNN features, neighbour-masked transformer reconstruction, error map.

Pipeline (official ``zhiyuanyou/UniAD``, ``experiments/MVTec-AD/config.yaml``):

1. a frozen ImageNet backbone (default ``tf_efficientnet_b4.aa_in1k``: the TF AutoAugment
   checkpoint the official code loads through its lukemelas port; stages 1-4 = timm feature indices
   0-3: 24+32+56+160 = 272 channels) gives multi-scale features; each is resized bilinearly
   (``align_corners=True``, the official MFCN neck) to one grid, ``input_size / outstride``
   (14x14 at 224 px, outstride = the deepest stride used, 16), and concatenated;
2. the tokens (training only: feature jitter) are projected to ``hidden_dim``, passed through a
   post-norm transformer whose encoder and layer-wise query decoder use the neighbour mask, and
   projected back to the feature channels;
3. the reconstruction error gives the anomaly map and score (:mod:`.anomaly_map`).

Channels, strides and the grid are derived from the backbone and the input size, so any timm CNN
the shared backbone component can build works (e.g. the offline ``efficientnet_lite0``).
"""

from __future__ import annotations

import math
from enum import StrEnum
from typing import TYPE_CHECKING

import torch
from anomalib.data import InferenceBatch
from einops import rearrange
from torch import Tensor, nn
from torch.nn import functional as F  # noqa: N812

from anomalib_ext.components import create_backbone, feature_shapes
from anomalib_ext.components.feature_jitter import FeatureJitter
from anomalib_ext.components.neighbor_attention import MaskedEncoderLayer, QueryDecoderLayer, neighbor_mask

from .anomaly_map import AnomalyMapGenerator

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

DEFAULT_BACKBONE = "tf_efficientnet_b4.aa_in1k"


class PositionEmbedding(StrEnum):
    """Position embedding of the transformer: ``learned`` (official MVTec config) or ``sine``."""

    LEARNED = "learned"
    SINE = "sine"


class LearnedPositionEmbedding(nn.Module):
    """Official ``PositionEmbeddingLearned``: a row and a column table (``dim / 2`` each), uniform init."""

    def __init__(self, grid_size: tuple[int, int], dim: int) -> None:
        super().__init__()
        self.grid_size = grid_size
        self.row_embed = nn.Parameter(torch.rand(grid_size[0], dim // 2))
        self.col_embed = nn.Parameter(torch.rand(grid_size[1], dim - dim // 2))

    def forward(self) -> Tensor:
        """``(1, H*W, dim)``: column embedding first, then row embedding, as in the official code."""
        height, width = self.grid_size
        cols = self.col_embed.unsqueeze(0).expand(height, -1, -1)
        rows = self.row_embed.unsqueeze(1).expand(-1, width, -1)
        return torch.cat([cols, rows], dim=-1).reshape(1, height * width, -1)


class SinePositionEmbedding(nn.Module):
    """Official ``PositionEmbeddingSine`` (normalised DETR sine table, ``dim / 2`` per axis), fixed."""

    def __init__(self, grid_size: tuple[int, int], dim: int, temperature: float = 10000.0) -> None:
        super().__init__()
        half = dim // 2
        ones = torch.ones(grid_size)
        y_embed = ones.cumsum(0) / (grid_size[0] + 1e-6) * 2 * math.pi
        x_embed = ones.cumsum(1) / (grid_size[1] + 1e-6) * 2 * math.pi
        dim_t = temperature ** (2 * (torch.arange(half) // 2) / half)

        def encode(embed: Tensor) -> Tensor:
            pos = embed[..., None] / dim_t
            return torch.stack((pos[..., 0::2].sin(), pos[..., 1::2].cos()), dim=-1).flatten(-2)

        table = torch.cat([encode(y_embed), encode(x_embed)], dim=-1).reshape(1, -1, 2 * half)
        self.register_buffer("table", table, persistent=False)

    def forward(self) -> Tensor:
        """``(1, H*W, dim)``."""
        return self.table


class UniADModel(nn.Module):
    """UniAD network; see the module docstring for the pipeline and :class:`..UniAD` for the arguments."""

    def __init__(
        self,
        backbone: str = DEFAULT_BACKBONE,
        layers: Sequence[str | int] = (0, 1, 2, 3),
        pre_trained: bool = True,
        weights: str | Path | None = None,
        allow_download: bool = False,
        input_size: tuple[int, int] = (224, 224),
        outstride: int | None = None,
        hidden_dim: int = 256,
        num_encoder_layers: int = 4,
        num_decoder_layers: int = 4,
        num_heads: int = 8,
        dim_feedforward: int = 1024,
        dropout: float = 0.1,
        neighbor_size: tuple[int, int] = (7, 7),
        neighbor_mask_in: Sequence[bool] = (True, True, True),
        jitter_scale: float = 20.0,
        jitter_prob: float = 1.0,
        pos_embed: PositionEmbedding | str = PositionEmbedding.LEARNED,
        pool_size: int = 16,
    ) -> None:
        super().__init__()
        self.feature_extractor = create_backbone(backbone, layers, pre_trained, weights, allow_download)
        for parameter in self.feature_extractor.parameters():
            parameter.requires_grad = False
        shapes = feature_shapes(self.feature_extractor)
        self.outstride = outstride or max(stride for _, stride in shapes)
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.grid_size = (self.input_size[0] // self.outstride, self.input_size[1] // self.outstride)
        if min(self.grid_size) < 1:
            msg = f"Input size {self.input_size} is smaller than the feature stride {self.outstride}."
            raise ValueError(msg)
        channels = sum(c for c, _ in shapes)
        num_tokens = self.grid_size[0] * self.grid_size[1]

        self.jitter = FeatureJitter(jitter_scale, jitter_prob)
        self.input_proj = nn.Linear(channels, hidden_dim)
        self.pos_embed: nn.Module = (
            LearnedPositionEmbedding(self.grid_size, hidden_dim)
            if PositionEmbedding(pos_embed) is PositionEmbedding.LEARNED
            else SinePositionEmbedding(self.grid_size, hidden_dim)
        )
        self.encoder = nn.ModuleList(
            MaskedEncoderLayer(hidden_dim, num_heads, dim_feedforward, dropout) for _ in range(num_encoder_layers)
        )
        self.decoder = nn.ModuleList(
            QueryDecoderLayer(hidden_dim, num_tokens, num_heads, dim_feedforward, dropout)
            for _ in range(num_decoder_layers)
        )
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        self.output_proj = nn.Linear(hidden_dim, channels)
        self.mask_in = tuple(bool(flag) for flag in neighbor_mask_in)
        if len(self.mask_in) != 3:
            msg = "neighbor_mask_in takes three flags: (encoder, decoder memory attention, decoder previous attention)."
            raise ValueError(msg)
        mask = (
            neighbor_mask(self.grid_size, (int(neighbor_size[0]), int(neighbor_size[1])))
            if any(self.mask_in)
            else torch.zeros(0, 0)
        )
        self.register_buffer("attention_mask", mask.bool(), persistent=False)
        self.anomaly_map_generator = AnomalyMapGenerator(pool_size)
        self._init_weights()

    def _init_weights(self) -> None:
        """Official ``initializer: xavier_uniform``: every Linear outside the backbone, zero biases."""
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear) and not name.startswith("feature_extractor"):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def train(self, mode: bool = True) -> UniADModel:
        """Switch mode but keep the frozen backbone in eval (BatchNorm keeps ImageNet statistics)."""
        super().train(mode)
        self.feature_extractor.eval()
        return self

    def _mask(self, index: int) -> Tensor | None:
        return self.attention_mask if self.mask_in[index] else None

    def extract_features(self, images: Tensor) -> Tensor:
        """Frozen multi-scale features, each resized to the grid and concatenated: ``(B, C, h, w)``."""
        with torch.no_grad():
            features = self.feature_extractor(images)
        aligned = [
            F.interpolate(feature, size=self.grid_size, mode="bilinear", align_corners=True)
            for feature in features.values()
        ]
        return torch.cat(aligned, dim=1)

    def reconstruct(self, features: Tensor) -> Tensor:
        """Reconstruct ``(B, C, h, w)`` features through the masked transformer (jitter in training)."""
        tokens = self.input_proj(self.jitter(rearrange(features, "b c h w -> b (h w) c")))
        pos = self.pos_embed()
        memory = tokens
        for layer in self.encoder:
            memory = layer(memory, pos, self._mask(0))
        output = memory
        for layer in self.decoder:
            output = layer(output, memory, pos, self._mask(1), self._mask(2))
        output = self.output_proj(self.decoder_norm(output))
        return rearrange(output, "b (h w) c -> b c h w", h=self.grid_size[0], w=self.grid_size[1])

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor] | InferenceBatch:
        """Training: ``(features, reconstruction)`` for the loss. Eval: ``InferenceBatch`` with map and score."""
        if tuple(images.shape[-2:]) != self.input_size:
            msg = (
                f"UniAD was built for {self.input_size} inputs (its grid and queries depend on it), "
                f"got {tuple(images.shape[-2:])}."
            )
            raise ValueError(msg)
        features = self.extract_features(images)
        reconstruction = self.reconstruct(features)
        if self.training:
            return features, reconstruction
        anomaly_map, pred_score = self.anomaly_map_generator(features, reconstruction, self.input_size)
        return InferenceBatch(pred_score=pred_score, anomaly_map=anomaly_map)
