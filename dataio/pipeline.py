"""The DALI graph: decode RGB, labels, flow (and edges) of a clip with one frame window.

Every random choice arrives per sample through ``fn.external_source`` (drawn in Python by
``dataio.loader``), so the graph itself is deterministic and the same draw reaches every stream:
``start`` is the window's first frame (``fn.decoders.video`` takes ``start_frame`` per sample), the
crop box and flip go to the resize.

Two graphs, one per device:

- ``cpu``: decode only. Outputs per sample uint8 ``rgb`` [T,H,W,3], ``label`` [T,H,W] class ids (or
  [T,H,W,3] for a rendering), ``flow`` [T,H,W,3], ``edge`` [T,H,W]; ``dataio.augment`` crops, flips
  and resizes them with OpenCV straight into the batch tensors (it explains why, with numbers).
- ``mixed`` (``GraphSpec.augment_in_graph``): decode and augment on the GPU. ``fn.resize`` crops,
  flips and resizes in one pass (a box whose x end is left of its start comes out mirrored;
  checked identical to crop + flip); ``flow_scale`` (x, y) is output pixels per stored flow step,
  negative in x for a mirrored sample. Outputs are the batch tensors' layout (FCHW float):
  ``rgb`` in [-1, 1], ``labels`` (one-hot of nearest-neighbour ids, or a rendering / 255, then
  edges / 255), ``flow`` in output pixels, ``flow_conf`` in [0, 1]. RGB decodes with NVDEC; the
  lossless 4:4:4 streams decode on the CPU when ``label_device="cpu"`` and move to the GPU as uint8
  frames before resizing. ``label_device="same"`` (NVDEC for them too) exists only for the probe in
  ``benchmarks/gpu_check.sh``: NVDEC decodes them wrongly (class ids 128-255 of 8, seen on an H200
  with DALI 2.4), so ``LoaderConfig`` refuses it. NVDEC also refuses VP9 frames under 128x128
  (``dataio.loader`` checks before decoding). This graph also runs on the CPU, which is how the
  tests check it against ``dataio.augment`` without a GPU.

Both graphs also output ``label_max`` (largest class id, to refuse out-of-range ids) and each
stream's decoded shape (to refuse a stream shorter or smaller than its metadata says). Edges are
linear-resized (a thin edge fades when downscaled instead of vanishing); a sample without edges in
a split that has them gets a zero edge channel.
"""
from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np
from nvidia.dali import fn, types
from nvidia.dali import math as dmath
from nvidia.dali.pipeline import Pipeline

from dataio import format as fmt
from dataio.batch import Draw
from dataio.labels import LabelSpec

# External-source names; ``encoded`` streams are uint8 byte arrays.
ENCODED = {"rgb": fmt.RGB, "label": fmt.LABEL, "flow": fmt.FLOW, "edge": fmt.EDGE}
CHECKS = ("label_max", "rgb_shape", "label_shape", "flow_shape", "edge_shape")
AUGMENTED = ("rgb", "labels", "flow", "flow_conf") + CHECKS
DECODED = ("rgb", "label", "flow") + CHECKS
DECODED_EDGES = ("rgb", "label", "flow", "edge") + CHECKS


@dataclasses.dataclass(frozen=True)
class GraphSpec:
    """What one pipeline is built for; a new (height, width, frames) needs a new pipeline."""
    height: int
    width: int
    frames: int
    batch_size: int
    threads: int
    num_classes: int
    label_kind: Literal["classes", "rgb"]
    has_edges: bool
    device: Literal["cpu", "mixed"] = "cpu"
    label_device: Literal["same", "cpu"] = "cpu"
    device_id: int | None = None
    """CUDA device for ``mixed``; None on a CPU pipeline."""
    seed: int = 0
    augment_in_graph: bool | None = None
    """Crop/flip/resize inside DALI; None means on ``mixed`` only (see the module docstring)."""

    def __post_init__(self) -> None:
        if self.height < 2 or self.width < 2 or self.frames < 1:
            raise ValueError(f"bad output size {self.height}x{self.width}x{self.frames}")
        if self.device == "mixed" and self.device_id is None:
            raise ValueError("device 'mixed' needs a CUDA device_id")

    @property
    def in_graph(self) -> bool:
        return self.device == "mixed" if self.augment_in_graph is None else self.augment_in_graph

    @property
    def outputs(self) -> tuple[str, ...]:
        if self.in_graph:
            return AUGMENTED
        return DECODED_EDGES if self.has_edges else DECODED

    @property
    def label_channels(self) -> int:
        return LabelSpec(self.num_classes, self.label_kind, has_edges=self.has_edges).channels


