"""`vid2vid generate`: a trained model turns label maps into a video, one frame at a time.

Labels come from a folder of label maps (PNG, natural order; a sequence folder with ``labels/`` and
optional ``instances/`` also works), read as the training data was packed: the model's stored label
spec remaps stored values (``data.pack.label_map``, e.g. a 0/255 mask) and refuses values that are no
class; or from a label video (class ids in the red channel, as in the shards' lossless ``label.webm``)
or a shard (``.tar``: one clip, the first or ``--key``), which hold class ids already.

Everything streams: a frame is read, resized (nearest) and encoded, generated and written to the mp4
before the next is read, so memory does not grow with the number of frames (benchmarks/generate_memory.py).
A size the model cannot take is refused before any frame is read.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from cluster.registry import load_video_model
from cluster.video_model import pick_device, to_uint8
from dataio import format as fmt, video
from dataio.errors import UserInputError
from dataio.format import instance_edges
from dataio.labels import LabelSpec
from dataio.reader import Sample, read_shard
from dataio.sources import BadInputError, ReadOptions, list_images, read_instances, read_label
from dataio.storage import AtomicFile, Destination
from dataio.video import decode
from trainer.samples import Mp4Writer

VIDEO_SUFFIXES = {".mp4", ".webm", ".mkv", ".avi", ".mov"}
LOSSLESS_PIXELS = {"gbrp", "rgb24", "bgr24", "rgba", "bgra", "argb", "abgr", "gray", "pal8", "yuv444p"}
"""Pixel formats in which a label video can hold class ids exactly (lossless VP9 and FFV1 use these;
``yuv444p`` only with a lossless codec setting). A 4:2:0 or 4:2:2 stream cannot."""
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter (malloc.h)

log = logging.getLogger(__name__)


class LabelInputError(UserInputError, ValueError):
    """Labels that cannot be read or do not fit the model; the message names the file."""


LabelFrame = tuple[np.ndarray, "np.ndarray | None"]
"""uint8 class ids [H, W] (or renderings [H, W, 3]) and instance edges [H, W] (255 on boundaries) or None."""


@dataclass
class LabelSource:
    """A label video not yet read: where it is, its size, and how to read it frame by frame."""
    source: str
    height: int
    width: int
    frames: int | None
    """Frame count when known without reading (folders, shards)."""
    read: Callable[[], Iterator[LabelFrame]]


def open_labels(path: str | Path, labels: LabelSpec, key: str | None = None) -> LabelSource:
    """The label frames at ``path`` for a model with ``labels``; nothing is decoded yet."""
    path = Path(path)
    if path.is_dir():
        return _from_folder(path, labels)
    if not path.is_file():
        raise LabelInputError(f"labels {path}: no such file or folder")
    if path.suffix == ".tar":
        return _from_shard(path, labels, key)
    if path.suffix.lower() in VIDEO_SUFFIXES:
        return _from_video(path, labels)
    raise LabelInputError(f"labels {path}: expected a folder of PNG label maps, a video "
                          f"({', '.join(sorted(VIDEO_SUFFIXES))}) or a shard (.tar)")


def _from_folder(folder: Path, labels: LabelSpec) -> LabelSource:
    labels_dir = folder / "labels" if (folder / "labels").is_dir() else folder
    files = _label_images(labels_dir)
    instances: tuple[Path, ...] = ()
    if labels_dir != folder and (folder / "instances").is_dir() and labels.has_edges:
        instances = _label_images(folder / "instances")
        if len(instances) != len(files):
            raise LabelInputError(f"labels {folder / 'instances'}: {len(instances)} instance maps for "
                                  f"{len(files)} label maps")
    if labels.has_edges and not instances:
        _without_edges(str(labels_dir))
    try:
        width, height = Image.open(files[0]).size  # the header only
    except OSError as err:
        raise LabelInputError(f"labels {files[0]}: unreadable image: {err}") from None
    remapped = f" and remaps stored values {dict(labels.label_map)}" if labels.label_map else ""
    opts = ReadOptions(num_classes=labels.num_classes, clip_frames=1, label_kind=labels.kind,
                       label_map=labels.label_map,
                       remedy=f"the model knows {labels.num_classes} classes{remapped}: give maps of those")
    lookup = opts.lookup() if opts.label_map else None

    def read() -> Iterator[LabelFrame]:
        for t, path in enumerate(files):
            try:
                ids = read_label(path, opts, lookup)
                edges = instance_edges(read_instances(instances[t])) if instances else None
            except BadInputError as err:
                raise LabelInputError(f"labels {err}") from None
            if ids.shape[:2] != (height, width):
                raise LabelInputError(f"labels {path}: size {ids.shape[1]}x{ids.shape[0]} differs from "
                                      f"{files[0].name}'s {width}x{height}")
            yield ids, edges
    return LabelSource(str(labels_dir), height, width, len(files), read)


def _label_images(folder: Path) -> tuple[Path, ...]:
    try:
        return list_images(folder, (".png",))
    except BadInputError as err:
        raise LabelInputError(f"labels {err}") from None


def _without_edges(source: str) -> None:
    log.warning("labels %s: the model was trained with instance edges, and no instance maps come with these "
                "labels: its edge channel is left empty (give the sequence folder holding labels/ and "
                "instances/)", source)


def _from_video(path: Path, labels: LabelSpec) -> LabelSource:
    try:
        info = video.probe(path)
    except video.VideoError as err:
        raise LabelInputError(f"labels {err}") from None
    if labels.kind == "classes" and info["pix_fmt"] and info["pix_fmt"] not in LOSSLESS_PIXELS:
        log.warning("labels %s: %s in %s is most often lossy, which reads some class ids as other classes: "
                    "if the output looks wrong, give the label maps as PNG files or a lossless video (FFV1, "
                    "or VP9 -lossless 1 in gbrp)", path, info["codec"], info["pix_fmt"])
    if labels.has_edges:
        _without_edges(str(path))

    def read() -> Iterator[LabelFrame]:
        for frame in video.iter_frames(path):
            yield (frame if labels.kind == "rgb" else frame[..., 0]), None
    return LabelSource(str(path), info["height"], info["width"], info["frames"] or None, read)


def _from_shard(path: Path, labels: LabelSpec, key: str | None) -> LabelSource:
    for item in read_shard(Destination(str(path.parent)).fs, str(path)):
        if isinstance(item, Sample) and (key is None or item.key == key):
            name = f"{path}:{item.key}"
            maps = decode(item.streams[fmt.LABEL], f"{name}.{fmt.LABEL}")  # one clip: small
            edges = item.streams.get(fmt.EDGE)
            edge_maps = None if edges is None else decode(edges, f"{name}.{fmt.EDGE}")[..., 0]

            def read(maps=maps, edge_maps=edge_maps) -> Iterator[LabelFrame]:
                for t in range(len(maps)):
                    yield (maps[t] if labels.kind == "rgb" else maps[t][..., 0]), \
                        None if edge_maps is None else edge_maps[t]
            return LabelSource(name, maps.shape[1], maps.shape[2], len(maps), read)
    raise LabelInputError(f"labels {path}: no readable sample" + (f" with key {key!r}" if key else ""))


def output_size(source: LabelSource, divisor: int, size: tuple[int, int] | None) -> tuple[int, int]:
    """``size``, or the source's rounded down to what the model needs; refused when it cannot fit."""
    if size is not None:
        if size[0] % divisor or size[1] % divisor or min(size) < divisor:
            raise LabelInputError(f"size {size[0]}x{size[1]}: the model needs positive multiples of {divisor}")
        return size
    if min(source.height, source.width) < divisor:
        raise LabelInputError(f"labels {source.source}: {source.width}x{source.height} is smaller than the "
                              f"{divisor} px the model needs on each side; give --height/--width")
    return source.height // divisor * divisor, source.width // divisor * divisor


