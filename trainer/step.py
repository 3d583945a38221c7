"""The GAN step over one batch of clips: frame by frame, in chunks, one D then one G update per chunk.

A clip of T frames is generated sequentially: frame t sees the labels of t-L..t and the L previous
*generated* frames, detached (vid2vid backpropagates through one frame at a time; carrying the graph
across frames costs memory linear in T for little gain). Every ``frames_per_step`` frames:

1. **D update.** The image discriminator judges each real and (detached) fake frame with its labels;
   the temporal discriminator judges windows of K consecutive frames with the real flow between them.
   Its windows end at the newest frame and reach back into the already generated (detached) frames,
   so every chunk is judged in motion, not only chunks longer than K.
2. **G update.** The discriminators are frozen (``requires_grad_(False)``: ZeRO 2/3 fail otherwise with
   "parameter has already been reduced") and called through ``engine.module`` (ZeRO 0 refuses the
   engine's own forward there). Every loss term of ``models.objective`` is reported separately.

A non-finite loss skips its update on every rank (ranks agree first: one rank skipping a backward
the others run would hang their all-reduce) and is reported by name.
Weights that are not finite after finite losses end the run at the next checkpoint, unsaved.
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import Tensor, nn

from models.config import LossConfig, ModelConfig, per_sample
from models.discriminators import ImageDiscriminator, TemporalDiscriminator
from models.generator import Rollout
from models.objective import ExtraFrames, FlowInputs, discriminator_losses, flat_frames, generator_losses
from trainer import distributed as dist
from trainer.engines import Engines, precision

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from pathlib import Path

    from dataio.batch import ClipBatch
    from models.build import Networks
    from trainer.checkpoint import Progress
    from trainer.config import Config


class Discriminators(nn.Module):
    """The image and temporal discriminators as one module: one engine, optimizer and checkpoint."""

    def __init__(self, image: ImageDiscriminator, temporal: TemporalDiscriminator | None) -> None:
        super().__init__()
        self.image = image
        self.temporal = temporal

    def forward(self, labels: Tensor, images: Tensor, windows: Sequence[Tensor] = (),
                window_flow: Tensor | None = None) -> tuple[Any, list[list[Any]]]:
        """Image D on ``labels``/``images`` [..., C, H, W]; temporal D on each of ``windows`` [B, n, 3, H, W]
        (with ``window_flow``): one list of temporal-scale outputs per window (empty without it)."""
        image_out = self.image(labels, images)
        if self.temporal is None:
            return image_out, [[] for _ in windows]
        return image_out, [self.temporal(window, window_flow) for window in windows]


@dataclass
class StepSettings:
    loss: LossConfig
    frames_per_step: int
    temporal_frames: int
    """K of the temporal discriminator (0 when it is off)."""
    temporal_scales: int
    dtype: torch.dtype = torch.float32
    vgg: nn.Module | None = None
    merge_passes: bool = False
    """One image-discriminator pass over every set of frames an update judges, one VGG pass over the
    fake ones (``TrainConfig.merge_passes``, which says when the results are the same)."""
    label_only_per_chunk: bool = False
    """The frames of a chunk made from labels alone in one generator pass, not one per frame (ditto): the
    label-only frames, the clip's first; every frame of the per-frame ablation."""
    labels_per_chunk: bool = False
    """What the labels alone decide in the generator (label encoders, SPADE modulations) in one pass over
    a chunk's frames (``models/chunk_labels.py``; ditto, and not with compiled scales)."""
    on_generator_update: Callable[[], None] | None = None
    """Called after every generator update (the trainer folds the weights into their average)."""

    @classmethod
    def of(cls, cfg: Config, nets: Networks, device: torch.device,
           on_generator_update: Callable[[], None] | None = None) -> StepSettings:
        """The settings ``cfg`` gives for networks ``nets`` (the VGG network moved to ``device``)."""
        vgg = nets.vgg.to(device).eval().requires_grad_(False) if nets.vgg is not None else None
        return cls(loss=cfg.model.loss, frames_per_step=cfg.train.frames_per_step,
                   temporal_frames=cfg.model.discriminator.temporal_frames if nets.temporal_discriminator else 0,
                   temporal_scales=cfg.model.discriminator.temporal_scales, vgg=vgg,
                   **merged_passes(cfg.model, cfg.train.merge_passes, compiled=cfg.train.compile != "off"),
                   dtype=torch.bfloat16 if precision(cfg.train.generator) == "bf16" else torch.float32,
                   on_generator_update=on_generator_update)