def build(spec: GraphSpec) -> Pipeline:
    """A built pipeline with external sources named as in ``feed``."""
    # Asynchronous, one run in flight: the caller augments run k while DALI decodes run k+1, and
    # an error then belongs to the one run in flight. The (default) dynamic executor keeps a run's
    # outputs alive for as long as Python holds them, across later runs and a dead pipeline
    # (checked), so nothing is copied out of DALI before augmenting.
    pipe = Pipeline(batch_size=spec.batch_size, num_threads=spec.threads, device_id=spec.device_id,
                    seed=spec.seed, prefetch_queue_depth=1)
    with pipe:
        pipe.set_outputs(*_graph(spec))
    pipe.build()
    return pipe


def _graph(spec: GraphSpec):
    source = {name: fn.external_source(name=name, dtype=types.UINT8, ndim=1)
              for name in ENCODED if name != "edge" or spec.has_edges}
    start = fn.external_source(name="start", dtype=types.INT32, ndim=0)
    lossless = "mixed" if spec.device == "mixed" and spec.label_device == "same" else "cpu"

    def decode(name: str, device: str):
        return fn.decoders.video(source[name], device=device, start_frame=start,
                                 sequence_length=spec.frames, pad_mode="none")

    rgb, label, flow = decode("rgb", spec.device), decode("label", lossless), decode("flow", lossless)
    edge = decode("edge", lossless) if spec.has_edges else None
    ids = label[:, :, :, 0]  # the class id is in R=G=B
    checks = (fn.reductions.max(ids), rgb.shape(), label.shape(), flow.shape(),
              (edge if edge is not None else label).shape())
    if not spec.in_graph:
        edges = () if edge is None else (edge[:, :, :, 0],)
        return (rgb, ids if spec.label_kind == "classes" else label, flow) + edges + checks
    return _augment(spec, rgb, label, flow, edge) + checks


def _augment(spec: GraphSpec, rgb, label, flow, edge) -> tuple:
    roi_start = fn.external_source(name="roi_start", dtype=types.FLOAT, ndim=1)
    roi_end = fn.external_source(name="roi_end", dtype=types.FLOAT, ndim=1)
    flow_scale = fn.external_source(name="flow_scale", dtype=types.FLOAT, ndim=1)
    flow_zero = fn.external_source(name="flow_zero", dtype=types.FLOAT, ndim=0)
    gpu = spec.device == "mixed"

    def resize(frames, nearest=False, dtype=types.FLOAT):
        if gpu and frames.device == "cpu":
            frames = frames.gpu()  # lossless streams decoded on the CPU: uint8 over PCIe
        return fn.resize(frames, size=[spec.height, spec.width], roi_start=roi_start,
                         roi_end=roi_end, dtype=dtype, antialias=not nearest,
                         interp_type=types.INTERP_NN if nearest else types.INTERP_LINEAR)

    def channels_first(data):
        return fn.transpose(data, perm=[0, 3, 1, 2], output_layout="FCHW")

    rgb = fn.crop_mirror_normalize(resize(rgb), dtype=types.FLOAT, output_layout="FCHW",
                                   mean=[127.5], std=[127.5])
    if spec.label_kind == "classes":
        ids = resize(label[:, :, :, 0:1], nearest=True, dtype=types.UINT8)
        labels = fn.one_hot(ids[:, :, :, 0], num_classes=spec.num_classes, axis=1, axis_name="C",
                            dtype=types.FLOAT)
    else:
        labels = channels_first(resize(label) * (1 / 255))
    if edge is not None:
        edge_gain = fn.external_source(name="edge_gain", dtype=types.FLOAT, ndim=0)
        labels = fn.cat(labels, channels_first(resize(edge[:, :, :, 0:1]) * edge_gain), axis=1)
    packed = resize(flow)
    flow = channels_first((packed[:, :, :, 0:2] - flow_zero) * flow_scale)
    flow_conf = channels_first(dmath.clamp(packed[:, :, :, 2:3] * (1 / 255), 0.0, 1.0))
    return rgb, labels, flow, flow_conf


def feed(pipe: Pipeline, spec: GraphSpec, streams: list[dict[str, bytes]], draws: list[Draw],
         metas: list[fmt.ClipMeta]) -> None:
    """Hand one batch (any size up to ``spec.batch_size``) to the pipeline's external sources."""
    for name, member in ENCODED.items():
        if name != "edge":
            pipe.feed_input(name, [np.frombuffer(s[member], np.uint8) for s in streams])
    if spec.has_edges:
        # A sample without edges (its sequence had no instance map) gets a zero channel: its label
        # stream stands in for the edge stream, times 0, so the batch keeps one graph.
        pipe.feed_input("edge", [np.frombuffer(s.get(fmt.EDGE) or s[fmt.LABEL], np.uint8) for s in streams])
    pipe.feed_input("start", [np.int32(d.start) for d in draws])
    if not spec.in_graph:
        return
    if spec.has_edges:
        pipe.feed_input("edge_gain", [np.float32(1 / 255 if s.get(fmt.EDGE) else 0.0) for s in streams])
    starts, ends, scales = [], [], []
    for draw, meta in zip(draws, metas):
        y0, x0, y1, x1 = draw.box
        if draw.flip:
            x0, x1 = x1, x0
        starts.append(np.array([y0, x0], np.float32))
        ends.append(np.array([y1, x1], np.float32))
        scale_x = spec.width / (x1 - x0) / meta.flow_steps  # signed: negative when mirrored
        scale_y = spec.height / (y1 - y0) / meta.flow_steps
        scales.append(np.array([scale_x, scale_y], np.float32))
    pipe.feed_input("roi_start", starts)
    pipe.feed_input("roi_end", ends)
    pipe.feed_input("flow_scale", scales)
    pipe.feed_input("flow_zero", [np.float32(m.flow_zero) for m in metas])


