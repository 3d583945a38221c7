"""Paired data from real videos: each frame beside its edge map, for the quality benchmark on real
footage (``configs/quality_edges.yaml``).

Every video is resized to ``--size`` and cut into sequences of ``--frames`` frames (``<video>_<n>``),
each written in the input layout ``vid2vid data pack`` reads with ``data.pack.label_kind=rgb``:
``frames/`` the RGB frames, ``labels/`` their edges (OpenCV's Canny on the blurred grey frame, white
on black, the same in three channels), as vid2vid's edge-to-face task draws them from the real frames.
The edges flicker from frame to frame as real edge detectors do; the camera, the motion and the
texture are the video's own, not a procedural scene's.

    .venv/bin/python benchmarks/edge_pairs.py tests/data/bbb_180_10s_vp9.webm tests/data/flower.webm \\
        --out bench/quality-edges/edges
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dataio.video import iter_frames  # noqa: E402


def edges(frame: np.ndarray, low: int, high: int) -> np.ndarray:
    """A frame's edges [H, W, 3] uint8: 255 on an edge, 0 elsewhere."""
    grey = cv2.GaussianBlur(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY), (3, 3), 0)
    return np.repeat(cv2.Canny(grey, low, high)[:, :, None], 3, axis=2)


def write_pairs(video: Path, out: Path, frames: int, size: tuple[int, int], low: int, high: int,
                most: int | None = None) -> int:
    """Sequences of ``frames`` frames from ``video`` under ``out`` (the first ``most`` of them); a shorter
    tail is dropped. Returns how many."""
    height, width = size
    sequences, buffer = 0, []
    for frame in iter_frames(video):
        if sequences == most:
            break
        buffer.append(cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA))
        if len(buffer) == frames:
            folder = out / f"{video.stem}_{sequences:03d}"
            for sub in ("frames", "labels"):
                (folder / sub).mkdir(parents=True, exist_ok=True)
            for t, rgb in enumerate(buffer):
                Image.fromarray(rgb).save(folder / "frames" / f"{t:06d}.png")
                Image.fromarray(edges(rgb, low, high)).save(folder / "labels" / f"{t:06d}.png")
            sequences, buffer = sequences + 1, []
    return sequences


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("videos", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="the pack source to write (data.pack.source)")
    parser.add_argument("--frames", type=int, default=24, help="frames per sequence")
    parser.add_argument("--size", type=int, nargs=2, default=(128, 256), metavar=("H", "W"))
    parser.add_argument("--max-sequences", type=int, help="at most this many sequences from each video")
    parser.add_argument("--canny", type=int, nargs=2, default=(60, 150), metavar=("LOW", "HIGH"),
                        help="Canny's hysteresis thresholds")
    args = parser.parse_args()
    for video in args.videos:
        if not video.is_file():
            raise SystemExit(f"{video}: no such video")
        count = write_pairs(video, args.out, args.frames, tuple(args.size), *args.canny, args.max_sequences)
        print(f"{video.name}: {count} sequence(s) of {args.frames} frames at {args.size[0]}x{args.size[1]} "
              f"in {args.out}")


if __name__ == "__main__":
    main()
