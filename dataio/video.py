"""Encoding and decoding of the clip streams with PyAV (ffmpeg's libraries).

RGB travels as lossy VP9 (yuv420p); label, instance-edge and flow streams as lossless VP9 in pixel
format ``gbrp``, which DALI's CPU decoder returns bit-exact (lossless yuv444 is off by one; see
docs/platform.md). VP9 rather than H.264 because DALI decodes VP9 on the CPU and the GPU alike.
"""
from __future__ import annotations

import dataclasses
import io
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterator

import av
import av.filter
import numpy as np

from dataio.errors import UserInputError

# ffmpeg's scale filter with these flags converts yuv420p -> rgb24 bit-exactly as DALI's CPU decoder
# does (measured on a VP9 file: 0 of 1.7M values differ). PyAV's default conversion differs by up to
# ~120 on chroma edges, and `VideoFrame.reformat` with the same flags as an integer still differs by up
# to ~30 (it picks other colour-space defaults), so the conversion runs through a filter graph.
_ACCURATE_RGB = "flags=bilinear+full_chroma_int+accurate_rnd"


class VideoError(UserInputError, ValueError):
    """A video that cannot be read; the message names the file or stream."""


def encode_rgb(frames: np.ndarray, crf: int = 18, fps: float = 30.0) -> bytes:
    """Lossy VP9 (yuv420p, constant quality ``crf``) of uint8 frames [T, H, W, 3]."""
    return _encode(frames, pix_fmt="yuv420p", options={"crf": str(crf), "b": "0", "row-mt": "1",
                                                          "deadline": "good", "cpu-used": "4"}, fps=fps)


def encode_lossless(frames: np.ndarray, fps: float = 30.0) -> bytes:
    """Lossless VP9 ``gbrp`` of uint8 frames [T, H, W, 3] (or [T, H, W], stored in R=G=B)."""
    if frames.ndim == 3:
        frames = np.repeat(frames[..., None], 3, axis=-1)
    # Lossless output is the same pixels at any speed; cpu-used 5 encoded label and flow clips 1.5-2x
    # faster than 4 (256x128, 16 frames) for -23% (labels) / +13% (flow) bytes. realtime/8 was 5x faster
    # but 1.6x bigger: the shards are written once and read every epoch.
    return _encode(frames, pix_fmt="gbrp", options={"lossless": "1", "row-mt": "1",
                                                       "deadline": "good", "cpu-used": "5"}, fps=fps)


