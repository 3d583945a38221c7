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

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from dataio.labels import LabelSpec
from models.build import build as build_networks
from models.generator import generate_clip
from trainer import checkpoint, distributed as dist, engines as engines_mod
from trainer.average import WeightAverage
from trainer.batches import TimeBudget, agreed_batches
from trainer.config import Config
from trainer.config_tree import flatten, to_dict
from trainer.export import export_generator, export_path
from trainer.schedule import Stage, lr_factor, stage_at
from trainer.step import ChunkResult, Discriminators, StepSettings, train_batch
from trainer.tracking import make_tracker
from trainer.validation import Validation

log = logging.getLogger(__name__)

_FLUSH_AT_SAVE_S = 5.0
"""Longest wait for the tracking server at a checkpoint (see ``_Run.save``)."""


class NonFiniteLossError(RuntimeError):
    """Too many consecutive steps with a non-finite loss; the message names the terms."""


@dataclass
class Progress:
    """The trainer state a checkpoint carries (besides the engines and RNG)."""
    epoch: int = 0
    """The epoch in progress (or the next to start)."""
    batch: int = 0
    """Batches of ``epoch`` already trained: a resumed run skips that many."""
    step: int = 0
    """Optimizer updates (chunks) attempted so far, skipped ones included."""
    skipped: int = 0
    bad_in_row: int = 0
    run_id: str = ""
    """The MLflow run, continued by a resumed run."""
    new_params: list[int] = field(default_factory=list)
    """Indices (in ``generator.parameters()`` order) of the generator's fresh Adam param group: the
    engine is rebuilt with the same layout on resume so its optimizer state loads."""
    eval: dict[str, float] = field(default_factory=dict)
    """The latest held-out scores (``eval/psnr`` ...) and ``eval/step``, the step they were taken at:
    what picks the best checkpoint of a run (``vid2vid model publish --best``)."""


@dataclass
class TrainResult:
    progress: Progress
    last_losses: dict[str, float]
    checkpoint: Path | None
    export: Path | None


CheckpointHook = Callable[[Path, dict[str, float]], None]


def train(cfg: Config, on_checkpoint: CheckpointHook | None = None) -> TrainResult:
    """Train as ``cfg`` says (resuming from ``checkpoint.dir`` when it holds a checkpoint).

    ``on_checkpoint(folder, last_losses)`` runs on every rank after each complete checkpoint: the
    launcher's hook (Ray Train reports it there; every rank must report equally often).
    """
    dist.init()
    run = _Run(cfg, on_checkpoint)
    status = "FAILED"
    try:
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
        exported = _export(cfg, run.last_save, run.loader.labels)
        if exported is not None:
            run.tracker.set_tag("export", str(exported.resolve()))
        status = "FINISHED"
        return TrainResult(run.progress, run.last_losses, run.last_save, exported)
    finally:
        run.validation.close()
        run.tracker.close(status)
        if run.engines is not None:
            run.engines.destroy()


