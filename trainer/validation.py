"""Held-out scores during training: every ``eval.every_steps`` steps, ``eval.every_s`` seconds, or
right before each checkpoint (``eval.at_checkpoint``: what a sweep ranks trials and checkpoints by).

Rank 0 generates every clip of the ``eval.split`` split from its labels alone (as ``vid2vid eval``
does, with the same scoring code, ``trainer.evaluate``), with the averaged weights that are exported
(``trainer.average``), at the current stage's size, logs ``eval/*``
at that step and appends a line to ``<checkpoint.dir>/eval.jsonl`` (step, seconds of training, stage,
scores): a learning curve on held-out data in one run. Every rank gets the scores (the checkpoint
records the latest, and the cluster reports them to Ray with it). The other ranks wait; the time it takes
is handed back to the time budget on every rank, so equal budgets still mean equal training.

It changes nothing a checkpoint holds: no weights, no optimizer state, no random stream (generation
draws no random numbers, and the torch RNG is forked around it anyway), so a run that validates
resumes exactly like one that does not.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from dataio.errors import UserInputError
from models.generator import Generator, generate_clip
from trainer import distributed as dist
from trainer.average import WeightAverage
from trainer.batches import TimeBudget
from trainer.config import Config
from trainer.evaluate import evaluate
from trainer.schedule import Stage

log = logging.getLogger(__name__)

CURVE_FILE = "eval.jsonl"


class NoHeldOutError(UserInputError, ValueError):
    """Held-out scores are asked for and the shards have no clips to score."""


def enabled(cfg: Config) -> bool:
    """Whether the run scores held-out clips while it trains."""
    return bool(cfg.eval.every_steps or cfg.eval.every_s or cfg.eval.at_checkpoint)


def check_held_out(cfg: Config) -> None:
    """The ``eval.split`` clips exist and fit what scoring asks of them (``dataio.reader.planned``):
    asked before training (and by ``vid2vid train`` before any worker starts)."""
    from dataio import reader
    try:
        reader.planned(cfg.data, cfg.eval.split, cfg.eval.frames or cfg.data.clip_frames)
    except FileNotFoundError as err:
        raise NoHeldOutError(f"eval: {err} (eval.split={cfg.eval.split}; held-out scores are on: "
                             "eval.every_steps, eval.every_s or eval.at_checkpoint)") from None


class Validation:
    """Decides when to score the held-out clips, scores them and reports the scores."""

    def __init__(self, cfg: Config, budget: TimeBudget, average: WeightAverage) -> None:
        self.cfg, self.budget, self.average = cfg, budget, average
        self.enabled = enabled(cfg)
        self.path = Path(cfg.checkpoint.dir) / CURVE_FILE
        self._next_s = cfg.eval.every_s
        self._loader: Any = None
        self._loader_shape: tuple[int, int, int] | None = None
        if self.enabled and dist.is_main():
            check_held_out(cfg)  # now, not after the first stretch of training

    def after_batch(self, generator: Generator, stage: Stage, step: int, steps_in_batch: int,
                    tracker: Any) -> dict[str, float] | None:
        """Score now if a multiple of ``eval.every_steps`` was passed in this batch, or ``eval.every_s``
        more seconds of training went by (rank 0's clock decides for every rank); the scores, or None."""
        if not (self.cfg.eval.every_steps or self.cfg.eval.every_s):
            return None
        every = self.cfg.eval.every_steps
        due = bool(every) and step // every > (step - steps_in_batch) // every
        if self.cfg.eval.every_s and self.budget.elapsed() >= self._next_s:
            due = True
        if not dist.broadcast(due):
            return None
        scores = self.score(generator, stage, step, tracker)
        while self.cfg.eval.every_s and self._next_s <= self.budget.elapsed():
            self._next_s += self.cfg.eval.every_s
        return scores

    def score(self, generator: Generator, stage: Stage, step: int, tracker: Any) -> dict[str, float]:
        """Score now (every rank calls it; rank 0 works): ``eval/*`` and ``eval/step``, on every rank."""
        started = time.monotonic()
        scores = self._score(generator, stage, step, tracker) if dist.is_main() else {}
        dist.barrier()
        spent = dist.broadcast(time.monotonic() - started)
        self.budget.exclude(spent)
        return dist.broadcast(scores)

    def _score(self, generator: Generator, stage: Stage, step: int, tracker: Any) -> dict[str, float]:
        started = time.monotonic()
        loader = self._loader_for(stage)
        dtype = next(generator.parameters()).dtype
        was_training = generator.training
        generator.eval()
        try:
            with torch.random.fork_rng(devices=[]), torch.no_grad(), self.average.applied(generator):
                evaluation = evaluate(lambda labels: generate_clip(generator, labels.to(dtype)).images.float(),
                                      loader, max_clips=self.cfg.eval.max_clips)
        finally:
            generator.train(was_training)
        report = evaluation.report
        scores = {"psnr": report.psnr, "ssim": report.ssim, "warp_error": report.warp_error,
                  "warp_error_real": report.warp_error_real, "warp_ratio": report.warp_ratio}
        seconds = time.monotonic() - started
        tracker.log_metrics({**{f"eval/{k}": v for k, v in scores.items() if v == v},
                                  "eval/seconds": seconds}, step)
        line = {"step": step, "train_s": round(self.budget.elapsed(), 1), "scale": stage.scale,
                "height": loader.spec.height, "width": loader.spec.width, "clips": len(report.clips),
                "eval_s": round(seconds, 2), **{k: (v if v == v else None) for k, v in scores.items()}}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as out:
            out.write(json.dumps(line) + "\n")
        log.info("eval at step %d (%.0f s of training): %s", step, line["train_s"],
                 report.summary().splitlines()[0])
        return {**{f"eval/{k}": float(v) for k, v in scores.items()}, "eval/step": step}

    def _loader_for(self, stage: Stage):
        from dataio.loader import build_loader

        ecfg, data = self.cfg.eval, self.cfg.data
        height, width = (ecfg.height, ecfg.width) if ecfg.height else (stage.height, stage.width)
        shape = (height, width, ecfg.frames or data.clip_frames)
        if shape != self._loader_shape:
            if self._loader is not None:
                self._loader.close()
            data = dataclasses.replace(data, loader=dataclasses.replace(data.loader, batch_size=ecfg.batch_size))
            self._loader = build_loader(data, *shape, split=ecfg.split, augment=False)
            self._loader_shape = shape
        return self._loader

    def close(self) -> None:
        if self._loader is not None:
            self._loader.close()
            self._loader = None
