"""Score a generator on held-out clips: per-frame fidelity, temporal consistency, FID and FVD.

Every clip is generated from its labels alone, first frame included (as at inference: no real frame
is shown to the generator), then compared with the real clip:

- **PSNR / SSIM** per frame against the real frame, averaged over the clip's frames.
- **Warping error** (``models.metrics.warping_error``): each generated frame warped to the next with
  the *real* (packed) flow, masked by its confidence; the same for the real clip. The real clip's error
  is what the flow itself cannot explain (occlusions it missed, resampling), so the ratio of the two is
  the generator's own flicker: 1.0 is as coherent as the real video.
- **FID** over all frames, **FVD** over all clips, when feature networks are given (``EvalConfig``);
  otherwise the report says which was skipped and why.

The clips with the lowest and highest PSNR are kept for a side-by-side video. Aggregates pool pixels:
the warping error of the set is the confidence-weighted mean over all clips (not a mean of ratios).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import Tensor

from dataio.errors import UserInputError
from models.frechet import FeatureNet, FeatureStats, frechet_distance
from models.metrics import psnr, ssim, warping_error

Synthesize = Callable[[Tensor], Tensor]
"""labels [B, T, C, H, W] -> generated frames [B, T, 3, H, W] in [-1, 1]."""


@dataclass
class ClipScore:
    key: str
    psnr: float
    """dB, mean over the clip's frames."""
    ssim: float
    warp_error: float
    """Mean squared warping error of the generated clip on the [0, 1] scale (nan: no confident flow)."""
    warp_error_real: float
    """The same for the real clip, with the same flow and mask."""
    warp_weight: float
    """Confidence mass behind both errors (pixels x frames); weights the clip in the set's error."""


@dataclass
class Report:
    clips: list[ClipScore]
    psnr: float
    ssim: float
    warp_error: float
    warp_error_real: float
    warp_ratio: float
    """Generated over real warping error of the set: 1.0 is as temporally coherent as the real video."""
    fid: float | None = None
    fvd: float | None = None
    skipped_metrics: dict[str, str] = field(default_factory=dict)
    """Metric -> why it was not computed."""
    worst: str = ""
    """Key of the clip with the lowest PSNR (top of the side-by-side video)."""
    best: str = ""
    """Key of the clip with the highest PSNR (bottom)."""
    info: dict[str, Any] = field(default_factory=dict)
    """What was evaluated: model, data, split, size, frames, skipped samples."""

    def to_json(self) -> dict[str, Any]:
        """Plain JSON types; nan (a clip without confident flow) becomes null."""
        return _finite(asdict(self))

    def summary(self) -> str:
        lines = [f"{len(self.clips)} clips: PSNR {self.psnr:.2f} dB  SSIM {self.ssim:.4f}  warping error "
                 f"{self.warp_error:.5f} (real video {self.warp_error_real:.5f}, ratio {self.warp_ratio:.2f})"]
        for name in ("fid", "fvd"):
            value = getattr(self, name)
            lines.append(f"{name.upper()}: " + (f"{value:.3f}" if value is not None
                                                else f"skipped ({self.skipped_metrics.get(name, '')})"))
        lines.append(f"worst clip {self.worst}, best clip {self.best} (by PSNR)")
        return "\n".join(lines)


@dataclass
class Shown:
    """One clip of the side-by-side video, kept as its uint8 picture [T, H, 3W, 3] (labels | generated
    | real): a float one-hot clip at paper scale would hold gigabytes."""
    key: str
    psnr: float
    video: np.ndarray


class NoClipsError(UserInputError, ValueError):
    """Nothing was scored: the split is empty or every sample was skipped."""


@dataclass
class Evaluation:
    report: Report
    worst: Shown
    best: Shown