def merged_passes(model: ModelConfig, enabled: bool = True, compiled: bool = False) -> dict[str, bool]:
    """``StepSettings``' merge flags for ``model`` (``train.merge_passes``): each on where one pass over
    several sets of frames gives what a pass per set would (``models.config.per_sample``). ``compiled``
    (``train.compile``): the generator's scales are compiled for one frame's inputs, which a chunk's
    shared label work is not."""
    generator = enabled and per_sample(model.generator)
    # The per-frame ablation makes every frame from labels alone (all in the label-only pass), and has
    # no frames with a previous one to share label work between.
    return {"merge_passes": enabled and per_sample(model.discriminator), "label_only_per_chunk": generator,
            "labels_per_chunk": generator and not model.generator.per_frame and not compiled}


class NonFiniteLossError(RuntimeError):
    """Too many consecutive steps with a non-finite loss; the message names the terms."""


class NonFiniteWeightsError(RuntimeError):
    """Weights that are not finite after updates whose losses were; the message names them."""


@dataclass
class ChunkResult:
    """One update (a chunk of frames): losses by name (``g/...``, ``d/...``), or the bad ones."""
    losses: dict[str, float]
    bad_terms: list[str] = field(default_factory=list)
    frames: int = 0

    @property
    def skipped(self) -> bool:
        return bool(self.bad_terms)


def train_batch(engines: Engines, batch: ClipBatch, settings: StepSettings) -> list[ChunkResult]:
    """Train on one batch of clips (rgb/labels/flow/flow_conf [B, T, ...]); one result per chunk."""
    clips = dataclasses.replace(batch, **{name: getattr(batch, name).to(settings.dtype)
                                          for name in ("rgb", "labels", "flow", "flow_conf")})
    frames = clips.rgb.shape[1]
    # Every output of the clip so far, detached, across chunks: the temporal windows reach back.
    rollout = Rollout(engines.generator.module, forward=engines.generator, keep_all=True)
    # The host's share of the frame loop, once per batch: computed ahead by the training loop, or here.
    # From the label maps as loaded either way (not cast), so that both give the same flows.
    priors = batch.label_flow if batch.label_flow is not None else rollout.label_priors(batch.labels)
    priors = None if priors is None or not rollout.label_prior else priors.to(settings.dtype)
    results = []
    for start in range(0, frames, settings.frames_per_step):
        chunk = _generate(settings, clips, rollout, start, min(frames, start + settings.frames_per_step), priors)
        losses, bad = _update_discriminator(engines.discriminator, settings, chunk)
        if not bad:
            g_losses, bad = _update_generator(engines, settings, chunk)
            losses.update(g_losses)
        results.append(ChunkResult(losses, bad, chunk.frames))
    return results


@dataclass
class Chunk:
    """Frames ``start..stop`` of the clips, generated, and what both updates judge them against."""
    labels: Tensor
    real: Tensor
    fake: Tensor
    """The outputs [B, f, 3, H, W], with their graph (the G update backpropagates through them)."""
    windows: tuple[Tensor | None, Tensor | None, Tensor | None]
    """The temporal discriminator's (real, fake, flow) windows ending at the newest frame."""
    with_flow: list[int]
    """The chunk's frames that have a previous frame (a flow), indices into the chunk."""
    extra: dict[str, Tensor]
    """Frames the image terms judge besides the outputs, on ``with_flow`` frames: the raw hallucinated
    h and the labels-alone frame (the first frame's path)."""
    flow: FlowInputs | None

    @property
    def frames(self) -> int:
        return self.real.shape[1]


