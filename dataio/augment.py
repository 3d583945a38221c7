"""Crop, flip and resize of decoded clips on the CPU, written straight into the batch tensors.

Why not DALI's CPU operators: every one of them (``resize``, ``one_hot``, ``transpose``, ``cat``,
arithmetic) writes a full-size tensor, and the result is copied once more into torch. OpenCV's SIMD
kernels with ``dst=`` write each output plane once, in its final place, and release the GIL, so a
small thread pool runs them in parallel. Measured CPU time per clip frame (rgb + label + flow + edge
streams, 16-frame clips, this 2-core VM under other load), on top of the decode itself (2.6 ms at
256x128, 9.9 ms at 512x256): the DALI CPU graph +5.2 ms and +26 ms; torch ops +4.6 and +25 ms;
this module +1.2 ms and +9.5 ms, then about +1 and +2 ms once batches reuse their memory
(``Arenas``). The GPU path keeps the same maths inside the DALI graph (``dataio.pipeline``), where
it is cheap.

Conventions, identical to the DALI graph's (tests compare the two):
- the crop box (y0, x0, y1, x1) maps onto the output with pixel centres aligned
  (``src = y0 + (i + 0.5) * (y1 - y0) / H``); a flip mirrors the output;
- RGB: linear (area averaging when shrinking, the antialiasing), then ``v / 127.5 - 1``;
- class ids: nearest-neighbour (``INTER_NEAREST_EXACT``: the centre rule above), then one-hot;
- edges, a 3-channel label rendering, flow and its confidence: linear/area like RGB. Flow is
  dequantized and scaled (resize factor, x negated when mirrored) before resizing: both are linear.
"""
from __future__ import annotations

import ctypes
import dataclasses
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import torch

from dataio import format as fmt
from dataio.batch import Draw
from dataio.pipeline import Decoded, GraphSpec

_RGB_LUT = (np.arange(256, dtype=np.float32) / np.float32(127.5) - 1).astype(np.float32)
_UNIT_LUT = (np.arange(256, dtype=np.float32) / np.float32(255)).astype(np.float32)
_ZERO_LUT = np.zeros(256, np.float32)


@dataclasses.dataclass
class Frames:
    """One sample's decoded frames: zero-copy uint8 views of DALI's outputs."""
    rgb: np.ndarray
    """[T, H, W, 3]"""
    label: np.ndarray
    """[T, H, W] class ids, or [T, H, W, 3] for a 3-channel rendering."""
    flow: np.ndarray
    """[T, H, W, 3] quantized (dx, dy, confidence)."""
    edge: np.ndarray | None
    """[T, H, W], or None when the batch has no edge channel."""
    edge_gain: float
    """1 for real edges; 0 when this sample has none and its slot is zero."""
    flow_zero: float
    flow_steps: float


@dataclasses.dataclass
class Targets:
    """One sample's slots in the batch tensors (numpy views, C-contiguous planes)."""
    rgb: np.ndarray
    """[T, 3, H, W] float32"""
    labels: np.ndarray
    """[T, C, H, W] float32"""
    flow: np.ndarray
    """[T, 2, H, W] float32"""
    flow_conf: np.ndarray
    """[T, 1, H, W] float32"""


