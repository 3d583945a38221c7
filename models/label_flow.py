"""A flow prior from the label maps alone, which inference has for every frame.

Where a label map moves, the content moves with it: OpenCV's DIS flow between the label inputs of
frames t and t-1 (projected to one grey image each) is a dense guess of the flow t -> t-1, exact
along moving boundaries and interpolated inside uniform regions. The generator's flow head then
predicts only the correction (``model.generator.flow_prior: labels``).

Why: measured on the quality benchmark's held-out clips (docs/performance.md), the learned flow head
alone did not get below the end-point error of predicting no motion at all within a CPU budget
(0.64 px against 0.66 px on visible pixels, against the exact flow), and the same trained generators
warping with this prior instead of their own flow were 1.5-2.4x more temporally coherent at no loss
of PSNR. Its own average error is hardly lower (0.635 px on visible pixels; 0.52 px against the
packed flow of the real frames): at 64x128 the label maps move by sub-pixel steps that nearest-
neighbour resizing hides inside uniform regions, and what it gets right is the motion of boundaries,
where carried texture shows a wrong flow. The flow of the real frames (the training target) has
0.17 px there, and the same generators warping with it are more coherent still (1.6-11x lower
warping-error ratios): a better flow from the labels is where the next gain is.

It is computed on the CPU (0.7 ms per 128x64 frame pair, 14 ms at 512x256 on one core), on frames
scaled down to at most ``MAX_WIDTH`` pixels wide, and carries no gradient.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

MAX_WIDTH = 512
"""Wider label maps are downscaled (nearest) before the flow is estimated; the flow is scaled back."""


def label_flow(current: Tensor, previous: Tensor) -> Tensor:
    """Flow [B, 2, H, W] (pixels, frame t -> t-1, ``current(p) ~ previous(p + flow(p))``) between the
    label inputs ``current`` and ``previous`` [B, C, H, W] of frames t and t-1."""
    return clip_label_flows(torch.stack([previous, current], dim=1))[:, 0]


def clip_label_flows(labels: Tensor) -> Tensor:
    """The flow of every frame of clips [B, T, C, H, W] to the frame before it, [B, T-1, 2, H, W]: entry
    t-1 is ``label_flow(labels[:, t], labels[:, t-1])``. One copy to the host and one back for the whole
    clip: a frame loop on a GPU that asks ``label_flow`` frame by frame waits on the host every frame."""
    batch, frames = labels.shape[:2]
    height, width = labels.shape[-2:]
    if labels.device.type == "meta" or frames < 2:  # meta: shapes only (sizing models without memory)
        return labels.new_zeros(batch, max(0, frames - 1), 2, height, width)
    scale = min(1.0, MAX_WIDTH / width)
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    images = labels.detach().flatten(0, 1)
    if size != (height, width):
        images = F.interpolate(images, size=size, mode="nearest")
    images = images.float()  # after the resize: label planes may come as uint8 (models/stripes.py)
    grey = _grey(images).unflatten(0, (batch, frames)).cpu().numpy()
    # A fresh DIS object per pair (0.05 ms): one that has seen other images returns a flow up to
    # 0.08 px different for the same pair, and a resumed run must repeat the uninterrupted one exactly.
    flows = np.stack([cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM).calc(clip[t], clip[t - 1], None)
                      for clip in grey for t in range(1, frames)])  # [B * (T-1), h, w, 2]
    # Laid out [N, 2, h, w] on the host: a channels-last flow would make the ops that take it choose
    # another memory layout for their outputs, and their reductions another summation order.
    flow = torch.from_numpy(flows).permute(0, 3, 1, 2).contiguous().to(labels.device)
    if size != (height, width):
        flow = F.interpolate(flow, size=(height, width), mode="bilinear", align_corners=False)
        flow = flow * torch.tensor([width / size[1], height / size[0]], device=flow.device).view(1, 2, 1, 1)
    flow = flow.unflatten(0, (batch, frames - 1))
    return flow.to(labels.dtype) if labels.is_floating_point() else flow


def _grey(labels: Tensor) -> Tensor:
    """[..., C, H, W] label inputs -> uint8 [..., H, W]: channel c weighs (c + 1) / C, so each class of a
    one-hot map gets its own grey level and an instance-edge channel (the last) shows white."""
    channels = labels.shape[-3]
    weights = torch.arange(1, channels + 1, dtype=labels.dtype, device=labels.device) / channels
    grey = (labels * weights.view(channels, 1, 1)).sum(dim=-3).clamp(0, 1)
    return (grey * 255).round().to(torch.uint8)