def encoded_frames(source: LabelSource, labels: LabelSpec, size: tuple[int, int]
                   ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(model input [C, H, W], ids at the output size) per frame, resized nearest-neighbour; class maps
    come as compact uint8 planes (``LabelSpec.encode``): a 2048x1024 frame of 36 planes is 75 MB, not 0.3 GB."""
    height, width = size
    for ids, edges in source.read():
        if ids.shape[:2] != (height, width):
            ids = cv2.resize(ids, (width, height), interpolation=cv2.INTER_NEAREST)
            if edges is not None:
                edges = cv2.resize(edges, (width, height), interpolation=cv2.INTER_NEAREST)
        try:
            yield labels.encode(ids, edges, compact=True), ids
        except ValueError as err:
            raise LabelInputError(f"labels {source.source}: {err}") from None


def colour_labels(ids: np.ndarray, labels: LabelSpec) -> np.ndarray:
    """uint8 [H, W, 3] picture of one frame's ids (a fixed colour per class) or of a rendering."""
    if labels.kind == "rgb":
        return ids
    palette = np.random.default_rng(12345).integers(40, 256, size=(labels.num_classes, 3)).astype(np.uint8)
    palette[0] = 0
    return palette[ids]


def steady_heap() -> None:
    """Blocks over 16 MiB straight from mmap, handed back to the system when freed.

    glibc raises its mmap threshold to the size of each large block freed (up to 32 MiB); after that,
    frame-sized tensors come from the heap and fragment it: generating 2048x1024 frames grew from
    1.47 to 1.60 GiB over 8 frames, and 30 frames peaked 1.19x what 3 frames did. With the threshold
    fixed at 16 MiB (which also turns the adjustment off) the peak stayed at 1.32 GiB from the second
    frame on, for 5% more time per frame (page faults of fresh mappings); at 1 MiB it cost 30%, at
    32 MiB the peak grew again (benchmarks/generate_memory.py; docs/performance.md).
    """
    libc = ctypes.util.find_library("c")
    mallopt = getattr(ctypes.CDLL(libc), "mallopt", None) if libc else None
    if mallopt is not None:  # glibc; other C libraries (macOS, musl) keep their own allocator policy
        mallopt(M_MMAP_THRESHOLD, 16 << 20)


def generate(model_uri: str, labels: str | Path, out: str | Path, *, side_by_side: bool = False,
             size: tuple[int, int] | None = None, key: str | None = None, fps: int = 8,
             device: str = "auto", progress: bool = True) -> Path:
    """Write ``out`` (mp4): the generated video, or labels | generated with ``side_by_side``.
    ``model_uri``: an MLflow model URI or a local checkpoint (``cluster.registry.load_video_model``)."""
    out = Path(out)
    if out.suffix.lower() != ".mp4":
        raise LabelInputError(f"--out {out}: the video is written as an .mp4 file")
    steady_heap()
    device = pick_device(device)
    model = load_video_model(model_uri, device)
    source = open_labels(labels, model.labels, key)
    target = output_size(source, model.divisor, size)
    shown: list[np.ndarray] = []  # the current frame's ids, for the side-by-side picture

    def inputs() -> Iterator[torch.Tensor]:
        for planes, ids in encoded_frames(source, model.labels, target):
            shown[:] = [ids]
            yield torch.from_numpy(planes).unsqueeze(0)
    # Written under a temporary name: a failure part way (a bad label map at frame 400) leaves no
    # shorter video that plays as if it were the whole one.
    with AtomicFile(out) as partial, Mp4Writer(partial, fps) as writer:
        for image in tqdm(model.stream(inputs()), total=source.frames, unit="frame", desc="generate",
                          disable=not progress):
            frame = to_uint8(image)[0].cpu().numpy()
            writer.write(np.concatenate([colour_labels(shown[0], model.labels), frame], axis=1)
                         if side_by_side else frame)
    return out
