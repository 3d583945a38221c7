"""Building blocks shared by the generator scales: conditional norms, conv blocks, residual blocks.

Every block takes ``(x, cond)``: ``cond`` is the current frame's label map, read only by SPADE
norms, so one block type serves every norm kind.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

from models.norms import BatchNorm2d, InstanceNorm2d
from models.spade import SPADE
from models.stripes import conv_any, conv_rows, instance_norm_, striped

ConvFactory = Callable[..., nn.Module]


def conv_factory(spectral: bool) -> ConvFactory:
    """``nn.Conv2d``, wrapped in spectral normalization when ``spectral``."""
    if not spectral:
        return nn.Conv2d

    def make(*args, **kwargs) -> nn.Module:
        return _spectral_norm(nn.Conv2d(*args, **kwargs))
    return make


class CondNorm(nn.Module):
    """Instance, batch or SPADE normalization behind one ``(x, cond)`` interface."""

    def __init__(self, kind: str, channels: int, cond_channels: int = 0, hidden: int = 64,
                 conv: ConvFactory = nn.Conv2d) -> None:
        super().__init__()
        self.kind = kind
        if kind == "spade":
            self.norm: nn.Module = SPADE(channels, cond_channels, hidden, conv=conv)
        elif kind == "instance":
            self.norm = InstanceNorm2d(channels, affine=True)
        elif kind == "batch":
            self.norm = BatchNorm2d(channels, affine=True)
        else:
            raise ValueError(f"unknown norm {kind!r}: expected spade, instance or batch")

    def forward(self, x: Tensor, cond: Tensor | None, inplace: bool = False) -> Tensor:
        """``inplace`` (inference only, ``x`` owned by the caller): normalize ``x`` itself."""
        if self.kind == "spade":
            if cond is None:
                raise ValueError("a SPADE norm needs the label map, got cond=None")
            return self.norm(x, cond, inplace=inplace)
        if inplace and self.kind == "instance":
            return instance_norm_(x, self.norm.eps, self.norm.weight, self.norm.bias)
        return self.norm(x)


def _act(x: Tensor, inplace: bool = False) -> Tensor:
    return F.leaky_relu(x, 0.2, inplace=inplace)


class ConvBlock(nn.Module):
    """(upsample x2) -> conv -> norm -> LeakyReLU. Reflection padding keeps borders free of zeros."""

    def __init__(self, c_in: int, c_out: int, kernel: int, norm: str, *, stride: int = 1,
                 upsample: bool = False, cond_channels: int = 0, hidden: int = 64,
                 conv: ConvFactory = nn.Conv2d) -> None:
        super().__init__()
        self.upsample = upsample
        self.pad = nn.ReflectionPad2d(kernel // 2) if stride == 1 else nn.Identity()
        self.conv = conv(c_in, c_out, kernel, stride=stride, padding=0 if stride == 1 else kernel // 2)
        self.norm = CondNorm(norm, c_out, cond_channels, hidden, conv)

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        if self.conv.stride == (1, 1) and striped(x, self.conv.weight.dtype, self.upsample):  # inference, full size
            y = conv_rows(self.conv, x, self.conv.kernel_size[0] // 2, "reflect", upsample=self.upsample)
        else:
            if self.upsample:
                # Nearest upsampling then a conv, rather than a transposed conv: no checkerboard.
                x = F.interpolate(x, scale_factor=2.0, mode="nearest")
            y = self.conv(self.pad(x))
        inplace = not torch.is_grad_enabled()  # y is ours: without autograd nothing else reads it
        return _act(self.norm(y, cond, inplace=inplace), inplace=inplace)


class ResBlock(nn.Module):
    """Pre-activation residual block: (norm -> act -> conv) x 2 plus the identity."""

    def __init__(self, channels: int, norm: str, cond_channels: int = 0, hidden: int = 64,
                 conv: ConvFactory = nn.Conv2d) -> None:
        super().__init__()
        self.norm1 = CondNorm(norm, channels, cond_channels, hidden, conv)
        self.conv1 = conv(channels, channels, 3, padding=1, padding_mode="reflect")
        self.norm2 = CondNorm(norm, channels, cond_channels, hidden, conv)
        self.conv2 = conv(channels, channels, 3, padding=1, padding_mode="reflect")

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        y = conv_any(self.conv1, _act(self.norm1(x, cond)))
        y = conv_any(self.conv2, _act(self.norm2(y, cond)))
        return x + y


class CondSequential(nn.ModuleList):
    """A sequence of ``(x, cond)`` blocks."""

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        for block in self:
            x = block(x, cond)
        return x


class OutputConv(nn.Module):
    """Reflection-padded 7x7 conv to the output channels (no norm, no activation).

    ``zero_init``: a plain convolution starting at weights and bias 0, so the head outputs 0 until it
    learns otherwise (spectral normalization cannot start there: it divides by the weight's norm).
    """

    def __init__(self, c_in: int, c_out: int, conv: ConvFactory = nn.Conv2d, zero_init: bool = False) -> None:
        super().__init__()
        self.pad = nn.ReflectionPad2d(3)
        self.conv = nn.Conv2d(c_in, c_out, 7) if zero_init else conv(c_in, c_out, 7)
        if zero_init:
            nn.init.zeros_(self.conv.weight)
            nn.init.zeros_(self.conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        return output_convs([self], x)[0]


def output_convs(heads: Sequence[OutputConv], x: Tensor) -> tuple[Tensor, ...]:
    """``head(x)`` for every head, in one convolution (their weights stacked on the output channels): heads
    reading the same features, as the flow's and the mask's, cost one padding and one convolution call (a
    kernel launch, on the CPU oneDNN's fixed cost) instead of one each."""
    weights = [head.conv.weight for head in heads]  # read once: a spectral-norm weight is computed on access
    biases = [head.conv.bias for head in heads]
    weight, bias = (weights[0], biases[0]) if len(heads) == 1 else (torch.cat(weights), torch.cat(biases))
    if striped(x, weight.dtype):
        out = conv_rows((weight, bias), x, 3, "reflect")
    else:
        out = F.conv2d(heads[0].pad(x), weight, bias)
    return out.split([w.shape[0] for w in weights], dim=1)
