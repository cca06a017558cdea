"""Reconstruction student: decodes a deep feature back up a teacher's feature pyramid.

RSTPM's student2 (Yamada et al. 2022, fig. 3 and the reproduction report's sec. 4.5/4.7) takes
the deepest feature of one network (teacher1's ``layer4``: 512 ch at 1/32) and reconstructs
*another* teacher's pyramid (teacher2's ``layer3``, ``layer2``, ``layer1``), one stage per scale,
doubling the resolution at each stage. Between stages an :class:`AttentionGate` computed from
teacher2's feature at that scale re-weights the student's pixels.

Two layouts, both built from channel numbers only (so any timm teacher pair works):

- ``"deconv_basic_block"`` (the report's RSTPM-1, fig. 3): a 3x3 conv + BN + ReLU and a
  ResNet-18 ``BasicBlock`` at the input resolution, then per stage a stride-2 3x3 transposed conv
  (doubles resolution, changes channels) + BN + ReLU and one ``BasicBlock``.
- ``"up_residual"`` (the report's RSTPM-2, figs. 15-16, after RD4AD's decoder): no stem; each of
  the stages is a residual block whose main path is a 2x2 stride-2 transposed conv + BN + ReLU +
  3x3 conv + BN and whose skip is a 2x2 stride-2 transposed conv + BN. About half the parameters
  of ``"deconv_basic_block"`` for ResNet18 -> ResNet50.

Each stage ends in ReLU only where the teacher layer it reconstructs is non-negative (ResNet
stages end in ReLU; EfficientNet stages end in a linear bottleneck with signed outputs, which a
ReLU output could never match). ``nonnegative`` says which, per target layer.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812
from torchvision.models.resnet import BasicBlock

from .attention_gate import AttentionGate, GateForm
from .options import parse_option

if TYPE_CHECKING:
    from collections.abc import Sequence


class StudentLayout(StrEnum):
    """Layout of the reconstruction student's stages (see the module docstring)."""

    DECONV_BASIC_BLOCK = "deconv_basic_block"
    UP_RESIDUAL = "up_residual"


class Attention(StrEnum):
    """Gate forms of a three-scale student, deep to shallow (report fig. 18).

    Other strings of ``*`` / ``+`` are accepted too, one character per gate, for deeper pyramids.
    """

    MULTIPLY_RESIDUAL = "*+"
    RESIDUAL_RESIDUAL = "++"
    MULTIPLY_MULTIPLY = "**"
    RESIDUAL_MULTIPLY = "+*"
    ZEROED = "00"  # diagnostic (report fig. 20): every gate outputs zeros
    NONE = "none"


def parse_attention(attention: str, n_gates: int) -> list[str]:
    """``"*+"`` -> ``["*", "+"]``; ``"none"`` -> ``[]``. One form per gate, in decoding order."""
    attention = str(attention)
    if attention == Attention.NONE:
        return []
    if len(attention) != n_gates or any(form not in list(GateForm) for form in attention):
        msg = (
            f"attention={attention!r}: expected 'none' or {n_gates} characters from "
            f"{[form.value for form in GateForm]} (one per scale change of the reconstruction student, e.g. '*+')."
        )
        raise ValueError(msg)
    return list(attention)


def _bn_relu(channels: int) -> list[nn.Module]:
    return [nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]


class SignedBasicBlock(BasicBlock):
    """ResNet ``BasicBlock`` without the ReLU after the residual sum, for signed targets (same parameters)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``bn2(conv2(relu(bn1(conv1(x))))) + x``."""
        return self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))) + x


