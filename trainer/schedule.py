"""The progressive curriculum as a pure function of the epoch.

Spatial: the coarsest generator scale trains first, at the coarsest resolution. Each finer scale is
added after ``epochs_per_scale`` epochs; for its first ``fix_coarse_epochs`` it trains alone (the
coarser scales frozen, so the new, random layers cannot wreck what they learnt), then jointly.
The finest scale keeps training until ``train.epochs``.

Temporal: clip length starts at ``start_frames`` and doubles every ``frames_double_every`` epochs, up
to ``max_frames``. It restarts at each new spatial scale: a finer scale costs 4x the memory per frame,
and a new scale must learn single frames before long clips (the reference code trains each spatial
scale as a separate run with its own temporal ramp).

Everything the loop needs to know about "where are we" comes from ``stage_at``: no hidden state, so
resuming at any epoch reproduces the same stage.
"""
from __future__ import annotations

from dataclasses import dataclass

from trainer.config import ScheduleConfig


@dataclass(frozen=True)
class Stage:
    scale: int
    """Finest generator scale in use (0 = coarsest)."""
    height: int
    width: int
    frames: int
    """Clip length the loader produces for this stage."""
    train_coarse: bool
    """Whether scales below ``scale`` train too (False while a new scale trains alone)."""

    @property
    def trainable_scales(self) -> tuple[int, ...]:
        """The scales whose parameters the optimizer updates: what the engines are built around."""
        return tuple(range(self.scale + 1)) if self.train_coarse else (self.scale,)


def stage_at(cfg: ScheduleConfig, epoch: int, *, scales: int, height: int, width: int) -> Stage:
    """The stage of ``epoch`` (0-based) for a generator of ``scales`` scales at full ``height`` x ``width``."""
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    if scales < 1:
        raise ValueError(f"scales must be >= 1, got {scales}")
    factor = 2 ** (scales - 1)
    if height % factor or width % factor:
        raise ValueError(f"{height}x{width} is not divisible by 2**(scales-1) = {factor}")
    scale = min(epoch // cfg.epochs_per_scale, scales - 1)
    into_scale = epoch - scale * cfg.epochs_per_scale
    frames = min(cfg.max_frames, cfg.start_frames * 2 ** (into_scale // cfg.frames_double_every))
    down = 2 ** (scales - 1 - scale)
    return Stage(scale=scale, height=height // down, width=width // down, frames=frames,
                 train_coarse=scale == 0 or into_scale >= cfg.fix_coarse_epochs)


def lr_factor(epoch: int, epochs: int, decay_epochs: int) -> float:
    """Learning-rate multiplier: 1, then linear decay over the last ``decay_epochs`` epochs.

    Decay epoch k (1-based) uses ``1 - k / (decay_epochs + 1)``: the rate shrinks every epoch and never
    reaches 0 while training (an epoch at lr 0 would be wasted).
    """
    start = epochs - decay_epochs
    if epoch < start:
        return 1.0
    return 1.0 - (epoch - start + 1) / (decay_epochs + 1)