class _Run:
    """The state of one training run that outlives an epoch: networks, engines, loader, tracker."""

    def __init__(self, cfg: Config, on_checkpoint: CheckpointHook | None = None) -> None:
        from dataio.loader import build_loader

        self.cfg, self.device, self.world = cfg, dist.device(), dist.world_size()
        self.on_checkpoint = on_checkpoint
        self._build_loader = build_loader
        # Same initial weights on every rank (DeepSpeed does not broadcast them for ZeRO 0).
        torch.manual_seed(cfg.train.seed)
        first = _stage(cfg, 0)
        self.loader = build_loader(cfg.data, first.height, first.width, first.frames, rank=dist.rank(),
                                   world_size=self.world, epoch_seed=0)
        self.loader_shape = (first.height, first.width, first.frames)
        nets = build_networks(cfg.model, self.loader.label_channels)  # a property of the shards, not the config
        self.generator = nets.generator
        self.discriminators = Discriminators(nets.image_discriminator, nets.temporal_discriminator)
        vgg = nets.vgg.to(self.device).eval().requires_grad_(False) if nets.vgg is not None else None
        self.settings = StepSettings(
            loss=cfg.model.loss,
            frames_per_step=cfg.train.frames_per_step,
            temporal_frames=cfg.model.discriminator.temporal_frames if nets.temporal_discriminator else 0,
            temporal_scales=cfg.model.discriminator.temporal_scales, vgg=vgg,
            dtype=torch.bfloat16 if engines_mod.precision(cfg.train.generator) == "bf16" else torch.float32)
        self.progress = Progress()
        self.engines: engines_mod.Engines | None = None
        self.stage: Stage | None = None
        self.budget = TimeBudget(cfg.train.time_budget_s)
        self.average = WeightAverage(cfg.train.weight_average)
        self.settings.on_generator_update = lambda: self.average.update(self.generator)
        self.validation = Validation(cfg, self.budget, self.average)  # refuses a missing split before a run is tracked
        self.last_save = checkpoint.latest_checkpoint(cfg.checkpoint.dir) if cfg.checkpoint.resume else None
        if self.last_save is not None:
            # A restart after a full disk would otherwise train until its next save and fail there.
            shortage = dist.broadcast(checkpoint.space_shortage(cfg.checkpoint.dir) if dist.is_main() else "")
            if shortage:
                raise checkpoint.CheckpointSpaceError(shortage)
            self._resume(self.last_save)
        self.tracker = make_tracker(cfg.tracking, flatten(cfg), run_id=self.progress.run_id or None,
                                    tags={"world_size": str(self.world),
                                          "checkpoint_dir": str(Path(cfg.checkpoint.dir).resolve())})
        self.last_losses: dict[str, float] = {}
        self.sample_batch: Any = None
        self.lr_scale = 1.0
        self.frames_per_s = 0.0

    def _resume(self, folder: Path) -> None:
        saved = checkpoint.load_trainer_state(folder)
        self.progress = Progress(**saved["progress"])
        # Rebuild the engines exactly as they were saved (the stage and param groups of that moment),
        # load them, and let the epoch loop move on to the current stage as an unbroken run would.
        self.stage = Stage(**saved["stage"])
        self.engines = _resumed_engines(self.stage, self.generator, self.discriminators, self.cfg,
                                        self.progress, folder)
        self.average.load(folder, self.generator)
        log.info("resumed from %s (epoch %d, batch %d, step %d)", folder, self.progress.epoch,
                 self.progress.batch, self.progress.step)

    def enter_epoch(self, epoch: int) -> None:
        cfg, stage = self.cfg, _stage(self.cfg, epoch)
        if stage != self.stage:
            self.log_sample(epoch)  # the stage that ends
            before = self.engines
            self.engines = _engines_for(stage, self.generator, self.discriminators, self.engines, cfg, self.progress)
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
        engines_mod.set_lr(self.engines.generator, cfg.train.generator.lr * self.lr_scale)
        engines_mod.set_lr(self.engines.discriminator, cfg.train.discriminator.lr * self.lr_scale)

    def train_epoch(self, epoch: int) -> None:
        cfg, progress = self.cfg, self.progress
        skip = progress.batch if epoch == progress.epoch else 0
        for index, batch in enumerate(agreed_batches(self.loader, cfg.train.steps_per_epoch, self.budget)):
            if index < skip:
                continue  # resumed mid-epoch: these batches were trained before the checkpoint
            started = time.perf_counter()
            batch = _to(batch, self.device)
            results = train_batch(self.engines, batch, self.settings)
            progress.batch = index + 1
            fps = batch.rgb.shape[0] * batch.rgb.shape[1] * self.world / (time.perf_counter() - started)
            self.frames_per_s = fps
            for result in results:
                progress.step += 1
                _count_bad(result, progress, cfg.train.max_bad_steps)
                self.last_losses = result.losses
                if progress.step % cfg.train.log_every == 0:
                    self.tracker.log_metrics({
                        **result.losses, "lr/generator": cfg.train.generator.lr * self.lr_scale,
                        "stage/scale": self.stage.scale, "stage/frames": self.stage.frames, "frames_per_s": fps,
                        "skipped_steps": progress.skipped, "skipped_samples": self.loader.stats.skipped},
                        progress.step)
            self.sample_batch = batch
            scores = self.validation.after_batch(self.generator, self.stage, progress.step, len(results), self.tracker)
            if scores:
                progress.eval = scores
            every = cfg.checkpoint.every_steps
            if every and progress.step // every > (progress.step - len(results)) // every:
                self.save()

    def save(self) -> None:
        """Checkpoint, unless the last step was skipped: the update before a non-finite loss may have
        poisoned the weights, and the last good checkpoint must stay the newest.

        When only the data position moved since the last save (the epoch-end save right after a
        periodic save of the same step, or after a resume at an epoch's last batch), the engines are
        not written again: the new checkpoint of that step links the last one's engine files. It is
        still a full ``checkpoint.save`` (a new position and RNG, sealed atomically, and one save
        per call for whoever counts them: the cluster worker reports each save to Ray).
        """
        if self.progress.bad_in_row:
            return
        if self.cfg.eval.at_checkpoint and self.progress.eval.get("eval/step") != self.progress.step:
            self.progress.eval = self.validation.score(self.generator, self.stage, self.progress.step, self.tracker)
        # Metrics up to a checkpoint go out with it: a worker lost after this save restarts from it,
        # and its buffered metrics would be gone. The wait is short so that a hung tracking server
        # cannot stall training; it also makes the run id known before the state records it.
        self.tracker.flush(timeout_s=_FLUSH_AT_SAVE_S)
        state = _trainer_state(self.cfg, self.engines, self.progress, self.tracker, self.stage)
        def write_engines(folder: Path) -> None:
            self.engines.save(folder)
            self.average.save(folder)
        # Rank 0's choice for all: ranks' states can differ (only rank 0's tracker knows the run id),
        # and a rank writing engines that the others link would hang DeepSpeed's collective save.
        if dist.broadcast(_only_position_moved(self.last_save, self.progress.step, state)):
            write_engines = checkpoint.reuse_engine_files(self.last_save)
        self.last_save = checkpoint.save(self.cfg.checkpoint.dir, self.progress.step, state, write_engines,
                                         self.cfg.checkpoint.keep, self.cfg.checkpoint.keep_best)
        self.tracker.set_tag("checkpoint", str(self.last_save.resolve()))
        if self.on_checkpoint is not None:
            self.on_checkpoint(self.last_save, self.last_losses)

    def summary(self) -> str:
        losses = [f"{k} {self.last_losses[k]:.3f}" for k in ("g/total", "d/total") if k in self.last_losses]
        return ", ".join([f"step {self.progress.step}", *losses, f"{self.frames_per_s:.1f} frames/s"])

    def log_sample(self, epoch: int) -> None:
        if self.stage is not None and self.sample_batch is not None:
            with self.average.applied(self.generator) as generator:
                _log_sample(self.tracker, self.cfg, generator, self.sample_batch, self.stage, epoch)