def evaluate(synthesize: Synthesize, batches: Iterable, *, inception: FeatureNet | None = None,
             i3d: FeatureNet | None = None, skipped: dict[str, str] | None = None,
             max_clips: int = 0, on_clip: Callable[[ClipScore], None] | None = None) -> Evaluation:
    """Score every clip of ``batches`` (``dataio.batch.ClipBatch``es), or the first ``max_clips``.
    ``skipped`` names metrics the caller could not set up (no feature network) and why.

    A clip whose generated frames are not finite is scored (its PSNR is nan, null in JSON), counted in
    ``info["non_finite_clips"]`` and never shown as the worst or best clip.
    """
    from trainer.samples import side_by_side

    features = _FeatureSets(inception, i3d, dict(skipped or {}))
    scores: list[ClipScore] = []
    worst = best = first = None
    for batch in batches:
        n = len(batch.keys) if not max_clips else min(len(batch.keys), max_clips - len(scores))
        real, labels = batch.rgb[:n].float(), batch.labels[:n]
        fake = synthesize(labels).to(real.device)
        flow, conf = batch.flow[:n].float(), batch.flow_conf[:n].float()
        # SSIM frame by frame: it filters 15 float64 planes per frame (gigabytes for a clip at 2048x1024).
        frame_psnr = psnr(fake, real)  # [n, T]
        frame_ssim = torch.stack([ssim(fake[:, t], real[:, t]) for t in range(fake.shape[1])], dim=1)
        ours, theirs = warping_error(fake, flow, conf), warping_error(real, flow, conf)
        for i, key in enumerate(batch.keys[:n]):
            score = ClipScore(key, frame_psnr[i].mean().item(), frame_ssim[i].mean().item(), ours.error[i].item(),
                              theirs.error[i].item(), ours.weight[i].item())
            scores.append(score)
            lower = math.isfinite(score.psnr) and (worst is None or score.psnr < worst.psnr)
            higher = math.isfinite(score.psnr) and (best is None or score.psnr > best.psnr)
            if lower or higher or first is None:
                shown = Shown(key, score.psnr, side_by_side(labels[i], fake[i], real[i]))
                first = first or shown
                worst, best = (shown if lower else worst), (shown if higher else best)
            if on_clip is not None:
                on_clip(score)
        features.add(fake, real)
        if max_clips and len(scores) >= max_clips:
            break
    if not scores:
        raise NoClipsError("no clips to evaluate")
    report = _report(scores)
    report.fid, report.fvd = features.distances()
    report.skipped_metrics = features.skipped
    worst, best = worst or first, best or first
    report.worst, report.best = worst.key, best.key
    report.info = {"non_finite_clips": sum(not math.isfinite(s.psnr) for s in scores),
                   "fid_frames": features.stats["fid"][0].count, "fvd_clips": features.stats["fvd"][0].count}
    return Evaluation(report, worst, best)


class _FeatureSets:
    """Feature statistics of generated and real frames (FID) and clips (FVD)."""

    def __init__(self, inception: FeatureNet | None, i3d: FeatureNet | None, skipped: dict[str, str]) -> None:
        self.nets = {"fid": inception, "fvd": i3d}
        self.skipped = skipped
        for name, net in self.nets.items():
            if net is None:
                self.skipped.setdefault(name, "no feature network configured")
        self.stats = {name: (FeatureStats(), FeatureStats()) for name in self.nets}

    def add(self, fake: Tensor, real: Tensor) -> None:
        for name, net in self.nets.items():
            if net is None or name in self.skipped:
                continue
            fake_in, real_in = (fake.flatten(0, 1), real.flatten(0, 1)) if name == "fid" else (fake, real)
            try:
                self.stats[name][0].update(net(fake_in))
                self.stats[name][1].update(net(real_in))
            except (RuntimeError, ValueError) as err:  # a net that cannot take this input must not lose the rest
                first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
                self.skipped[name] = f"the feature network failed on input {tuple(fake_in.shape)}: {first_line}"

    def distances(self) -> tuple[float | None, float | None]:
        out = []
        for name in self.nets:
            fake, real = self.stats[name]
            if name in self.skipped:
                out.append(None)
            elif min(fake.count, real.count) < 2:
                self.skipped[name] = f"needs at least 2 samples per set, got {fake.count}"
                out.append(None)
            else:
                out.append(frechet_distance(fake, real))
        return out[0], out[1]


def _report(scores: list[ClipScore]) -> Report:
    weights = np.array([s.warp_weight for s in scores])
    ours = np.array([s.warp_error for s in scores])
    theirs = np.array([s.warp_error_real for s in scores])
    usable = weights > 0
    total = weights[usable].sum()
    warp = float((ours[usable] * weights[usable]).sum() / total) if total > 0 else math.nan
    warp_real = float((theirs[usable] * weights[usable]).sum() / total) if total > 0 else math.nan
    return Report(clips=scores, psnr=float(np.mean([s.psnr for s in scores])),
                  ssim=float(np.mean([s.ssim for s in scores])), warp_error=warp, warp_error_real=warp_real,
                  warp_ratio=warp / warp_real if warp_real > 0 else math.nan)


def side_by_side_video(evaluation: Evaluation, path: str | Path, fps: int = 8) -> Path:
    """labels | generated | real of the worst clip (top) and the best clip (bottom), as an mp4."""
    from trainer.samples import write_mp4

    rows = [evaluation.worst.video, evaluation.best.video]
    gap = np.full((rows[0].shape[0], 4, rows[0].shape[2], 3), 255, np.uint8)
    return write_mp4(np.concatenate([rows[0], gap, rows[1]], axis=1), path, fps=fps)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value
