"""Per-frame fidelity (PSNR, SSIM) and temporal consistency (warping error) of generated clips.

All metrics work on the [0, 1] scale (frames arrive in [-1, 1]) so the numbers compare with the
literature, which reports PSNR with peak 1 (or 255 on 8-bit images: the same dB) and SSIM with
C1 = (0.01 L)^2, C2 = (0.03 L)^2 for L = 1. Half-precision inputs are cast up: squared errors of
bf16 frames would lose most of their digits.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from models.warp import warp

PSNR_CAP_DB: float = 100.0
"""PSNR of identical frames (MSE 0) is reported as this cap, so reports stay finite JSON."""

SSIM_WINDOW = 11
_SSIM_SIGMA = 1.5
_SSIM_C1 = 0.01 ** 2
_SSIM_C2 = 0.03 ** 2


def _unit(frames: Tensor) -> Tensor:
    """[-1, 1] -> [0, 1], at least float32 (float64 stays float64)."""
    dtype = torch.float64 if frames.dtype == torch.float64 else torch.float32
    return (frames.to(dtype) + 1) / 2


def _check_pair(name: str, fake: Tensor, real: Tensor) -> None:
    if fake.shape != real.shape or fake.dim() < 3 or fake.shape[-3] != 3:
        raise ValueError(f"{name}: fake {tuple(fake.shape)} and real {tuple(real.shape)} must both "
                         f"be [..., 3, H, W] with the same shape")


def psnr(fake: Tensor, real: Tensor) -> Tensor:
    """[..., 3, H, W] in [-1, 1] -> [...] dB, computed on the [0, 1] scale (peak 1), mean over C,H,W;
    capped at PSNR_CAP_DB."""
    _check_pair("psnr", fake, real)
    mse = (_unit(fake) - _unit(real)).square().mean(dim=(-3, -2, -1))
    # log10(0) is -inf -> +inf dB; the cap also bounds near-identical frames, so the value is
    # continuous in the MSE instead of jumping from ~150 dB to the cap.
    value = -10 * torch.log10(mse)
    return value.clamp(max=PSNR_CAP_DB)


def _gaussian_window(dtype: torch.dtype, device: torch.device) -> Tensor:
    """Normalised 1-D Gaussian of 11 taps: skimage's ``gaussian_weights=True`` (sigma 1.5,
    truncate 3.5 -> radius 5) is exactly this kernel applied separably."""
    offsets = torch.arange(SSIM_WINDOW, dtype=torch.float64) - (SSIM_WINDOW - 1) / 2
    kernel = torch.exp(-offsets.square() / (2 * _SSIM_SIGMA ** 2))
    return (kernel / kernel.sum()).to(dtype=dtype, device=device)


def _filter_valid(images: Tensor, kernel: Tensor) -> Tensor:
    """Separable Gaussian filtering of [N, C, H, W] with no padding ('valid')."""
    channels = images.shape[1]
    rows = kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1)
    cols = kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1)
    return F.conv2d(F.conv2d(images, rows, groups=channels), cols, groups=channels)


def ssim(fake: Tensor, real: Tensor) -> Tensor:
    """[..., 3, H, W] in [-1, 1] -> [...]. Wang et al. 2004 SSIM on the [0,1] scale: 11x11 Gaussian
    window sigma 1.5, C1=(0.01)^2, C2=(0.03)^2, 'valid' filtering (no padding, like skimage with
    gaussian_weights=True, use_sample_covariance=False), averaged over channels and positions.
    Frames smaller than 11 px on a side: raise ValueError naming the size."""
    _check_pair("ssim", fake, real)
    height, width = fake.shape[-2:]
    if height < SSIM_WINDOW or width < SSIM_WINDOW:
        raise ValueError(f"ssim: frames are {height}x{width}, the {SSIM_WINDOW}x{SSIM_WINDOW} "
                         f"window needs at least {SSIM_WINDOW} px on each side")
    lead = fake.shape[:-3]
    # float64: the variances are E[x^2] - mu^2, and float32 cancellation there (~3e-8) is visible
    # against C2 = 9e-4 on flat regions (4e-5 off the exact SSIM of two constant images).
    x = _unit(fake).to(torch.float64).reshape(-1, 3, height, width)
    y = _unit(real).to(torch.float64).reshape(-1, 3, height, width)
    kernel = _gaussian_window(x.dtype, x.device)
    # One filtering pass over the five moments instead of five passes.
    moments = _filter_valid(torch.cat([x, y, x * x, y * y, x * y], dim=1), kernel)
    mu_x, mu_y, xx, yy, xy = moments.split(3, dim=1)
    var_x = xx - mu_x.square()
    var_y = yy - mu_y.square()
    cov = xy - mu_x * mu_y
    numerator = (2 * mu_x * mu_y + _SSIM_C1) * (2 * cov + _SSIM_C2)
    denominator = (mu_x.square() + mu_y.square() + _SSIM_C1) * (var_x + var_y + _SSIM_C2)
    result = (numerator / denominator).mean(dim=(1, 2, 3)).reshape(lead)
    return result.to(torch.float64 if fake.dtype == torch.float64 else torch.float32)


@dataclass
class WarpingError:
    """Per-clip temporal warping error with the weight it was averaged over."""

    error: Tensor
    """[B]: mean squared error per valid weighted pixel, on the [0, 1] scale; nan where weight is 0."""
    weight: Tensor
    """[B]: sum of the weights used, so callers can aggregate clips correctly:
    sum(error * weight) / sum(weight) over clips with weight > 0."""


def _in_frame(flow: Tensor) -> Tensor:
    """[..., 2, H, W] -> [..., H, W] bool: does p + flow(p) land inside the frame?

    With align_corners=True pixel centres sit at 0..W-1, so anything beyond is a border-clamped
    copy of the edge pixel: it carries no evidence about the previous frame and must not count.
    """
    height, width = flow.shape[-2:]
    xs = torch.arange(width, dtype=flow.dtype, device=flow.device).view(1, width)
    ys = torch.arange(height, dtype=flow.dtype, device=flow.device).view(height, 1)
    x = xs + flow[..., 0, :, :]
    y = ys + flow[..., 1, :, :]
    return (x >= 0) & (x <= width - 1) & (y >= 0) & (y <= height - 1)


def warping_error(frames: Tensor, flow: Tensor, confidence: Tensor | None = None) -> WarpingError:
    """Temporal consistency (Lai et al. 2018, 'Learning blind video temporal consistency'): for t >= 1,
    E = sum_t sum_p M_t(p) * mean_c (F_t(p) - warp(F_{t-1}, flow_t)(p))^2 / sum_t sum_p M_t(p),
    frames [B, T, 3, H, W] in [-1, 1] (mapped to [0, 1]), flow [B, T, 2, H, W] (backward, see
    models/warp.py; flow[:, 0] unused), confidence [B, T, 1, H, W] or None (= 1).
    M_t = confidence_t times a validity mask that is 0 where p + flow_t(p) falls outside the frame
    (border-clamped samples are not evidence). T < 2 -> ValueError."""
    if frames.dim() != 5 or frames.shape[2] != 3:
        raise ValueError(f"warping_error: frames must be [B, T, 3, H, W], got {tuple(frames.shape)}")
    batch, steps, _, height, width = frames.shape
    if steps < 2:
        raise ValueError(f"warping_error: needs at least 2 frames per clip, got T={steps}")
    if tuple(flow.shape) != (batch, steps, 2, height, width):
        raise ValueError(f"warping_error: flow {tuple(flow.shape)} must be "
                         f"{(batch, steps, 2, height, width)} for frames {tuple(frames.shape)}")
    if confidence is not None and tuple(confidence.shape) != (batch, steps, 1, height, width):
        raise ValueError(f"warping_error: confidence {tuple(confidence.shape)} must be "
                         f"{(batch, steps, 1, height, width)}")
    unit = _unit(frames)
    motion = flow[:, 1:].to(unit.dtype)
    warped = warp(unit[:, :-1], motion)
    squared = (unit[:, 1:] - warped).square().mean(dim=2)  # [B, T-1, H, W]
    mask = _in_frame(motion).to(torch.float64)
    if confidence is not None:
        mask = mask * confidence[:, 1:, 0].to(torch.float64)
    # Sums over up to T*H*W pixels: accumulate in float64 so long clips keep their digits.
    weight = mask.sum(dim=(1, 2, 3))
    total = (mask * squared.to(torch.float64)).sum(dim=(1, 2, 3))
    error = torch.where(weight > 0, total / weight.clamp(min=torch.finfo(torch.float64).tiny),
                        torch.full_like(weight, float("nan")))
    return WarpingError(error=error, weight=weight)


@dataclass
class FlowDiagnostics:
    """What the sequential generator does inside, against a ground truth that knows the exact flow and
    which pixels are newly seen (``dataio.synth``): sums over the frames that have a flow, pooled over
    clips with ``+``; ``means()`` turns them into the reported numbers."""
    mask_disoccluded: float = 0.0
    """Sum of the mask m over disoccluded pixels (m = 1: hallucinated)."""
    disoccluded: float = 0.0
    mask_visible: float = 0.0
    visible: float = 0.0
    l1_hallucinated: float = 0.0
    """Sum of |h - real| per pixel (channel mean, [0, 1] scale), all pixels."""
    l1_hallucinated_disoccluded: float = 0.0
    l1_warped: float = 0.0
    """The same for the previous output warped by the predicted flow."""
    l1_output: float = 0.0
    pixels: float = 0.0
    epe_visible: float = 0.0
    """Sum of the end-point error (pixels) of the predicted flow over visible pixels."""
    zero_flow_epe_visible: float = 0.0
    """The same for a flow of 0 (the true flow's length): what predicting nothing scores."""
    psnr_by_frame: list[float] = field(default_factory=list)
    """Sum over clips of each frame's PSNR (frame 0: the label-only first frame)."""
    clips: int = 0

    def __add__(self, other: FlowDiagnostics) -> FlowDiagnostics:
        longest = max(len(self.psnr_by_frame), len(other.psnr_by_frame))
        pad = [0.0] * longest
        summed = {f.name: getattr(self, f.name) + getattr(other, f.name)
                  for f in fields(self) if f.name != "psnr_by_frame"}
        by_frame = [a + b for a, b in zip((self.psnr_by_frame + pad)[:longest], (other.psnr_by_frame + pad)[:longest])]
        return FlowDiagnostics(**summed, psnr_by_frame=by_frame)

    def means(self) -> dict[str, Any]:
        def ratio(a: float, b: float) -> float:
            return a / b if b else math.nan
        mask_new, mask_seen = ratio(self.mask_disoccluded, self.disoccluded), ratio(self.mask_visible, self.visible)
        return {"mask_disoccluded": mask_new, "mask_visible": mask_seen,
                "mask_ratio": ratio(mask_new, mask_seen),
                "disoccluded_share": ratio(self.disoccluded, self.disoccluded + self.visible),
                "l1_hallucinated": ratio(self.l1_hallucinated, self.pixels),
                "l1_hallucinated_disoccluded": ratio(self.l1_hallucinated_disoccluded, self.disoccluded),
                "l1_warped": ratio(self.l1_warped, self.pixels), "l1_output": ratio(self.l1_output, self.pixels),
                "flow_epe_visible": ratio(self.epe_visible, self.visible),
                "zero_flow_epe_visible": ratio(self.zero_flow_epe_visible, self.visible),
                "psnr_by_frame": [ratio(p, self.clips) for p in self.psnr_by_frame]}


def flow_diagnostics(images: Tensor, hallucinated: Tensor, warped: Tensor, mask: Tensor, flow: Tensor,
                     real: Tensor, true_flow: Tensor, disoccluded: Tensor) -> FlowDiagnostics:
    """Diagnostics of generated clips [B, T, ...] (``models.generator.ClipOutput``'s fields: output,
    h, warped previous output, m, predicted flow; frame 0 has none) against the real frames, the exact
    flow [B, T, 2, H, W] and the exact disocclusions [B, T, H, W] (bool). Frames 1.. are scored."""
    if images.dim() != 5 or images.shape[1] < 2:
        raise ValueError(f"flow_diagnostics: clips [B, T>=2, 3, H, W], got {tuple(images.shape)}")
    new = disoccluded[:, 1:].to(torch.float64)
    seen = 1 - new
    m = mask[:, 1:, 0].to(torch.float64)

    def l1(a: Tensor) -> Tensor:  # [B, T-1, H, W] on the [0, 1] scale
        return (_unit(a[:, 1:]) - _unit(real[:, 1:])).abs().mean(dim=2).to(torch.float64)
    epe = (flow[:, 1:] - true_flow[:, 1:]).to(torch.float64).norm(dim=2)
    still = true_flow[:, 1:].to(torch.float64).norm(dim=2)
    l1_h = l1(hallucinated)
    return FlowDiagnostics(
        mask_disoccluded=float((m * new).sum()), disoccluded=float(new.sum()),
        mask_visible=float((m * seen).sum()), visible=float(seen.sum()),
        l1_hallucinated=float(l1_h.sum()), l1_hallucinated_disoccluded=float((l1_h * new).sum()),
        l1_warped=float(l1(warped).sum()), l1_output=float(l1(images).sum()), pixels=float(new.numel()),
        epe_visible=float((epe * seen).sum()), zero_flow_epe_visible=float((still * seen).sum()),
        psnr_by_frame=psnr(images, real).to(torch.float64).sum(dim=0).tolist(), clips=images.shape[0])
