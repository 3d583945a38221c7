"""SPADE: spatially-adaptive normalization (Park et al., CVPR 2019).

A parameter-free normalization whose scale and shift are predicted per pixel from the label map,
so the layout survives normalization instead of being averaged away.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class SPADE(nn.Module):
    """``norm(x) * (1 + gamma(labels)) + beta(labels)``; ``labels`` is resized (nearest) to ``x``."""

    def __init__(self, channels: int, label_channels: int, hidden: int, base: str = "instance",
                 conv=nn.Conv2d) -> None:
        super().__init__()
        if base == "instance":
            self.norm = nn.InstanceNorm2d(channels, affine=False)
        elif base == "batch":
            self.norm = nn.BatchNorm2d(channels, affine=False)
        else:
            raise ValueError(f"SPADE: base norm must be 'instance' or 'batch', got {base!r}")
        self.shared = nn.Sequential(conv(label_channels, hidden, 3, padding=1), nn.ReLU())
        self.gamma = conv(hidden, channels, 3, padding=1)
        self.beta = conv(hidden, channels, 3, padding=1)

    def forward(self, x: Tensor, labels: Tensor) -> Tensor:
        if labels.shape[-2:] != x.shape[-2:]:
            labels = F.interpolate(labels, size=x.shape[-2:], mode="nearest")
        hidden = self.shared(labels)
        return self.norm(x) * (1 + self.gamma(hidden)) + self.beta(hidden)