def _generate(settings: StepSettings, clips: ClipBatch, rollout: Rollout, start: int, stop: int,
              priors: Tensor | None) -> Chunk:
    label_only = settings.loss.label_only > 0 and not rollout.independent
    per_chunk = (label_only or rollout.independent) and settings.label_only_per_chunk
    with_previous = {"label_only": True} if label_only and not per_chunk else {}
    # What the labels alone give for every frame of the chunk, in one pass: the later frames' label-only
    # images, and the clip's first frame when the chunk starts the clip (made that way anyway); every
    # frame of the per-frame ablation.
    alone = rollout.labels_alone(clips.labels, range(start, stop)) if per_chunk else None
    # The shared label work of the frames that have a previous frame (the clip's first has none).
    later = range(max(start, 1), stop)
    chunk = rollout.chunk(clips.labels, later) if settings.labels_per_chunk and later else None
    outs = []
    for t in range(start, stop):
        if alone is not None and (t == 0 or rollout.independent):
            outs.append(rollout.take(clips.labels[:, t], alone[:, t - start]))
        else:
            ahead = {"chunk": chunk.frame(t - later.start)} if chunk is not None and t else {}
            if priors is not None and t:
                ahead["prior"] = priors[:, t - 1]
            outs.append(rollout.step(clips.labels[:, t], **with_previous, **ahead))
    fake = torch.stack([o.image for o in outs], dim=1)
    with_flow = [i for i, o in enumerate(outs) if o.flow is not None]  # all but the clip's first frame
    extra = {}
    if with_flow and settings.loss.hallucinated > 0:
        extra["hallucinated"] = torch.stack([outs[i].hallucinated for i in with_flow], dim=1)
    if with_flow and label_only:
        extra["label_only"] = alone[:, with_flow[0]:] if alone is not None \
            else torch.stack([outs[i].label_only for i in with_flow], dim=1)
    return Chunk(labels=clips.labels[:, start:stop], real=clips.rgb[:, start:stop], fake=fake,
                 windows=_temporal_windows(settings, clips.rgb, clips.flow, rollout.images, fake, start, stop),
                 with_flow=with_flow, extra=extra,
                 flow=_flow_inputs(outs, clips.rgb, clips.labels, clips.flow, clips.flow_conf, rollout.images, start))


def _update_discriminator(engine, settings: StepSettings, chunk: Chunk) -> tuple[dict[str, float], list[str]]:
    """Real against detached fake frames (and windows); the losses, and the non-finite ones (then no
    update)."""
    window_real, window_fake, window_flow = chunk.windows
    labels = chunk.labels
    sets = [(labels, chunk.real), (labels, chunk.fake.detach())]
    sets += [(labels[:, chunk.with_flow], frames.detach()) for frames in chunk.extra.values()]
    windows = [] if window_real is None else [window_real, window_fake.detach()]
    (d_real, d_fake, *d_extra), temporal = _judge(engine, sets, windows, window_flow, settings.merge_passes)
    t_real, t_fake = temporal or ([], [])
    terms = discriminator_losses(settings.loss, d_real=d_real, d_fake=d_fake, t_real=t_real, t_fake=t_fake,
                                 d_extra=dict(zip(chunk.extra, d_extra)))
    losses, bad = _read({f"d/{k}": v for k, v in terms.items()})
    if not bad:
        engine.backward(terms["total"])
        engine.step()
    return losses, bad


def _update_generator(engines: Engines, settings: StepSettings, chunk: Chunk) -> tuple[dict[str, float], list[str]]:
    """Every generator term through the frozen discriminators; the losses, and the non-finite ones
    (then no update)."""
    window_real, window_fake, window_flow = chunk.windows
    labels, real = chunk.labels, chunk.real
    discriminators = engines.discriminator.module
    discriminators.requires_grad_(False)
    try:
        sets = [(labels, chunk.fake)] + [(labels[:, chunk.with_flow], frames) for frames in chunk.extra.values()]
        windows = [] if window_fake is None else [window_fake]
        if settings.merge_passes:
            # The real frames and window join the fake ones' pass; their outputs are targets only (no
            # gradient through them, as from a pass of their own under no_grad).
            (d_real, d_fake, *d_extra), temporal = _judge(
                discriminators, [(labels, real)] + sets, [window_real] * bool(windows) + windows, window_flow, True)
            d_real, temporal = _detached(d_real), _detached(temporal[:1]) + temporal[1:]
        else:
            with torch.no_grad():
                d_real, temporal_real = discriminators(labels, real, [window_real] * bool(windows), window_flow)
            (d_fake, *d_extra), temporal = _judge(discriminators, sets, windows, window_flow, False)
            temporal = temporal_real + temporal
        t_real, t_fake = temporal or ([], [])
        d_real_with_flow = _frames(d_real, real.shape[:2], chunk.with_flow) if chunk.extra else None
        real_with_flow = real[:, chunk.with_flow] if chunk.extra else None  # one copy for every extra set
        extra = [ExtraFrames(name, frames, real_with_flow, d_real=d_real_with_flow, d_fake=d_fake_extra,
                             frames=chunk.with_flow)
                 for (name, frames), d_fake_extra in zip(chunk.extra.items(), d_extra)]
        terms = generator_losses(settings.loss, fake=chunk.fake, real=real, d_fake=d_fake, d_real=d_real,
                                 t_fake=t_fake, t_real=t_real, vgg=settings.vgg, extra=extra, flow=chunk.flow,
                                 merge=settings.merge_passes)
        losses, bad = _read({f"g/{k}": v for k, v in terms.items()})
        if not bad:
            engines.generator.backward(terms["total"])
            engines.generator.step()
            if settings.on_generator_update is not None:
                settings.on_generator_update()
    finally:
        discriminators.requires_grad_(True)
    return losses, bad