def _stage(cfg: Config, epoch: int) -> Stage:
    return stage_at(cfg.train.schedule, epoch, scales=cfg.model.generator.num_scales,
                    height=cfg.train.height, width=cfg.train.width)


def _resumed_engines(stage: Stage, generator: nn.Module, discriminators: nn.Module, cfg: Config,
                     progress: Progress, folder: Path) -> engines_mod.Engines:
    """The engines of checkpoint ``folder``: same trainable scales and param groups, then loaded."""
    generator.set_active_scales(stage.scale + 1)
    generator.set_trainable_scales(stage.trainable_scales)
    params = list(generator.parameters())
    micro = cfg.data.loader.batch_size
    built = engines_mod.Engines(
        engines_mod.build(generator, cfg.train.generator, micro, new_params=[params[i] for i in progress.new_params]),
        engines_mod.build(discriminators, cfg.train.discriminator, micro))
    built.load(folder)
    checkpoint.restore_rng(folder)
    return built


def _engines_for(stage: Stage, generator: nn.Module, discriminators: nn.Module,
                 current: engines_mod.Engines | None, cfg: Config, progress: Progress) -> engines_mod.Engines:
    """Engines for ``stage``: kept when the trainable generator parameters stay the same, else the
    generator engine is rebuilt with the moments of the parameters that keep training."""
    params = list(generator.parameters())
    before = {id(p) for p in params if p.requires_grad} if current is not None else set()
    generator.set_active_scales(stage.scale + 1)
    generator.set_trainable_scales(stage.trainable_scales)
    after = [p for p in params if p.requires_grad]
    micro = cfg.data.loader.batch_size
    if current is not None and {id(p) for p in after} == before:
        return current
    if current is None:
        progress.new_params = []
        return engines_mod.Engines(engines_mod.build(generator, cfg.train.generator, micro),
                                   engines_mod.build(discriminators, cfg.train.discriminator, micro))
    continuing = [p for p in after if id(p) in before]
    new = [p for p in after if id(p) not in before]
    carried = engines_mod.optimizer_state(current.generator, continuing)
    current.generator.destroy()
    engine = engines_mod.build(generator, cfg.train.generator, micro, new_params=new)
    restored = engines_mod.load_optimizer_state(engine, continuing, carried)
    index = {id(p): i for i, p in enumerate(params)}
    progress.new_params = [index[id(p)] for p in new]
    log.info("generator engine rebuilt for scales %s: %d tensors carry their Adam moments, %d start fresh",
             stage.trainable_scales, restored, len(new))
    return engines_mod.Engines(engine, current.discriminator)