class Augmenter:
    """Applies ``Draw``s to decoded samples with ``threads`` worker threads."""

    def __init__(self, spec: GraphSpec, threads: int) -> None:
        self.spec = spec
        self.classes = np.arange(spec.num_classes, dtype=np.uint8)[:, None, None]
        self._pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="dataio-augment")
        self._threads = max(1, threads)

    def run(self, samples: list[tuple[Frames, Draw, Targets]]) -> None:
        """Fill every target; frames are split into enough tasks to keep all threads busy."""
        frames = self.spec.frames
        chunks = max(1, -(-self._threads // max(1, len(samples))))  # ceil(threads / samples)
        step = -(-frames // chunks)
        tasks = [(sample, range(t, min(frames, t + step)))
                 for sample in samples for t in range(0, frames, step)]
        for future in [self._pool.submit(self._frames, *task) for task in tasks]:
            future.result()

    def close(self) -> None:
        self._pool.shutdown(wait=False)

    def _frames(self, sample: tuple[Frames, Draw, Targets], times: range) -> None:
        decoded, draw, out = sample
        spec = self.spec
        y0, x0, y1, x1 = draw.box
        size = (spec.width, spec.height)
        smooth = cv2.INTER_AREA if (y1 - y0 > spec.height and x1 - x0 > spec.width) else cv2.INTER_LINEAR
        flow_lut = _flow_lut(draw, decoded, spec)
        edge_lut = _UNIT_LUT if decoded.edge_gain else _ZERO_LUT

        def fit(image: np.ndarray, interpolation: int) -> np.ndarray:
            resized = cv2.resize(image[y0:y1, x0:x1], size, interpolation=interpolation)
            return cv2.flip(resized, 1) if draw.flip else resized

        for t in times:
            planes = cv2.split(fit(decoded.rgb[t], smooth))
            for c in range(3):
                cv2.LUT(planes[c], _RGB_LUT, dst=out.rgb[t, c])
            channels = 0
            if spec.label_kind == "classes":
                ids = fit(decoded.label[t], cv2.INTER_NEAREST_EXACT)
                # bool then one cast: numpy's buffered cast inside np.equal(out=float) is slower
                np.copyto(out.labels[t, :spec.num_classes], np.equal(ids[None], self.classes))
                channels = spec.num_classes
            else:
                planes = cv2.split(fit(decoded.label[t], smooth))
                for c in range(3):
                    cv2.LUT(planes[c], _UNIT_LUT, dst=out.labels[t, c])
                channels = 3
            if decoded.edge is not None:
                cv2.LUT(fit(decoded.edge[t], smooth), edge_lut, dst=out.labels[t, channels])
            flow = fit(cv2.LUT(decoded.flow[t], flow_lut), smooth)
            cv2.split(flow, [out.flow[t, 0], out.flow[t, 1], out.flow_conf[t, 0]])
            cv2.min(out.flow_conf[t, 0], 1.0, dst=out.flow_conf[t, 0])  # filter weights sum to 1 + eps


def _flow_lut(draw: Draw, decoded: Frames, spec: GraphSpec) -> np.ndarray:
    """uint8 -> float per channel: (dx, dy) dequantized and scaled to output pixels, conf / 255."""
    y0, x0, y1, x1 = draw.box
    scale_x = spec.width / (x1 - x0) / decoded.flow_steps * (-1.0 if draw.flip else 1.0)
    scale_y = spec.height / (y1 - y0) / decoded.flow_steps
    steps = np.arange(256, dtype=np.float64) - decoded.flow_zero
    lut = np.stack([steps * scale_x, steps * scale_y, np.arange(256) / 255.0], axis=-1)
    return lut.astype(np.float32).reshape(256, 1, 3)


class Arenas:
    """Host memory for batches, reused once the consumer has dropped every tensor of a batch.

    Fresh pages are what a new batch costs most on the CPU: each one faults and is zeroed by the
    kernel, ~7 ms of CPU per 512x256 clip frame (8 MB of float32) on this VM, a third of the whole
    loader. A batch's tensors are views of one arena, held through a numpy array only the torch
    storage references, so the arena comes back here exactly when the last view dies.
    """

    def __init__(self, keep: int = 4) -> None:
        self._free: list[np.ndarray] = []
        self._keep = keep
        self._lock = threading.Lock()

    def take(self, nbytes: int) -> torch.Tensor:
        """A uint8 tensor of ``nbytes`` whose memory returns to the pool when it is garbage."""
        with self._lock:
            arena = next((a for a in self._free if a.nbytes == nbytes), None)
            if arena is not None:
                self._free.remove(arena)
        if arena is None:
            arena = np.empty(nbytes, np.uint8)
        owner = arena.view()  # only the torch storage will hold this one
        weakref.finalize(owner, self._give_back, arena)
        return torch.from_numpy(owner)

    def _give_back(self, arena: np.ndarray) -> None:
        with self._lock:
            if len(self._free) < self._keep:
                self._free.append(arena)


class BatchTensors:
    """One batch's tensors, allocated once and filled slot by slot, run by run."""

    def __init__(self, spec: GraphSpec, device: torch.device, arenas: Arenas | None = None) -> None:
        shape, hw = (spec.batch_size, spec.frames), (spec.height, spec.width)
        shapes = {"rgb": shape + (3,) + hw, "labels": shape + (spec.label_channels,) + hw,
                  "flow": shape + (2,) + hw, "flow_conf": shape + (1,) + hw}
        if device.type != "cpu" or arenas is None:
            self.tensors = {name: torch.empty(size, device=device) for name, size in shapes.items()}
        else:
            sizes = {name: 4 * int(np.prod(size)) for name, size in shapes.items()}
            arena, offset, self.tensors = arenas.take(sum(sizes.values())), 0, {}
            for name, size in shapes.items():
                self.tensors[name] = arena[offset:offset + sizes[name]].view(torch.float32).view(size)
                offset += sizes[name]  # float32 planes keep every offset 4-byte aligned
        self.filled = 0
        self.keys: list[str] = []
        self.draws: list[Draw] = []

    def targets(self, slot: int) -> Targets:
        """Numpy views of one slot (CPU tensors), for ``Augmenter`` to write into."""
        return Targets(**{name: tensor[slot].numpy() for name, tensor in self.tensors.items()})

    def finish(self) -> dict[str, torch.Tensor]:
        """The filled part; flow and confidence of each window's first frame are zero, as in the
        shard format (the frame before it is not in the clip)."""
        tensors = {name: tensor[:self.filled] for name, tensor in self.tensors.items()}
        tensors["flow"][:, 0] = 0
        tensors["flow_conf"][:, 0] = 0
        return tensors


class Writer:
    """Puts decoded samples into their batch slots: OpenCV augmentation after the ``cpu`` graph, a
    device copy of the outputs after the ``mixed`` one (which augmented them already)."""

    def __init__(self, spec: GraphSpec, threads: int) -> None:
        self.spec = spec
        self._augmenter = None if spec.in_graph else Augmenter(spec, threads)

    def write(self, batch: BatchTensors, samples: list[tuple[Decoded, Draw, fmt.ClipMeta, bool]]) -> None:
        """``samples``: (decoded, draw, meta, has an edge stream) each, into the next free slots."""
        first = batch.filled
        if self._augmenter is None:
            for slot, (decoded, _, _, _) in enumerate(samples, start=first):
                for name, target in batch.tensors.items():
                    _copy(decoded.outputs[name][decoded.index], target[slot])
        else:
            self._augmenter.run([(self._frames(decoded, meta, has_edge), draw, batch.targets(slot))
                                 for slot, (decoded, draw, meta, has_edge) in enumerate(samples, start=first)])
        batch.filled += len(samples)

    def close(self) -> None:
        if self._augmenter is not None:
            self._augmenter.close()

    def _frames(self, decoded: Decoded, meta: fmt.ClipMeta, has_edge: bool) -> Frames:
        out, i = decoded.outputs, decoded.index
        return Frames(rgb=np.asarray(out["rgb"][i]), label=np.asarray(out["label"][i]),
                      flow=np.asarray(out["flow"][i]),
                      edge=np.asarray(out["edge"][i]) if self.spec.has_edges else None,
                      edge_gain=1.0 if has_edge else 0.0,
                      flow_zero=float(meta.flow_zero), flow_steps=float(meta.flow_steps))


def _copy(source, target: torch.Tensor) -> None:
    """Copy one dense DALI sample into a contiguous torch tensor of the same shape."""
    if tuple(source.shape()) != tuple(target.shape) or not target.is_contiguous():
        raise RuntimeError(f"DALI output {tuple(source.shape())} does not fit {tuple(target.shape)}")
    pointer = ctypes.c_void_p(target.data_ptr())
    if target.is_cuda:
        # Blocking, on torch's stream: the tensor is ready when the batch is handed out.
        source.copy_to_external(pointer, torch.cuda.current_stream(target.device).cuda_stream,
                                non_blocking=False)
    else:
        source.copy_to_external(pointer)
