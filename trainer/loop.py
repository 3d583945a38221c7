"""``train(cfg)``: one training run, read top to bottom.

    join the process group -> build the networks -> resume? -> for each epoch:
        stage_at(epoch) changed?  rebuild the loader (new size / clip length) and, when the trainable
                                  generator scales changed, the generator engine (moments carried)
        for each batch (all ranks agree how many):  D then G update per chunk of frames
            log (rank 0, batched) -> held-out scores every N steps / s -> checkpoint every N steps
        checkpoint at the epoch end
    -> export the consolidated generator -> close tracking

Everything a resumed run needs to continue exactly (epoch, batch position, step, RNG, engine layout,
MLflow run) is in the checkpoint; the stage is recomputed from the epoch (``stage_at`` is pure).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from models.build import build as build_networks
from models.discriminators import compile_discriminators
from trainer import checkpoint, distributed as dist, engines
from trainer.average import WeightAverage
from trainer.batches import TimeBudget, agreed_batches, prepared
from trainer.checkpoint import CheckpointHook, Checkpointer, Progress
from trainer.config import Config
from trainer.config_tree import flatten, to_dict
from trainer.export import export_run
from trainer.samples import log_sample
from trainer.schedule import Stage, lr_factor, stage_at
from trainer.step import Discriminators, StepSettings, check_weights, count_skipped, train_batch
from trainer.tracking import make_tracker
from trainer.validation import Validation

log = logging.getLogger(__name__)
failure_log = logging.getLogger("trainer.failure")
"""Why this rank stopped (not a console progress line under Ray: the CLI prints the error once)."""
_LOGGED = "_trainer_failure_logged"

_FLUSH_AT_SAVE_S = 5.0
"""Longest wait for the tracking server at a checkpoint (see ``_Run.save``)."""


@dataclass
class TrainResult:
    progress: Progress
    last_losses: dict[str, float]
    checkpoint: Path | None
    export: Path | None


def train(cfg: Config, on_checkpoint: CheckpointHook | None = None) -> TrainResult:
    """Train as ``cfg`` says (resuming from ``checkpoint.dir`` when it holds a checkpoint).

    ``on_checkpoint(folder, last_losses)`` runs on every rank after each complete checkpoint: the
    launcher's hook (Ray Train reports it there; every rank must report equally often).
    """
    run, status = None, "FAILED"
    try:
        dist.init()
        run = _Run(cfg, on_checkpoint)  # a resume refused (a full disk) fails here
        run.budget.start()
        for epoch in range(run.progress.epoch, cfg.train.epochs):
            if dist.broadcast(run.budget.over()):
                run.budget.spent = True
                break
            run.enter_epoch(epoch)      # stage change? new loader / engines; learning rate
            run.train_epoch(epoch)      # D then G per chunk of frames, for every batch
            if run.budget.spent:        # stopped mid-epoch: the checkpoint keeps the batch position
                run.save()
                break
            run.progress.epoch, run.progress.batch = epoch + 1, 0
            run.save()
            log.info("epoch %d done: %s", epoch, run.summary())  # the console's progress line (cluster/run_log.py)
        if run.budget.spent:
            log.info("time budget of %.0f s spent: stopped at epoch %d, batch %d, step %d", cfg.train.time_budget_s,
                     run.progress.epoch, run.progress.batch, run.progress.step)
        run.log_sample(cfg.train.epochs)
        exported = export_run(cfg, run.checkpointer.last, run.loader.labels)
        if exported is not None:
            run.tracker.set_tag("export", str(exported.resolve()))
        status = "FINISHED"
        return TrainResult(run.progress, run.last_losses, run.checkpointer.last, exported)
    except Exception as err:
        # Said before the cleanup below (the tracker's flush can take seconds): once one rank fails, Ray
        # stops the others, and a rank stopped first would leave its log without the reason (seen in CI).
        failure_log.exception("training failed: %s: %s", type(err).__name__, err)
        setattr(err, _LOGGED, True)
        raise
    finally:
        if run is not None:
            run.close(status)


def failure_logged(err: BaseException) -> bool:
    """Whether ``train`` logged ``err``, with its traceback, before cleaning up (a failure while closing
    a finished run is not)."""
    return getattr(err, _LOGGED, False)


class _Run:
    """The state of one training run that outlives an epoch: networks, engines, loader, tracker."""

    def __init__(self, cfg: Config, on_checkpoint: CheckpointHook | None = None) -> None:
        from dataio.loader import build_loader  # DALI: imported when a run starts, not with the trainer

        self.cfg, self.device, self.world = cfg, dist.device(), dist.world_size()
        self._build_loader = build_loader
        # Same initial weights on every rank (DeepSpeed broadcasts rank 0's too; these are what it sends).
        torch.manual_seed(cfg.train.seed)
        first = _stage(cfg, 0)
        self.loader = build_loader(cfg.data, first.height, first.width, first.frames, rank=dist.rank(),
                                   world_size=self.world, epoch_seed=0)
        self.loader_shape = (first.height, first.width, first.frames)
        nets = build_networks(cfg.model, self.loader.label_channels)  # a property of the shards, not the config
        self.generator = nets.generator
        self.discriminators = Discriminators(nets.image_discriminator, nets.temporal_discriminator)
        if cfg.train.compile != "off":
            self.generator.compile_frame_step(cfg.train.compile, channels_last=cfg.train.channels_last)
            compile_discriminators(self.discriminators, cfg.train.compile, channels_last=cfg.train.channels_last)
        self.average = WeightAverage(cfg.train.weight_average)
        self.settings = StepSettings.of(cfg, nets, self.device, on_generator_update=lambda: self.average.update(
            self.generator))
        self.progress, self.stage, self.engines = Progress(), None, None
        self.budget = TimeBudget(cfg.train.time_budget_s)
        self.validation = Validation(cfg, self.budget, self.average)  # refuses a missing split before a run is tracked
        self.checkpointer = Checkpointer(cfg.checkpoint, to_dict(cfg), on_checkpoint)
        if self.checkpointer.last is not None:
            self._resume(self.checkpointer.last)
        self.tracker = make_tracker(cfg.tracking, flatten(cfg), run_id=self.progress.run_id or None,
                                    tags={"world_size": str(self.world),
                                          "checkpoint_dir": str(Path(cfg.checkpoint.dir).resolve())})
        self.last_losses: dict[str, float] = {}
        self.sample_batch: Any = None
        self.lr_scale, self.frames_per_s = 1.0, 0.0

    def _resume(self, folder: Path) -> None:
        # A restart after a full disk would otherwise train until its next save and fail there.
        shortage = dist.broadcast(checkpoint.space_shortage(self.cfg.checkpoint.dir) if dist.is_main() else "")
        if shortage:
            raise checkpoint.CheckpointSpaceError(shortage)
        checkpoint.check_resumable(folder, self.checkpointer.config, self.loader.label_channels)
        saved = checkpoint.load_trainer_state(folder)
        self.progress = Progress(**saved["progress"])
        # The engines exactly as they were saved (the stage and param groups of that moment); the epoch
        # loop then moves on to the current stage as an unbroken run would.
        self.stage = Stage(**saved["stage"])
        self.engines = engines.resumed(self.stage, self.generator, self.discriminators, self.cfg.train,
                                       self.cfg.data.loader.batch_size, self.progress.new_params, folder)
        checkpoint.restore_rng(folder)
        self.average.load(folder, self.generator)
        log.info("resumed from %s (epoch %d, batch %d, step %d)", folder, self.progress.epoch,
                 self.progress.batch, self.progress.step)

    def enter_epoch(self, epoch: int) -> None:
        cfg, stage = self.cfg, _stage(self.cfg, epoch)
        if stage != self.stage:
            self.log_sample(epoch)  # the stage that ends
            before = self.engines
            self.engines = engines.for_stage(stage, self.generator, self.discriminators, before, cfg.train,
                                             cfg.data.loader.batch_size)
            if before is None or self.engines.generator is not before.generator:
                self.average.reset(self.generator)  # new trainable scales: not averaged with their start
            self.stage = stage
            log.info("epoch %d: stage %s", epoch, stage)
        shape = (stage.height, stage.width, stage.frames)
        if shape != self.loader_shape:  # DALI pipelines have a fixed output size and clip length
            self.loader = self._build_loader(cfg.data, *shape, rank=dist.rank(), world_size=self.world,
                                             epoch_seed=epoch)
            self.loader_shape = shape
        self.loader.epoch = epoch  # the data order of an epoch depends on the epoch alone
        self.lr_scale = lr_factor(epoch, cfg.train.epochs, cfg.train.decay_epochs)
        engines.set_lr(self.engines.generator, cfg.train.generator.lr * self.lr_scale)
        engines.set_lr(self.engines.discriminator, cfg.train.discriminator.lr * self.lr_scale)

    def train_epoch(self, epoch: int) -> None:
        cfg, progress = self.cfg, self.progress
        skip = progress.batch if epoch == progress.epoch else 0
        # The label flow ahead, in a thread: on a GPU the host is otherwise idle while the step runs; on
        # the CPU the step's threads take every core, and OpenCV's beside them slowed training (then
        # the step computes it, once per batch).
        ahead = self.generator.label_prior and self.device.type != "cpu"
        batches = prepared(self.loader, self.device, ahead, skip)
        for index, batch in enumerate(agreed_batches(batches, cfg.train.steps_per_epoch, self.budget)):
            if index < skip:
                continue  # resumed mid-epoch: these batches were trained before the checkpoint
            started = time.perf_counter()
            results = train_batch(self.engines, batch, self.settings)
            progress.batch = index + 1
            self.frames_per_s = batch.rgb.shape[0] * batch.rgb.shape[1] * self.world / (time.perf_counter() - started)
            for result in results:
                progress.step += 1
                count_skipped(result, progress, cfg.train.max_bad_steps)
                self.last_losses = result.losses
                if progress.step % cfg.train.log_every == 0:
                    self.tracker.log_metrics({
                        **result.losses, "lr/generator": cfg.train.generator.lr * self.lr_scale,
                        "stage/scale": self.stage.scale, "stage/frames": self.stage.frames,
                        "frames_per_s": self.frames_per_s, "skipped_steps": progress.skipped,
                        "skipped_samples": self.loader.stats.skipped}, progress.step)
            self.sample_batch = batch
            scores = self.validation.after_batch(self.generator, self.stage, progress.step, len(results), self.tracker)
            if scores:
                progress.eval = scores
            every = cfg.checkpoint.every_steps
            if every and progress.step // every > (progress.step - len(results)) // every:
                self.save()

    def save(self) -> None:
        """Checkpoint, unless the last step was skipped: the update before a non-finite loss may have
        poisoned the weights, and the last good checkpoint must stay the newest. Weights that are not
        finite after finite losses end the run (``check_weights``)."""
        if self.progress.bad_in_row:
            return
        # Ends the run where they are not finite.
        check_weights(self.engines, self.progress.step, self.checkpointer.last, self.average.shadow)
        if self.cfg.eval.at_checkpoint and self.progress.eval.get("eval/step") != self.progress.step:
            self.progress.eval = self.validation.score(self.generator, self.stage, self.progress.step, self.tracker)
        # Metrics up to a checkpoint go out with it: a worker lost after this save restarts from it,
        # and its buffered metrics would be gone. The wait is short so that a hung tracking server
        # cannot stall training; it also makes the run id known before the state records it.
        self.tracker.flush(timeout_s=_FLUSH_AT_SAVE_S)
        self.progress.run_id = self.tracker.run_id or self.progress.run_id
        self.progress.new_params = self.engines.new_params
        saved = self.checkpointer.save(self.progress, self.stage, self.engines, self.average, self.last_losses)
        self.tracker.set_tag("checkpoint", str(saved.resolve()))

    def close(self, status: str) -> None:
        """End the run's tracking (``status``: FINISHED or FAILED) and release its threads and engines."""
        self.validation.close()
        self.tracker.close(status)
        if self.engines is not None:
            self.engines.destroy()

    def summary(self) -> str:
        losses = [f"{k} {self.last_losses[k]:.3f}" for k in ("g/total", "d/total") if k in self.last_losses]
        return ", ".join([f"step {self.progress.step}", *losses, f"{self.frames_per_s:.1f} frames/s"])

    def log_sample(self, epoch: int) -> None:
        if self.stage is not None and self.sample_batch is not None:
            with self.average.applied(self.generator) as generator:
                log_sample(self.tracker, self.cfg, generator, self.sample_batch, self.stage, epoch)


def _stage(cfg: Config, epoch: int) -> Stage:
    return stage_at(cfg.train.schedule, epoch, scales=cfg.model.generator.num_scales,
                    height=cfg.train.height, width=cfg.train.width)