def _detached(outputs: Any) -> Any:
    """Nested lists of a discriminator's outputs, every tensor detached."""
    return outputs.detach() if isinstance(outputs, Tensor) else [_detached(x) for x in outputs]


def _judge(discriminators: Callable[..., Any], sets: list[tuple[Tensor, Tensor]], windows: list[Tensor],
           window_flow: Tensor | None, merge: bool) -> tuple[list[Any], list[list[Any]]]:
    """The image discriminator's outputs on each (labels, images) set [B, f_i, ...], and the temporal
    discriminator's on each window. ``merge``: one pass over every set, its outputs split back per set
    (each b-major, as a pass of its own gives), and one over every window; else a pass per set, the
    windows one by one with the first."""
    if not merge or len(sets) == 1:
        outs = [discriminators(labels, images, windows if k == 0 else [], window_flow)
                for k, (labels, images) in enumerate(sets)]
        return [out[0] for out in outs], outs[0][1]
    sizes = [images.shape[:-3].numel() for _, images in sets]
    together = [torch.cat(windows)] if len(windows) > 1 else windows
    flow = torch.cat([window_flow] * len(windows)) if len(windows) > 1 else window_flow
    merged, temporal = discriminators(torch.cat([flat_frames(labels) for labels, _ in sets]),
                                      torch.cat([flat_frames(images) for _, images in sets]), together, flow)
    parts = [[x.split(sizes) for x in scale] for scale in merged]
    if len(windows) > 1:
        temporal = _per_window(temporal[0], len(windows), windows[0].shape[0])
    return [[[x[k] for x in scale] for scale in parts] for k in range(len(sets))], temporal


def _per_window(outputs: list[Any], count: int, batch: int) -> list[list[Any]]:
    """The temporal discriminator's outputs on ``count`` windows of ``batch`` clips passed as one batch,
    split back per window. Its windows come out start-major (``temporal_windows``): window k's are
    [start, k, b] views [N, B, ...] of each output, not copies; the losses take their means, and feature
    matching pairs them element by element with another window's, laid out alike."""
    return [[[[x.unflatten(0, (-1, count, batch))[:, k] for x in scale] for scale in out] for out in outputs]
            for k in range(count)]


def _frames(outputs: Any, batch_frames: tuple[int, int], index: list[int]) -> list[list[Tensor]]:
    """The image discriminator's outputs on frames ``index`` of a [B, f] batch (it folds time into
    the batch, b-major), in the order of a [B, len(index)] batch."""
    return [[x.unflatten(0, batch_frames)[:, index].flatten(0, 1) for x in scale] for scale in outputs]


def _temporal_windows(settings: StepSettings, rgb: Tensor, flow: Tensor, history: list[Tensor], fake: Tensor,
                      start: int, stop: int) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """The temporal discriminator's (real, fake, flow) windows: the newest ``_temporal_span`` frames.

    Older frames of the fake window come from the detached history; the chunk's own frames keep their
    graph for G. A chunk longer than the window contributes only its newest frames.
    """
    span = _temporal_span(settings, stop)
    if not span:
        return None, None, None
    first = stop - span
    if first < start:
        window_fake = torch.cat([torch.stack(history[first:start], dim=1), fake], dim=1)
    else:
        window_fake = fake[:, first - start:]
    return rgb[:, first:stop], window_fake, flow[:, first:stop]


def _temporal_span(settings: StepSettings, stop: int) -> int:
    """Frames of the temporal window ending at frame ``stop - 1``, 0 when none fits yet.

    The longest window that fits, of length (K-1)*m + 1 so that the stride-1 windows tile it exactly
    up to the newest frame, capped at the window of the coarsest temporal scale.
    """
    k = settings.temporal_frames
    if not settings.temporal_scales or k < 2 or stop < k:
        return 0
    longest = (k - 1) * k ** (settings.temporal_scales - 1) + 1
    n = min(stop, longest)
    return n - (n - 1) % (k - 1)


