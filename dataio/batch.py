"""What the loader hands the trainer: a batch of clips and the random draw behind each clip.

Its own module, free of DALI, so that the trainer's step, the benchmarks and the tests that build
batches by hand import it where DALI is not installed (a GPU machine with CUDA 13 and no
``nvidia-dali-cuda130`` wheel, say); ``dataio.pipeline`` and ``dataio.loader`` import it from here.
"""
from __future__ import annotations

import dataclasses

import torch


@dataclasses.dataclass(frozen=True)
class Draw:
    """The random choices for one sample, shared by all of its streams."""
    start: int
    """First frame of the window."""
    box: tuple[int, int, int, int]
    """Crop (y0, x0, y1, x1) in source pixels, end exclusive."""
    flip: bool
    """Mirrored left-right."""


@dataclasses.dataclass
class ClipBatch:
    """One batch of clips. Tensors live on the CPU (``cpu``) or the current CUDA device (``mixed``)."""
    rgb: torch.Tensor
    """float32 [B, T, 3, H, W] in [-1, 1]."""
    labels: torch.Tensor
    """float32 [B, T, C, H, W]: one-hot classes (or a 3-channel rendering in [0, 1]), then instance
    edges in [0, 1] when the shards carry them."""
    flow: torch.Tensor
    """float32 [B, T, 2, H, W]: backward flow (x, y) in output pixels; zero at t=0."""
    flow_conf: torch.Tensor
    """float32 [B, T, 1, H, W] in [0, 1]; zero at t=0."""
    keys: list[str]
    draws: list[Draw]
    """The window start, crop box and flip of each clip (for logs and checks)."""
    label_flow: torch.Tensor | None = None
    """float32 [B, T-1, 2, H, W]: the flow prior of each frame after the first, from the label maps
    (``models/label_flow.py``), where the trainer computed it ahead of the step (``trainer/batches.py``)."""