def _encode(frames: np.ndarray, pix_fmt: str, options: dict[str, str], fps: float) -> bytes:
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected uint8 frames [T, H, W, 3], got {frames.dtype} {frames.shape}")
    _, height, width, _ = frames.shape
    if height % 2 or width % 2:
        raise ValueError(f"VP9 needs even frame sizes, got {width}x{height}")
    buf = io.BytesIO()
    # bitexact: no creation date or random segment id in the header, so the same frames give the same
    # bytes (packing is reproducible and a redone shard equals the one it replaces)
    with av.open(buf, "w", format="webm", container_options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream("libvpx-vp9", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.options = options
        # One thread per encoder: packing already runs one process per core.
        stream.codec_context.thread_count = 1
        for frame in frames:
            video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            for packet in stream.encode(video_frame.reformat(format=pix_fmt)):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def decode(source: bytes | str | Path, name: str | None = None) -> np.ndarray:
    """All frames of the first video stream as uint8 [T, H, W, 3] RGB.

    ``source`` is encoded bytes or a path; ``name`` is what errors call it. Audio streams are ignored.
    gbrp streams come back exact; yuv streams are converted as DALI converts them.
    """
    return np.stack(list(iter_frames(source, name)))


def iter_frames(source: bytes | str | Path, name: str | None = None) -> Iterator[np.ndarray]:
    """The frames of ``decode`` one at a time (uint8 [H, W, 3]): memory does not grow with the video."""
    label = name or (str(source) if not isinstance(source, bytes) else "<video bytes>")
    handle = io.BytesIO(source) if isinstance(source, bytes) else str(source)
    count = 0
    try:
        with av.open(handle) as container:
            if not container.streams.video:
                raise VideoError(f"{label}: no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            to_rgb = _RgbConverter(stream)
            for frame in container.decode(stream):
                count += 1
                yield to_rgb(frame)
    except VideoError:
        raise
    except (av.FFmpegError, OSError, ValueError) as err:
        raise VideoError(f"{label}: cannot decode video: {err}") from err
    if not count:
        raise VideoError(f"{label}: the video has no frames")


def probe(source: bytes | str | Path, name: str | None = None) -> dict:
    """Codec, size, frame count and rate of the first video stream, without decoding pixels."""
    label = name or (str(source) if not isinstance(source, bytes) else "<video bytes>")
    handle = io.BytesIO(source) if isinstance(source, bytes) else str(source)
    try:
        with av.open(handle) as container:
            if not container.streams.video:
                raise VideoError(f"{label}: no video stream")
            stream = container.streams.video[0]
            frames = sum(1 for _ in container.demux(stream) if _.size)
            return {"codec": stream.codec_context.name, "width": stream.codec_context.width,
                    "height": stream.codec_context.height, "frames": frames,
                    "fps": float(stream.average_rate or stream.guessed_rate or 0.0),
                    "pix_fmt": stream.codec_context.pix_fmt}
    except VideoError:
        raise
    except (av.FFmpegError, OSError, ValueError) as err:
        raise VideoError(f"{label}: cannot read video: {err}") from err


class _RgbConverter:
    """Decoded frames of one stream -> uint8 [H, W, 3] RGB, as DALI's decoder converts them."""

    def __init__(self, stream: av.video.stream.VideoStream) -> None:
        self.stream = stream
        self.graph: av.filter.Graph | None = None

    def __call__(self, frame: av.VideoFrame) -> np.ndarray:
        if frame.format.name == "gbrp":
            return frame.to_ndarray(format="rgb24")  # lossless streams: planes reordered, values exact
        if self.graph is None:
            self.graph = av.filter.Graph()
            source = self.graph.add_buffer(template=self.stream)
            scale = self.graph.add("scale", _ACCURATE_RGB)
            rgb = self.graph.add("format", "rgb24")
            sink = self.graph.add("buffersink")
            source.link_to(scale)
            scale.link_to(rgb)
            rgb.link_to(sink)
            self.graph.configure()
        self.graph.push(frame)
        return self.graph.pull().to_ndarray()


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    """What ``scan`` learns from decoding every frame of a video's first stream."""
    codec: str
    width: int
    height: int
    frames: int
    fps: float
    pts: tuple[int, ...] | None
    """Presentation time of each frame in decoding order; None where they are missing or not
    strictly increasing, in which case ``decode_range`` decodes from the start instead of seeking."""


def scan(path: str | Path) -> VideoInfo:
    """Decode every frame (no colour conversion) to count them and prove the file readable.

    ``probe`` counts packets, which container edits and broken streams can make differ from the frames a
    decoder yields; packing validates inputs before writing anything, so it pays for a real decode.
    """
    label = str(path)
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoError(f"{label}: no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            pts: list[int | None] = []
            size = None
            for frame in container.decode(stream):
                if size is None:
                    size = (frame.width, frame.height)
                elif size != (frame.width, frame.height):
                    raise VideoError(f"{label}: frame {len(pts)} is {frame.width}x{frame.height}, "
                                     f"the first was {size[0]}x{size[1]}")
                pts.append(frame.pts)
            fps = float(stream.average_rate or stream.guessed_rate or 0.0) or 30.0
            codec = stream.codec_context.name
    except VideoError:
        raise
    except (av.FFmpegError, OSError, ValueError) as err:
        raise VideoError(f"{label}: cannot decode video: {err}") from err
    if size is None:
        raise VideoError(f"{label}: the video has no frames")
    seekable = all(p is not None for p in pts) and all(b > a for a, b in zip(pts, pts[1:]))
    return VideoInfo(codec=codec, width=size[0], height=size[1], frames=len(pts), fps=fps,
                     pts=tuple(pts) if seekable else None)  # type: ignore[arg-type]


def decode_range(path: str | Path, start: int, stop: int, pts: tuple[int, ...] | None = None,
                 each: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """Frames ``[start, stop)`` (decoding order, as ``scan`` counts them) as uint8 [T, H, W, 3] RGB,
    each passed through ``each`` as it is decoded (a resize: only one frame is held at the video's size).

    With ``pts`` from ``scan`` it seeks to the keyframe before ``start`` and identifies frames by their
    timestamps, so reading a late clip of a long video does not decode the whole prefix. Without them,
    or when a seek lands past the wanted frame, it decodes from the start.
    """
    if not 0 <= start < stop:
        raise ValueError(f"{path}: bad frame range [{start}, {stop})")
    label = str(path)
    try:
        if pts is not None and stop <= len(pts):
            frames = _decode_seeking(path, pts[start:stop], each)
            if frames is not None:
                return frames
        return _decode_counting(path, start, stop, each)
    except VideoError:
        raise
    except (av.FFmpegError, OSError, ValueError) as err:
        raise VideoError(f"{label}: cannot decode video: {err}") from err


def _decode_seeking(path: str | Path, wanted: tuple[int, ...], each: Callable[[np.ndarray], np.ndarray] | None
                    ) -> np.ndarray | None:
    frames = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        container.seek(wanted[0], stream=stream, backward=True, any_frame=False)
        to_rgb = _RgbConverter(stream)
        for frame in container.decode(stream):
            if frame.pts is None:
                return None
            if frame.pts < wanted[0]:
                continue
            if frame.pts != wanted[len(frames)]:
                return None  # the seek overshot or the stream disagrees with the scan: count instead
            frames.append(_fitted(to_rgb(frame), each))
            if len(frames) == len(wanted):
                return np.stack(frames)
    return None


def _fitted(frame: np.ndarray, each: Callable[[np.ndarray], np.ndarray] | None) -> np.ndarray:
    return frame if each is None else each(frame)


def _decode_counting(path: str | Path, start: int, stop: int, each: Callable[[np.ndarray], np.ndarray] | None
                     ) -> np.ndarray:
    frames = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        to_rgb = _RgbConverter(stream)
        for index, frame in enumerate(container.decode(stream)):
            if index >= start:
                frames.append(_fitted(to_rgb(frame), each))
            if index + 1 >= stop:
                break
    if len(frames) != stop - start:
        raise VideoError(f"{path}: wanted frames [{start}, {stop}), the video has {start + len(frames)}")
    return np.stack(frames)