def _count_bad(result: ChunkResult, progress: Progress, limit: int) -> None:
    """Count a skipped (non-finite) step; ``limit`` in a row stop training, naming the terms."""
    if not result.skipped:
        progress.bad_in_row = 0
        return
    progress.skipped += 1
    progress.bad_in_row += 1
    log.warning("step %d skipped: non-finite %s", progress.step, ", ".join(result.bad_terms))
    if progress.bad_in_row >= limit:
        raise NonFiniteLossError(
            f"{progress.bad_in_row} consecutive steps with a non-finite loss (last, step {progress.step}: "
            f"{', '.join(result.bad_terms)}); stopping (train.max_bad_steps={limit}). "
            f"The last checkpoint is left as it was.")


def _trainer_state(cfg: Config, engines: engines_mod.Engines, progress: Progress, tracker, stage: Stage
                   ) -> dict[str, Any]:
    """What ``trainer.pt`` holds (the same on every rank; rank 0's is written)."""
    progress.run_id = tracker.run_id or progress.run_id
    checksum = _check_ranks_agree(engines)
    return {"progress": dataclasses.asdict(progress), "config": to_dict(cfg), "stage": dataclasses.asdict(stage),
            "world_size": dist.world_size(), "param_checksum": checksum}


_POSITION = ("epoch", "batch")


def _only_position_moved(last: Path | None, step: int, state: dict[str, Any]) -> bool:
    """True when checkpoint ``last`` is of ``step`` and differs from ``state`` in the data position only."""
    if last is None or last.name != checkpoint.checkpoint_name(step) or not last.is_dir():
        return False
    return _without_position(checkpoint.load_trainer_state(last)) == _without_position(state)


def _without_position(state: dict[str, Any]) -> dict[str, Any]:
    return {**state, "progress": {k: v for k, v in state["progress"].items() if k not in _POSITION}}


def _check_ranks_agree(engines: engines_mod.Engines) -> list[float]:
    """Parameter sums of both networks, checked equal on every rank before they are saved.

    Data-parallel ranks must hold identical weights (ZeRO 0-2 keep full copies); a difference means a
    bug (a rank skipped an update the others made), and saving would make it permanent.
    """
    sums = [float(sum(p.detach().double().sum() for p in e.module.parameters()))
            for e in (engines.generator, engines.discriminator)]
    if not dist.all_equal(sums):
        raise RuntimeError(f"rank {dist.rank()}: parameters differ between ranks (sums {sums}); not saving")
    return sums


def _export(cfg: Config, folder: Path | None, labels: LabelSpec) -> Path | None:
    if folder is None:
        return None
    out = export_path(cfg.checkpoint.dir)
    if dist.is_main():
        # The scales of the checkpoint's stage, not the live model's: the last save may predate a
        # stage change (saves are skipped after a non-finite step).
        active_scales = checkpoint.load_trainer_state(folder)["stage"]["scale"] + 1
        export_generator(folder, out, zero_stage=cfg.train.generator.zero_stage, model_config=to_dict(cfg.model),
                         labels=labels, active_scales=active_scales)
    dist.barrier()
    return out


def _log_sample(tracker, cfg: Config, generator, batch, stage: Stage, epoch: int) -> None:
    """labels | generated | real of the stage's last batch's first clip, as an mp4 artifact.

    Every rank generates (the same clip): sharded engines gather weights collectively, so a forward on
    rank 0 alone could hang. Rank 0 writes and logs it.
    """
    if not cfg.tracking.sample_video or not cfg.tracking.enabled:
        return
    from trainer.samples import side_by_side, write_mp4

    generator.eval()
    try:
        with torch.no_grad():
            clip = generate_clip(generator, batch.labels[:1].to(next(generator.parameters()).dtype))
    finally:
        generator.train()
    if not dist.is_main():
        return
    frames = side_by_side(batch.labels[0], clip.images[0], batch.rgb[0])
    folder = Path(cfg.checkpoint.dir) / "samples"
    folder.mkdir(parents=True, exist_ok=True)
    path = write_mp4(frames, folder / f"epoch{epoch:04d}-scale{stage.scale}-{stage.height}x{stage.width}.mp4")
    tracker.log_artifact(path, "samples")


def _to(batch, device: torch.device):
    if batch.rgb.device == device:
        return batch
    return dataclasses.replace(batch, rgb=batch.rgb.to(device), labels=batch.labels.to(device),
                               flow=batch.flow.to(device), flow_conf=batch.flow_conf.to(device))