@dataclasses.dataclass(frozen=True)
class Decoded:
    """One sample of a run: its outputs are ``outputs[name][index]``."""
    outputs: dict
    index: int


@dataclasses.dataclass(frozen=True)
class Failure:
    """A sample that could not be decoded, or whose streams disagree with its metadata."""
    reason: str


class Decoder:
    """Runs the graph on batches of samples, one run in flight, and isolates bad samples.

    A DALI operator error (bytes that do not decode) fails the whole run and kills the pipeline.
    ``collect`` then builds a new pipeline (~10 ms) and decodes that run's samples one at a time,
    so that only the bad ones fail, each with DALI's own message.
    """

    def __init__(self, spec: GraphSpec) -> None:
        self.spec = spec
        self.rebuilds = 0
        self._pipe = build(spec)
        self._pending: tuple[list[dict[str, bytes]], list[Draw], list[fmt.ClipMeta]] | None = None

    def submit(self, streams: list[dict[str, bytes]], draws: list[Draw], metas: list[fmt.ClipMeta]) -> None:
        """Start decoding a run (at most ``batch_size`` samples); returns at once."""
        if self._pending is not None:
            raise RuntimeError("a run is already in flight: collect it first")
        feed(self._pipe, self.spec, streams, draws, metas)
        self._pipe.schedule_run()
        self._pending = (streams, draws, metas)

    def collect(self) -> list[Decoded | Failure]:
        """Wait for the run in flight; one result per submitted sample, in order."""
        if self._pending is None:
            raise RuntimeError("no run in flight")
        streams, draws, metas = self._pending
        self._pending = None
        try:
            outputs = dict(zip(self.spec.outputs, self._pipe.outputs()))
        except (RuntimeError, ValueError, IndexError) as err:
            self._rebuild()
            if len(streams) == 1:
                return [Failure(f"decode failed: {dali_reason(err)}")]
            results: list[Decoded | Failure] = []
            for stream, draw, meta in zip(streams, draws, metas):
                self.submit([stream], [draw], [meta])
                results += self.collect()
            return results
        return [self._check(outputs, index, meta) for index, meta in enumerate(metas)]

    def drain(self) -> None:
        """Forget a run in flight (an epoch left early), so the next run starts clean."""
        if self._pending is not None:
            self._pending = None
            try:
                self._pipe.outputs()
            except (RuntimeError, ValueError, IndexError):
                self._rebuild()

    def _rebuild(self) -> None:
        self._pipe = build(self.spec)  # the old object is dead after an operator error
        self.rebuilds += 1

    def _check(self, outputs: dict, index: int, meta: fmt.ClipMeta) -> Decoded | Failure:
        want = (self.spec.frames, meta.height, meta.width, 3)
        streams = [(fmt.RGB, "rgb_shape"), (fmt.LABEL, "label_shape"), (fmt.FLOW, "flow_shape")]
        if self.spec.has_edges:
            streams.append((fmt.EDGE, "edge_shape"))
        for member, name in streams:
            got = tuple(int(v) for v in np.asarray(outputs[name][index]))
            if got != want:
                return Failure(f"{member} decodes to {got} (frames, height, width, channels); "
                               f"its metadata says {want}")
        if self.spec.label_kind == "classes":
            label_max = outputs["label_max"]
            label_max = label_max.as_cpu() if hasattr(label_max, "as_cpu") else label_max
            largest = int(np.asarray(label_max[index]))
            if largest >= self.spec.num_classes:
                return Failure(f"{fmt.LABEL} holds class id {largest}, data.num_classes is "
                               f"{self.spec.num_classes}")
        return Decoded(outputs, index)


def dali_reason(err: Exception) -> str:
    """The operator's own message out of DALI's multi-line error text."""
    text = str(err)
    if "encountered:" in text:
        text = text.split("encountered:", 1)[1]
    text = text.split("Current pipeline object is no longer valid")[0]
    return " ".join(text.split())[:300]