def _flow_inputs(outs: list[Any], rgb: Tensor, labels: Tensor, flow: Tensor, conf: Tensor, history: list[Tensor],
                 start: int) -> FlowInputs | None:
    """Flow, mask, warped previous output and targets of the chunk's frames that have a flow (not the
    clip's first frame); ``history`` holds every output of the clip so far, detached."""
    with_flow = [(start + i, o) for i, o in enumerate(outs) if o.flow is not None]
    if not with_flow:
        return None
    ts = [t for t, _ in with_flow]

    def stacked(name: str) -> Tensor:
        return torch.stack([getattr(o, name) for _, o in with_flow], dim=1)
    before = [t - 1 for t in ts]
    return FlowInputs(flow=stacked("flow"), real=rgb[:, ts], real_prev=rgb[:, before], target=flow[:, ts],
                      confidence=conf[:, ts], mask=stacked("mask"), warped=stacked("warped"),
                      output=stacked("image"), output_prev=torch.stack([history[t] for t in before], dim=1),
                      labels=labels[:, ts], labels_prev=labels[:, before])


def count_skipped(result: ChunkResult, progress: Progress, limit: int) -> None:
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


def check_weights(engines: Engines, step: int, last_checkpoint: Path | None,
                  average: Mapping[str, Tensor] | None = None) -> None:
    """Raise ``NonFiniteWeightsError`` where any weight is NaN or infinite (every rank agrees): the
    parameters and floating buffers (batch-norm statistics) of both networks, and ``average``, the
    generator's weight average (``WeightAverage.shadow``: what is scored and exported).

    A finite loss can have gradients that are not (an overflow in the backward pass); in fp32, or in
    bf16 without the overflow check, nothing stops Adam from writing them into the weights; a batch
    variance can overflow while the normalised output stays finite. Usually the next loss goes
    non-finite and the step is skipped, but a checkpoint taken in between would hold those weights as
    the run's newest, and every resume would start from them. Adam cannot bring a NaN back, so the run
    ends here, the last good checkpoint untouched. One read for all tensors (not one host wait each).
    """
    named = [(f"{side}.{name}", t) for side, engine in (("generator", engines.generator),
                                                      ("discriminator", engines.discriminator))
             for name, t in (*engine.module.named_parameters(), *engine.module.named_buffers())
             if t.is_floating_point()]
    named += [(f"generator average.{name}", t) for name, t in (average or {}).items() if t.is_floating_point()]
    device = dist.device()  # NCCL's collective takes no CPU tensor
    finite = torch.stack([torch.isfinite(t).all().to(device) for _, t in named])
    flags = dist.all_reduce_max(finite.logical_not().float())
    bad = [name for (name, _), flag in zip(named, flags.tolist()) if flag]
    if bad:
        kept = f"the last checkpoint, {last_checkpoint.name}, is left as it was" if last_checkpoint is not None \
            else "no checkpoint was written"
        raise NonFiniteWeightsError(
            f"after step {step} {len(bad)} of {len(named)} weight tensors are not finite (first: {bad[0]}), "
            f"though the losses were: not saved, {kept}. A learning rate too high, or an overflow in the "
            "gradients, is the usual cause (train.<engine>.lr, grad_clip; check_grad_overflow in bf16).")


def _read(terms: dict[str, Tensor]) -> tuple[dict[str, float], list[str]]:
    """The terms' values, and the names of the non-finite ones on any rank (the same list on every
    rank): one transfer from the device for all of them, where a check and a read per term would make
    the host wait for the GPU twice per term."""
    names = sorted(terms)
    if any(terms[n].is_meta for n in names):  # shapes only (benchmarks/paper_budget.py): no values to check
        return {n: float("nan") for n in names}, []
    values = torch.stack([terms[n].detach().float() for n in names])
    # On dist.device(): NCCL (the GPU backend) refuses CPU tensors in a collective.
    flags = dist.all_reduce_max(torch.isfinite(values).logical_not().float().to(dist.device()))
    read = torch.cat([values.to(flags.device), flags]).tolist()
    return dict(zip(names, read)), [n for n, flag in zip(names, read[len(names):]) if flag]
