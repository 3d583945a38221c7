"""Inference in row stripes: the same convolutions at a bounded memory, for full-size frames.

At 2048x1024 one float map of the 35 Cityscapes classes plus an edge channel is 0.3 GB, the label
encoder reads three of them (frames t-2..t), and a padded copy, the convolution's own copy of its
input and the concatenation each held another: one generated frame peaked at 4.2 GB of CPU memory
(docs/performance.md, "Generation memory"). Without autograd nothing needs a whole padded or
upsampled input: a convolution's output rows ``r0..r1`` read only the input rows ``r0 - pad ..
r1 + k - 1 - pad``. So at inference each large convolution gathers those rows (reflected or zero at
the borders, upsampled by repeating rows and columns where the block upsamples), converts them to the
weights' dtype (label planes may come as uint8 0/1, a quarter of float32's size and exact) and writes
its output stripe into one preallocated tensor. The arithmetic per output pixel is the convolution's
own; results match the plain path to float rounding (tests/unit/models/test_stripes.py).

Training never takes this path: with autograd on, or for inputs under ``STRIPE_BYTES`` in the weights'
dtype, the plain modules run.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

STRIPE_BYTES = 32 * 2 ** 20
"""Input bytes (in the weights' dtype) one stripe may gather; larger inputs are striped at inference."""


def striped(x: Tensor, dtype: torch.dtype, upsample: bool = False) -> bool:
    """Whether to take the striped path: inference on an input that is large (once upsampled, where the
    block upsamples) or not yet ``dtype``."""
    if torch.is_grad_enabled():
        return x.dtype != dtype  # compact label planes are an inference format; the path is differentiable
    return x.dtype != dtype or x.numel() * (4 if upsample else 1) * dtype.itemsize > STRIPE_BYTES


def stripes(height: int, row_bytes: int) -> list[tuple[int, int]]:
    """Output row ranges ``[r0, r1)`` covering ``height`` rows, each gathering about ``STRIPE_BYTES``."""
    step = max(1, STRIPE_BYTES // max(1, row_bytes))
    return [(r0, min(height, r0 + step)) for r0 in range(0, height, step)]


def conv_rows(conv: nn.Conv2d | tuple[Tensor, Tensor | None], x: Tensor, pad: int, mode: str,
              upsample: bool = False, rows: tuple[int, int] | None = None) -> Tensor:
    """Rows ``rows`` (all by default) of ``conv(pad(upsample(x)))`` for a stride-1 ``conv`` (a module with no
    padding of its own, or its weight and bias): ``pad`` rows and columns on each side, ``mode`` ``reflect``
    or ``zeros``; ``upsample`` doubles ``x`` by nearest neighbour first. Computed stripe by stripe when
    ``rows`` is not given."""
    # Read once: a spectral-norm weight is computed on access.
    weight, bias = (conv.weight, conv.bias) if isinstance(conv, nn.Module) else conv
    factor = 2 if upsample else 1
    if rows is not None:
        return _rows(weight, bias, x, pad, mode, factor, *rows)
    kernel = weight.shape[-2]
    height, width = (x.shape[-2] * factor + 2 * pad, x.shape[-1] * factor + 2 * pad)  # padded
    out_height = height - kernel + 1
    out = x.new_empty(x.shape[0], weight.shape[0], out_height, width - kernel + 1, dtype=weight.dtype)
    row_bytes = x.shape[0] * x.shape[1] * width * weight.dtype.itemsize
    for r0, r1 in stripes(out_height, row_bytes):
        out[..., r0:r1, :] = _rows(weight, bias, x, pad, mode, factor, r0, r1)
    return out


def _rows(weight: Tensor, bias: Tensor | None, x: Tensor, pad: int, mode: str, factor: int,
          r0: int, r1: int) -> Tensor:
    kernel = weight.shape[-2]
    height = x.shape[-2] * factor
    wanted = torch.arange(r0 - pad, r1 + kernel - 1 - pad, device=x.device)  # rows of the unpadded input
    if mode == "reflect":
        wanted = wanted.abs()
        wanted = torch.where(wanted >= height, 2 * (height - 1) - wanted, wanted)
        outside = None
    elif mode == "zeros":
        outside = (wanted < 0) | (wanted >= height)
        wanted = wanted.clamp(0, height - 1)
    else:
        raise ValueError(f"padding mode {mode!r}: expected reflect or zeros")
    part = x.index_select(-2, wanted // factor).to(weight.dtype)
    if factor > 1:
        part = part.repeat_interleave(factor, dim=-1)
    if outside is not None and bool(outside.any()):
        part[..., outside, :] = 0
    if pad:
        part = F.pad(part, (pad, pad, 0, 0), mode="reflect" if mode == "reflect" else "constant")
    return F.conv2d(part, weight, bias)


def conv_any(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """``conv(x)`` for a stride-1 conv padding itself (zeros or reflect), striped at inference when large."""
    if conv.stride != (1, 1) or not striped(x, conv.weight.dtype):
        return conv(x.to(conv.weight.dtype))
    pad = conv.padding[0] if isinstance(conv.padding, tuple) else conv.padding
    # conv_rows pads by itself and reads only .weight and .bias (spectral norm's weight included).
    return conv_rows(conv, x, pad, "reflect" if conv.padding_mode == "reflect" else "zeros")


def instance_stats(x: Tensor, eps: float = 1e-5) -> tuple[Tensor, Tensor]:
    """Per sample and channel, the mean and ``1 / sqrt(var + eps)`` of ``InstanceNorm2d`` (biased variance)."""
    var, mean = torch.var_mean(x, dim=(-2, -1), keepdim=True, correction=0)
    return mean, (var + eps).rsqrt()


def instance_norm_(x: Tensor, eps: float = 1e-5, weight: Tensor | None = None, bias: Tensor | None = None
                   ) -> Tensor:
    """``InstanceNorm2d`` applied in place, channel by channel."""
    mean, scale = instance_stats(x, eps)
    if weight is not None:
        scale = scale * weight.view(1, -1, 1, 1)
    x.sub_(mean).mul_(scale)
    if bias is not None:
        x.add_(bias.view(1, -1, 1, 1))
    return x
