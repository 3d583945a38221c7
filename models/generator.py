"""The sequential vid2vid generator: one frame at a time, coarse-to-fine in space.

Frame t is ``(1 - m) * warp(frame[t-1], w) + m * h``: the previous output carried along the
predicted flow ``w`` where it is visible, the hallucinated image ``h`` where the mask ``m`` says
the content is new. With ``flow_prior: labels`` (the default) ``w`` is the flow between the label
maps of frames t and t-1 plus the flow head's correction (``models/label_flow.py``). The first frame
has no previous output and is generated from labels alone, so inference needs no real frame.

Scales: the trainer activates them coarsest first (``set_active_scales``), may freeze the coarser
ones while a new finer one warms up (``set_trainable_scales``), then trains them jointly. Inputs
always come at the resolution of the finest active scale; coarser scales see them average-pooled.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.chunk_labels import ChunkLabels, FrameLabels
from models.compiling import compile_each
from models.config import GeneratorConfig
from models.label_flow import clip_label_flows, label_flow
from models.scales import IMAGE_CHANNELS, GeneratorScale, ScaleResult
from models.warp import warp


@dataclass
class GeneratorOutput:
    """One generated frame at the finest active scale. Without a previous frame (first frame, or
    the per-frame ablation) there is no flow and no mask (m = 1): ``image is hallucinated``."""
    image: Tensor
    """The output frame [B, 3, H, W] in [-1, 1]."""
    hallucinated: Tensor
    """h [B, 3, H, W]."""
    flow: Tensor | None
    """w [B, 2, H, W], frame t -> t-1 in pixels (the convention of ``dataio/format.py``)."""
    mask: Tensor | None
    """m [B, 1, H, W] in [0, 1]; 1 means hallucinated."""
    warped: Tensor | None
    """``warp(previous output, w)`` [B, 3, H, W]."""
    label_only: Tensor | None = None
    """The frame the labels alone give [B, 3, H, W] (what the first frame is), computed beside a
    frame that has previous frames when ``forward(..., label_only=True)`` asks for it."""


class Generator(nn.Module):
    def __init__(self, cfg: GeneratorConfig, label_channels: int) -> None:
        super().__init__()
        if label_channels < 1:
            raise ValueError(f"label_channels must be >= 1, got {label_channels}")
        self.cfg = cfg
        self.label_channels = label_channels
        self.scales = nn.ModuleList(GeneratorScale(cfg, label_channels, s) for s in range(cfg.num_scales))
        self._active = cfg.num_scales
        self._trainable = set(range(cfg.num_scales))
        self._apply_trainable()

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        # Generators pickled before the flow prior and the first-frame choice existed were trained
        # without the prior and with the shared first-frame path.
        if "flow_prior" not in vars(self.cfg):
            self.cfg.flow_prior = "none"
        if "first_frame" not in vars(self.cfg):
            self.cfg.first_frame = "shared"

    # -- scale control -------------------------------------------------------------------------
    @property
    def active_scales(self) -> int:
        """Scales in use (1 = global generator only); the output has the resolution of the last."""
        return self._active

    @property
    def trainable_scales(self) -> tuple[int, ...]:
        return tuple(sorted(self._trainable))

    def set_active_scales(self, count: int) -> None:
        """Use scales ``0..count-1``; all of them become trainable, finer ones are frozen."""
        if not 1 <= count <= len(self.scales):
            raise ValueError(f"active scales must be in [1, {len(self.scales)}], got {count}")
        self._active = count
        self._trainable = set(range(count))
        self._apply_trainable()

    def set_trainable_scales(self, scales: Iterable[int]) -> None:
        """Train only ``scales`` (among the active ones), e.g. the newest one while it warms up."""
        chosen = set(scales)
        if not chosen or not chosen <= set(range(self._active)):
            raise ValueError(f"trainable scales {sorted(chosen)} must be a non-empty subset of the "
                             f"active scales 0..{self._active - 1}")
        self._trainable = chosen
        self._apply_trainable()

    def _apply_trainable(self) -> None:
        # A coarser scale's output heads do not reach the final frame once a finer scale is active:
        # freeze them so every parameter that requires grad gets one (DeepSpeed and DDP need that).
        for index, scale in enumerate(self.scales):
            scale.requires_grad_(index in self._trainable)
            if index < self._active - 1:
                for head in scale.heads():
                    head.requires_grad_(False)

    def compile_frame_step(self, mode: str = "default", backend: str | Callable = "inductor",
                           channels_last: bool = False) -> None:
        """Compile each scale's networks in place (``torch.compile``, fixed shapes): the frame step
        without the OpenCV flow prior, which would break the graph. ``channels_last``: see
        ``models.compiling.compile_each``."""
        # Each scale sees up to 16 input variants (first frame or not, label-only path, training or
        # no_grad, coarser features or none, finest or not, and a size per stage).
        compile_each(self.scales, mode, backend, variants=16 * len(self.scales), channels_last=channels_last)

    @property
    def label_prior(self) -> bool:
        """Whether a frame with a previous one warps by the label flow plus a correction (``flow_prior:
        labels``), which ``forward`` takes as ``prior`` or computes."""
        return self.cfg.flow_prior == "labels" and not self.cfg.per_frame

    def divisor(self) -> int:
        """Height and width of the input must be multiples of this."""
        return 2 ** (self.cfg.n_downsample + self._active - 1)

    # -- one frame -----------------------------------------------------------------------------
    def forward(self, labels: Tensor, prev_frames: Tensor | None = None, label_only: bool = False,
                flow: Tensor | None = None, chunk: FrameLabels | None = None,
                prior: Tensor | None = None) -> GeneratorOutput:
        """Generate frame t.

        ``labels`` [B, n, C, H, W]: label maps of frames t-n+1..t (n <= L+1; fewer at the start of
        a clip: the earliest is repeated). ``prev_frames`` [B, m, 3, H, W]: outputs for frames
        t-m..t-1 (m <= L, earliest repeated likewise), or None / m = 0 for the first frame.
        ``label_only``: with previous frames, also generate the frame from the labels alone (the
        trainer trains the first frame's path on every frame with it). ``flow`` [B, 2, H, W]: warp with
        this flow instead of the predicted one (a diagnostic: the same generator with a perfect flow).
        ``chunk``: ``labels`` as one frame of a chunk (``models/chunk_labels.py``, the trainer's): what the
        labels alone decide is computed once for the chunk's frames. ``prior`` [B, 2, H, W]: this frame's
        label flow (``flow_prior: labels``), computed ahead for its clip (``Rollout.label_priors``).
        """
        labels, prev = self._prepare(labels, prev_frames)
        if chunk is not None and chunk.chunk.batch != labels.shape[0]:
            raise ValueError(f"chunk of {chunk.chunk.batch} clips for labels of {labels.shape[0]}")
        cond = labels[:, -1]
        batch, _, _, height, width = labels.shape
        labels_flat = labels.reshape(batch, -1, height, width)
        prev_flat = None if prev is None else prev.reshape(batch, -1, height, width)
        result: ScaleResult | None = None
        for index in range(self._active):
            factor = 2 ** (self._active - 1 - index)
            at_scale = None if chunk is None or prev_flat is None else chunk.pooled(factor, _pool)
            result = self.scales[index](
                _pool(labels_flat, factor) if at_scale is None else at_scale.stacks,
                None if prev_flat is None else _pool(prev_flat, factor),
                _pool(cond, factor) if at_scale is None else at_scale.cond,
                coarse=result, label_only=label_only, chunk=at_scale, finest=index == self._active - 1)
        assert result is not None and result.hallucinated is not None
        if result.flow is None:
            return GeneratorOutput(result.hallucinated, result.hallucinated, None, None, None)
        if flow is not None:
            used = flow
        elif self.cfg.flow_prior == "labels":
            used = (label_flow(labels[:, -1], labels[:, -2]) if prior is None else prior) + result.flow
        else:
            used = result.flow
        warped = warp(prev[:, -1], used)
        image = (1 - result.mask) * warped + result.mask * result.hallucinated
        return GeneratorOutput(image, result.hallucinated, used, result.mask, warped, result.label_only)

    def _prepare(self, labels: Tensor, prev_frames: Tensor | None) -> tuple[Tensor, Tensor | None]:
        cfg = self.cfg
        if labels.dim() != 5 or labels.shape[2] != self.label_channels or labels.shape[1] < 1:
            raise ValueError(f"labels must be [B, n>=1, {self.label_channels}, H, W], got {tuple(labels.shape)}")
        height, width = labels.shape[-2:]
        if height % self.divisor() or width % self.divisor():
            raise ValueError(f"frame size {height}x{width} must be a multiple of {self.divisor()} "
                             f"(n_downsample={cfg.n_downsample}, {self._active} active scales)")
        if cfg.per_frame:
            return labels[:, -1:], None
        labels = _left_pad(labels[:, -cfg.label_frames:], cfg.label_frames)
        if prev_frames is None or prev_frames.shape[1] == 0:
            return labels, None
        expected = (labels.shape[0], IMAGE_CHANNELS, height, width)
        if prev_frames.dim() != 5 or (prev_frames.shape[0], *prev_frames.shape[2:]) != expected:
            raise ValueError(f"prev_frames must be [B, m, 3, H, W] matching labels {tuple(labels.shape)}, "
                             f"got {tuple(prev_frames.shape)}")
        return labels, _left_pad(prev_frames[:, -cfg.prev_frames:], cfg.prev_frames)


def _left_pad(frames: Tensor, count: int) -> Tensor:
    """Repeat the earliest frame until there are ``count``: a still past before the clip starts."""
    missing = count - frames.shape[1]
    if missing <= 0:
        return frames
    return torch.cat([frames[:, :1].expand(-1, missing, *frames.shape[2:]), frames], dim=1)


def _pool(x: Tensor, factor: int) -> Tensor:
    if factor == 1:
        return x
    if not x.is_floating_point():  # compact label planes (inference): a few channels at a time
        return torch.cat([F.avg_pool2d(part.float(), factor) for part in x.split(4, dim=1)], dim=1)
    return F.avg_pool2d(x, factor)


@dataclass
class ClipOutput:
    """A generated clip, [B, T, ...]. Frames without a flow (the first, or every frame of the
    per-frame ablation) have flow 0, mask 1 and ``warped == image``; ``has_flow`` [T] marks them."""
    images: Tensor
    hallucinated: Tensor
    flow: Tensor
    mask: Tensor
    warped: Tensor
    has_flow: Tensor


class Rollout:
    """Frame-by-frame generation, the one loop every caller runs (the trainer, ``generate_clip``, the
    video model behind ``vid2vid generate`` and the registry): each output is fed back as a previous
    frame. It keeps what the generator reads, the last L+1 label frames and L outputs (all outputs
    with ``keep_all``: the trainer's temporal windows need them), so memory does not grow with a video.

    ``forward`` generates a frame (``generator`` itself by default; the trainer passes its DeepSpeed
    engine); ``detach`` cuts the graph between frames (vid2vid backpropagates one frame at a time).
    """

    def __init__(self, generator: Generator, forward: Callable[..., GeneratorOutput] | None = None,
                 detach: bool = True, keep_all: bool = False) -> None:
        self.history = generator.cfg.prev_frames
        self.independent = generator.cfg.per_frame
        """Every frame is made from its labels alone (the per-frame ablation): no frame reads another."""
        self.label_prior = generator.label_prior
        self.forward = forward if forward is not None else generator
        self.detach, self.keep_all = detach, keep_all
        self.labels: list[Tensor] = []
        self.images: list[Tensor] = []
        """The outputs so far (the last L of them unless ``keep_all``), as fed back."""

    def step(self, labels: Tensor, **with_previous: Any) -> GeneratorOutput:
        """The next frame from its label maps [B, C, H, W]. ``with_previous`` go to the generator only
        when there is a previous frame (``flow``, ``label_only``, ``chunk``, ``prior``: the first frame has
        neither)."""
        self.labels = (self.labels + [labels])[-(self.history + 1):]
        previous = self.images[-self.history:] if self.history else []
        prev = torch.stack(previous, dim=1) if previous else None
        out = self.forward(torch.stack(self.labels, dim=1), prev, **(with_previous if prev is not None else {}))
        self._keep(out.image)
        return out

    def take(self, labels: Tensor, image: Tensor) -> GeneratorOutput:
        """Take ``image`` [B, 3, H, W], made from the label maps ``labels`` alone (``labels_alone``, in one
        pass with other frames), as the next frame: what ``step`` would have made and kept. That is the
        clip's first frame, or any frame of the per-frame ablation (``independent``)."""
        if self.images and not self.independent:
            raise ValueError("Rollout.take takes the clip's first frame (later ones read the frames before "
                             "them), and frames were generated already")
        self.labels = (self.labels + [labels])[-(self.history + 1):]
        self._keep(image)
        return GeneratorOutput(image, image, None, None, None)

    def _keep(self, image: Tensor) -> None:
        self.images.append(image.detach() if self.detach else image)
        if not self.keep_all:
            self.images = self.images[-max(self.history, 1):]

    def labels_alone(self, labels: Tensor, frames: Sequence[int]) -> Tensor:
        """What the labels alone give (the first frame's path, what ``label_only`` asks of a step) for
        frames ``frames`` of a clip's label maps [B, T, C, H, W], in one pass over all of them:
        [B, len(frames), 3, H, W]. The label history of each is the one ``step`` would read; a pass per
        frame gives the same where the generator treats each sample on its own
        (``models.config.per_sample``)."""
        stacks = self.label_stacks(labels, frames)
        return self.forward(stacks.flatten(0, 1), None).image.unflatten(0, (labels.shape[0], len(frames)))

    def chunk(self, labels: Tensor, frames: Sequence[int]) -> ChunkLabels:
        """Frames ``frames`` of a clip's label maps [B, T, C, H, W] as a chunk: ``step(labels[:, t],
        chunk=chunk.frame(i))`` for the i-th of them computes what the labels alone decide once for all."""
        return ChunkLabels(self.label_stacks(labels, frames))

    def label_priors(self, labels: Tensor) -> Tensor | None:
        """The label flow of each frame of clips [B, T, C, H, W] after the first [B, T-1, 2, H, W] (frame
        t's at t-1), for ``step(..., prior=...)``, or None where the generator takes none. The same flows
        as the generator's own frame by frame, with one copy to the host and back for the clip: a GPU
        frame loop that computed them per frame would wait on the host at every frame."""
        return clip_label_flows(labels) if self.label_prior else None

    def label_stacks(self, labels: Tensor, frames: Sequence[int]) -> Tensor:
        """The label maps the generator reads for each of frames ``frames`` [B, len(frames), n, C, H, W]:
        L+1 of them, or the frame's own alone (n = 1) in the per-frame ablation."""
        n = 1 if self.independent else self.history + 1
        return torch.stack([_left_pad(labels[:, max(0, t + 1 - n):t + 1], n) for t in frames], dim=1)


def generate_clip(generator: Generator, labels: Tensor, detach_prev: bool = True,
                  flow: Tensor | None = None) -> ClipOutput:
    """Generate a clip [B, T, C, H, W] frame by frame (``Rollout``).

    ``detach_prev`` cuts the graph between frames (vid2vid backpropagates one frame at a time);
    the outputs keep their own graphs, so a trainer can call this under autograd and sum losses.
    ``flow`` [B, T, 2, H, W]: warp with it instead of the predicted flow (see ``Generator.forward``).
    """
    rollout = Rollout(generator, detach=detach_prev)
    priors = rollout.label_priors(labels) if flow is None else None
    return _stack([rollout.step(labels[:, t], **({"flow": flow[:, t]} if flow is not None else
                                                  {"prior": priors[:, t - 1]} if priors is not None and t else {}))
                   for t in range(labels.shape[1])])


def _stack(outputs: list[GeneratorOutput]) -> ClipOutput:
    first = outputs[0].image
    batch, _, height, width = first.shape
    zero_flow = first.new_zeros(batch, 2, height, width)
    ones = first.new_ones(batch, 1, height, width)
    return ClipOutput(
        images=torch.stack([o.image for o in outputs], dim=1),
        hallucinated=torch.stack([o.hallucinated for o in outputs], dim=1),
        flow=torch.stack([zero_flow if o.flow is None else o.flow for o in outputs], dim=1),
        mask=torch.stack([ones if o.mask is None else o.mask for o in outputs], dim=1),
        warped=torch.stack([o.image if o.warped is None else o.warped for o in outputs], dim=1),
        has_flow=torch.tensor([o.flow is not None for o in outputs], device=first.device))
