"""Multi-scale PatchGAN discriminators: the image discriminator and the temporal (video) one.

Every discriminator returns ``list[list[Tensor]]``: one feature list per spatial scale, each the
output of every layer with the patch logits last, so feature matching can read the intermediate
ones. The temporal discriminator returns one such list per temporal scale it could apply.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.compiling import compile_each
from models.config import DiscriminatorConfig
from models.layers import conv_factory
from models.norms import BatchNorm2d, InstanceNorm2d
from models.scales import IMAGE_CHANNELS
from models.warp import compose_flows

DOutput = list[list[Tensor]]

# Flows enter the temporal discriminator divided by this, as in the original (pixels -> ~unit range).
FLOW_INPUT_SCALE = 20.0
MAX_WIDTH = 512


class PatchDiscriminator(nn.Module):
    """pix2pixHD's N-layer PatchGAN: 4x4 convs, ``n_layers`` of them with stride 2, then two with
    stride 1; LeakyReLU(0.2); no norm on the first and last layer."""

    def __init__(self, c_in: int, cfg: DiscriminatorConfig) -> None:
        super().__init__()
        conv = conv_factory(cfg.spectral_norm)
        pad = math.ceil((4 - 1) / 2)
        layers: list[nn.Module] = [nn.Sequential(conv(c_in, cfg.ndf, 4, stride=2, padding=pad),
                                                 nn.LeakyReLU(0.2))]
        width = cfg.ndf
        for n in range(1, cfg.n_layers + 1):
            prev, width = width, min(width * 2, MAX_WIDTH)
            stride = 2 if n < cfg.n_layers else 1
            layers.append(nn.Sequential(conv(prev, width, 4, stride=stride, padding=pad),
                                        _norm(cfg.norm, width), nn.LeakyReLU(0.2)))
        layers.append(conv(width, 1, 4, stride=1, padding=pad))
        self.layers = nn.ModuleList(layers)

    def forward(self, x: Tensor) -> list[Tensor]:
        features = []
        for layer in self.layers:
            x = layer(x)
            features.append(x)
        return features


def compile_discriminators(module: nn.Module, mode: str = "default", backend: str | Callable = "inductor",
                           channels_last: bool = False) -> None:
    """Compile every PatchGAN in ``module`` in place (``train.compile``): the layers between the
    pooling and the windows, which stay eager. Each sees several batch sizes (the D and the G update
    judge different sets of frames; a clip's first chunk has no extra frames to judge), with trainable
    or frozen weights (the G update freezes them), at a size per stage. ``channels_last``: see
    ``models.compiling.compile_each``."""
    compile_each([m for m in module.modules() if isinstance(m, PatchDiscriminator)], mode, backend,
                 variants=64, channels_last=channels_last)


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "instance":
        return InstanceNorm2d(channels, affine=False)
    if kind == "batch":
        return BatchNorm2d(channels)
    return nn.Identity()


class MultiScaleDiscriminator(nn.Module):
    """``num_D`` PatchGANs; the i-th sees the input average-pooled i times by 2."""

    def __init__(self, c_in: int, cfg: DiscriminatorConfig) -> None:
        super().__init__()
        self.in_channels = c_in
        self.nets = nn.ModuleList(PatchDiscriminator(c_in, cfg) for _ in range(cfg.num_D))

    def forward(self, x: Tensor) -> DOutput:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"discriminator input must be [N, {self.in_channels}, H, W], got {tuple(x.shape)}")
        outputs = []
        for index, net in enumerate(self.nets):
            if index:
                x = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
            outputs.append(net(x))
        return outputs


class ImageDiscriminator(nn.Module):
    """Judges single frames conditioned on their label maps."""

    def __init__(self, cfg: DiscriminatorConfig, label_channels: int) -> None:
        super().__init__()
        self.net = MultiScaleDiscriminator(label_channels + IMAGE_CHANNELS, cfg)

    def forward(self, labels: Tensor, images: Tensor) -> DOutput:
        """``labels`` [..., C, H, W] and ``images`` [..., 3, H, W] (a time axis is folded into the batch)."""
        if labels.shape[:-3] != images.shape[:-3] or labels.shape[-2:] != images.shape[-2:]:
            raise ValueError(f"labels {tuple(labels.shape)} and images {tuple(images.shape)} must "
                             f"share leading dims and H, W")
        x = torch.cat([labels, images], dim=-3)
        return self.net(x.reshape(-1, *x.shape[-3:]))


def temporal_windows(frames: Tensor, flow: Tensor, length: int, stride: int
                     ) -> tuple[Tensor, Tensor] | None:
    """Windows of ``length`` frames ``stride`` apart, and the flows between their neighbours.

    ``frames`` [B, T, C, H, W] and ``flow`` [B, T, 2, H, W] (``flow[t]``: t -> t-1). The windows
    tile the clip from its start, consecutive windows sharing an end frame. Returns
    ``([B*N, length, C, H, W], [B*N, length-1, 2, H, W])`` (flow i maps window frame i+1 to i,
    composed over ``stride`` frames), or None when the clip is shorter than one window.
    """
    batch, total = frames.shape[:2]
    span = (length - 1) * stride
    if total < span + 1:
        return None
    starts = range(0, total - span, span)
    window_frames, window_flows = [], []
    for start in starts:
        window_frames.append(frames[:, start:start + span + 1:stride])
        steps = [compose_flows(flow[:, t + 1:t + stride + 1]) for t in range(start, start + span, stride)]
        window_flows.append(torch.stack(steps, dim=1))
    return torch.cat(window_frames, dim=0), torch.cat(window_flows, dim=0)


class TemporalDiscriminator(nn.Module):
    """vid2vid's video discriminator: K frames plus the K-1 flows between them, at frame strides
    1, K, K**2, ... (one multi-scale PatchGAN per temporal scale).

    The same reference flow (from the real clip) goes with real and fake frames, as in the paper:
    the discriminator then checks that the frames move the way the flow says.
    """

    def __init__(self, cfg: DiscriminatorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        c_in = IMAGE_CHANNELS * cfg.temporal_frames + 2 * (cfg.temporal_frames - 1)
        self.nets = nn.ModuleList(MultiScaleDiscriminator(c_in, cfg) for _ in range(cfg.temporal_scales))

    def usable_scales(self, frames: int) -> int:
        """Temporal scales whose window fits in a clip of ``frames`` frames."""
        k = self.cfg.temporal_frames
        return sum(1 for s in range(len(self.nets)) if (k - 1) * self.cfg.temporal_stride(s) + 1 <= frames)

    def forward(self, frames: Tensor, flow: Tensor) -> list[DOutput]:
        """``frames`` [B, T, 3, H, W], ``flow`` [B, T, 2, H, W] -> one output per usable temporal scale."""
        if frames.dim() != 5 or frames.shape[2] != IMAGE_CHANNELS or flow.shape[:2] != frames.shape[:2] \
                or flow.shape[2] != 2 or flow.shape[-2:] != frames.shape[-2:]:
            raise ValueError(f"temporal discriminator needs frames [B, T, 3, H, W] and flow [B, T, 2, H, W], "
                             f"got {tuple(frames.shape)} and {tuple(flow.shape)}")
        outputs = []
        for scale in range(self.usable_scales(frames.shape[1])):
            windows = temporal_windows(frames, flow, self.cfg.temporal_frames, self.cfg.temporal_stride(scale))
            assert windows is not None
            clips, flows = windows
            x = torch.cat([clips.flatten(1, 2), flows.flatten(1, 2) / FLOW_INPUT_SCALE], dim=1)
            outputs.append(self.nets[scale](x))
        return outputs