class UpResidualBlock(nn.Module):
    """RSTPM-2 stage: 2x2 transposed-conv residual block that doubles resolution and changes channels.

    ``relu_out=False`` drops the final ReLU, for a signed target layer.
    """

    def __init__(self, in_channels: int, out_channels: int, relu_out: bool = True) -> None:
        super().__init__()
        self.relu_out = relu_out
        self.main = nn.Sequential(
            nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2, bias=False),
            *_bn_relu(out_channels),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.skip = nn.Sequential(
            nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2, bias=False),
            nn.BatchNorm2d(out_channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Main path plus transposed-conv skip, then ReLU (if ``relu_out``)."""
        out = self.main(x) + self.skip(x)
        return F.relu(out) if self.relu_out else out


def _deconv_basic_block_stage(in_channels: int, out_channels: int, relu_out: bool = True) -> nn.Sequential:
    block = BasicBlock if relu_out else SignedBasicBlock
    return nn.Sequential(
        nn.ConvTranspose2d(in_channels, out_channels, 3, stride=2, padding=1, output_padding=1, bias=False),
        *_bn_relu(out_channels),
        block(out_channels, out_channels),
    )


class ReconstructionStudent(nn.Module):
    """Decode a deep feature into a teacher's pyramid, gated by that teacher at each scale change.

    Args:
        in_channels: channels of the input feature (teacher1's or student1's deepest layer).
        target_channels: channels of the teacher2 layers to reconstruct, shallow to deep
            (``[256, 512, 1024]`` for ResNet50 ``layer1..3``).
        layout: ``"deconv_basic_block"`` or ``"up_residual"`` (see the module docstring).
        attention: ``"none"`` or one form per scale change in decoding order, deep to shallow
            (``"*+"``: multiplicative after the deepest stage, residual after the next).
        nonnegative: per target layer (shallow to deep), whether the teacher's output there is
            non-negative, so the stage may end in ReLU (see
            :func:`~anomalib_ext.components.backbone.nonnegative_outputs`). ``None``: all are.
    """

    def __init__(
        self,
        in_channels: int,
        target_channels: Sequence[int],
        layout: StudentLayout | str = StudentLayout.DECONV_BASIC_BLOCK,
        attention: Attention | str = Attention.MULTIPLY_RESIDUAL,
        nonnegative: Sequence[bool] | None = None,
    ) -> None:
        super().__init__()
        layout = parse_option(StudentLayout, layout, "layout")
        nonnegative = [True] * len(target_channels) if nonnegative is None else list(nonnegative)
        if len(nonnegative) != len(target_channels):
            msg = f"nonnegative needs one flag per target layer; got {nonnegative} for {list(target_channels)}."
            raise ValueError(msg)
        decode_channels = list(reversed(target_channels))  # deep -> shallow
        relu_out = list(reversed(nonnegative))
        forms = parse_attention(attention, len(decode_channels) - 1)
        if layout == StudentLayout.DECONV_BASIC_BLOCK:
            self.stem: nn.Module = nn.Sequential(
                nn.Conv2d(in_channels, in_channels, kernel_size=3, padding=1, bias=False),
                *_bn_relu(in_channels),
                BasicBlock(in_channels, in_channels),
            )
        else:
            self.stem = nn.Identity()
        make_stage = _deconv_basic_block_stage if layout == StudentLayout.DECONV_BASIC_BLOCK else UpResidualBlock
        inputs = [in_channels, *decode_channels[:-1]]
        self.stages = nn.ModuleList(
            make_stage(c_in, c_out, relu) for c_in, c_out, relu in zip(inputs, decode_channels, relu_out, strict=True)
        )
        self.gates = nn.ModuleList(
            AttentionGate(decode_channels[i], form)  # type: ignore[arg-type]
            for i, form in enumerate(forms)
        )

    def forward(self, x: torch.Tensor, teacher_features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Reconstruct ``teacher_features`` (shallow to deep) from ``x``; returns them in the same order.

        Each stage's output is resized to the teacher's grid if the strides do not line up exactly,
        and it is the *ungated* output that is distilled; the gated one feeds the next stage.
        """
        targets = list(reversed(teacher_features))
        x = self.stem(x)
        outputs: list[torch.Tensor] = []
        for index, stage in enumerate(self.stages):
            x = stage(x)
            if x.shape[-2:] != targets[index].shape[-2:]:
                x = F.interpolate(x, size=targets[index].shape[-2:], mode="bilinear", align_corners=False)
            outputs.append(x)
            if index < len(self.gates):
                x = self.gates[index](x, targets[index])
        return outputs[::-1]
