"""SPADE: spatially-adaptive normalization (Park et al., CVPR 2019).

A parameter-free normalization whose scale and shift are predicted per pixel from the label map,
so the layout survives normalization instead of being averaged away.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.norms import InstanceNorm2d
from models.stripes import conv_rows, instance_stats, stripes, striped

if TYPE_CHECKING:
    from models.chunk_labels import ScaleLabels


class SPADE(nn.Module):
    """``norm(x) * (1 + gamma(labels)) + beta(labels)``; ``labels`` is resized (nearest) to ``x``."""

    def __init__(self, channels: int, label_channels: int, hidden: int, base: str = "instance",
                 conv=nn.Conv2d) -> None:
        super().__init__()
        if base == "instance":
            self.norm = InstanceNorm2d(channels, affine=False)
        elif base == "batch":
            self.norm = nn.BatchNorm2d(channels, affine=False)
        else:
            raise ValueError(f"SPADE: base norm must be 'instance' or 'batch', got {base!r}")
        self.shared = nn.Sequential(conv(label_channels, hidden, 3, padding=1), nn.ReLU())
        self.gamma = conv(hidden, channels, 3, padding=1)
        self.beta = conv(hidden, channels, 3, padding=1)

    def forward(self, x: Tensor, labels: Tensor | ScaleLabels, inplace: bool = False) -> Tensor:
        """``labels``: the current label map [B, C, h, w], or a chunk's (``models/chunk_labels.py``), whose
        gamma and beta are computed for every frame of the chunk at once. ``inplace`` (inference only,
        ``x`` owned by the caller): write the result into ``x``."""
        if not isinstance(labels, Tensor):
            return self._modulate(x, labels.modulation(self, x.shape[-2:]))
        if labels.shape[-2:] != x.shape[-2:]:
            labels = F.interpolate(labels, size=x.shape[-2:], mode="nearest")
        if striped(labels, x.dtype) or striped(x, x.dtype):
            return self._striped(x, labels, inplace)
        return self._modulate(x, self.modulation(labels))

    def modulation(self, labels: Tensor, size: Sequence[int] | None = None) -> Tensor:
        """gamma and beta, stacked on the channels [B, 2 * channels, h, w], from the label maps ``labels``
        (resized to ``size`` first when given): what the labels alone decide."""
        if size is not None and labels.shape[-2:] != tuple(size):
            labels = F.interpolate(labels, size=tuple(size), mode="nearest")
        weight, bias = self._modulation_weights()
        return F.conv2d(self.shared(labels), weight, bias, padding=1)

    def _modulate(self, x: Tensor, modulation: Tensor) -> Tensor:
        gamma, beta = modulation.chunk(2, dim=1)
        return torch.addcmul(beta, self.norm(x), 1 + gamma)

    def _modulation_weights(self) -> tuple[Tensor, Tensor]:
        """gamma's and beta's convolutions as one (weight, bias): they read the same hidden map, and one
        convolution call costs a kernel launch, or on the CPU oneDNN's fixed cost, instead of two. Read
        once per call: a spectral-norm weight is computed on every access."""
        return (torch.cat([self.gamma.weight, self.beta.weight]), torch.cat([self.gamma.bias, self.beta.bias]))

    def _striped(self, x: Tensor, labels: Tensor, inplace: bool) -> Tensor:
        """The same, stripe by stripe (models/stripes.py): the hidden map, gamma and beta exist for one
        stripe at a time."""
        if isinstance(self.norm, nn.InstanceNorm2d):
            mean, scale = instance_stats(x, self.norm.eps)
            normed = None
        else:
            normed = self.norm(x)  # batch statistics or running averages: the module's own rule
        out = x if inplace else torch.empty_like(x)
        height = x.shape[-2]
        shared = self.shared[0]
        weight, bias = self._modulation_weights()
        row_bytes = labels.shape[0] * labels.shape[1] * labels.shape[-1] * x.dtype.itemsize
        for r0, r1 in stripes(height, row_bytes):
            # gamma and beta (3x3, zero padding) read one hidden row beyond the stripe on each side.
            h0, h1 = max(r0 - 1, 0), min(r1 + 1, height)
            hidden = torch.relu(conv_rows(shared, labels, 1, "zeros", rows=(h0, h1)))
            hidden = F.pad(hidden, (1, 1, 1 - (r0 - h0), 1 - (h1 - r1)))
            gamma, beta = F.conv2d(hidden, weight, bias).chunk(2, dim=1)
            rows = (x[..., r0:r1, :] - mean) * scale if normed is None else normed[..., r0:r1, :]
            out[..., r0:r1, :] = torch.addcmul(beta, rows, 1 + gamma)
        return out
