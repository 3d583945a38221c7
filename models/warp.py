"""Backward warping with flow in pixels, the convention of ``dataio/format.py``.

``flow[t]`` maps pixel ``p`` of frame t to ``p + flow[t](p)`` in frame t-1, so
``warp(frame[t-1], flow[t])`` approximates frame t and a predicted flow is directly comparable to
the packed flow target. ``grid_sample(..., align_corners=True)`` puts pixel centres at integer
coordinates 0..W-1, which makes an integer flow an exact shift (the original vid2vid code mixed
conventions and is off by half a pixel on PyTorch >= 1.3).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def warp(image: Tensor, flow: Tensor) -> Tensor:
    """Sample ``image`` [..., C, H, W] at ``p + flow(p)``; ``flow`` [..., 2, H, W] is (dx, dy) in pixels.

    Leading dimensions (batch, time) must match and are flattened. Samples outside the frame take
    the nearest border value.
    """
    if flow.shape[-3] != 2 or image.shape[-2:] != flow.shape[-2:] or image.shape[:-3] != flow.shape[:-3]:
        raise ValueError(f"warp: image {tuple(image.shape)} and flow {tuple(flow.shape)} must be "
                         f"[..., C, H, W] and [..., 2, H, W] with the same leading dims and H, W")
    height, width = image.shape[-2:]
    if height < 2 or width < 2:
        raise ValueError(f"warp: frames must be at least 2x2, got {height}x{width}")
    lead = image.shape[:-3]
    # Pixel coordinates need float32: bf16 cannot even represent x = 257 (8-bit mantissa), so a
    # half-precision grid would shift frames by whole pixels. Sample in float32, return in kind.
    dtype = torch.float32 if image.dtype in (torch.float16, torch.bfloat16) else image.dtype
    image4 = image.reshape(-1, *image.shape[-3:]).to(dtype)
    flow4 = flow.reshape(-1, 2, height, width).to(dtype)
    ys = torch.arange(height, dtype=dtype, device=image.device).view(1, height, 1)
    xs = torch.arange(width, dtype=dtype, device=image.device).view(1, 1, width)
    # Pixel -> [-1, 1] with align_corners=True: x = 0 is -1, x = W-1 is +1.
    grid_x = (xs + flow4[:, 0]) * (2.0 / (width - 1)) - 1.0
    grid_y = (ys + flow4[:, 1]) * (2.0 / (height - 1)) - 1.0
    grid = torch.stack([grid_x, grid_y], dim=-1)
    out = F.grid_sample(image4, grid, mode="bilinear", padding_mode="border", align_corners=True)
    return out.to(image.dtype).reshape(*lead, *out.shape[-3:])


def compose_flows(flows: Tensor) -> Tensor:
    """Chain consecutive backward flows [B, n, 2, H, W] (frames t-n+1..t) into one flow t -> t-n.

    ``flows[:, -1]`` is the flow of the latest frame t (to t-1), ``flows[:, 0]`` that of frame
    t-n+1 (to t-n). Following p -> q = p + f_t(p) -> q + f_{t-1}(q) gives
    ``f = f_t + warp(f_{t-1}, f_t)``, applied from the latest frame backwards.
    """
    if flows.dim() != 5 or flows.shape[2] != 2:
        raise ValueError(f"compose_flows: expected [B, n, 2, H, W], got {tuple(flows.shape)}")
    total = flows[:, -1]
    for i in range(flows.shape[1] - 2, -1, -1):
        total = total + warp(flows[:, i], total)
    return total
