"""Peak memory of `vid2vid generate` on Cityscapes-size labels: 30 frames against 1 frame.

    .venv/bin/python benchmarks/generate_memory.py [--frames 30] [--size 1024x2048] [--out bench/generate_memory]

Writes a sequence folder of 2048x1024 label maps with 35 classes and 8-bit instance maps (Cityscapes'
format) and a checkpoint folder holding a small random generator for 35 classes + instance edges, then
runs the installed `vid2vid generate` on the first frame alone, on the first 3 (the first frame with
the whole history of L = 2 previous frames) and on all frames, at the native size and at
--height/--width 512x1024, each in its own process, and prints each run's peak RSS and the ratios of
the long run's to the short ones'. Generation streams frame by frame, so the goal is a ratio to 3
frames near 1 and every peak under 2 GB.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
VID2VID = str(Path(sys.executable).with_name("vid2vid"))
GOAL_BYTES = 2 * 2 ** 30


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--size", default="1024x2048", help="HEIGHTxWIDTH of the label maps")
    parser.add_argument("--out", default="bench/generate_memory")
    return parser.parse_args()


def write_labels(folder: Path, frames: int, height: int, width: int) -> None:
    """Blocky 35-class maps that move 8 px a frame, with instance ids (8-bit) on the 'car' blocks."""
    import numpy as np
    from PIL import Image

    if len(list((folder / "labels").glob("*.png"))) == frames:
        return
    for sub in ("labels", "instances"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 35, (height // 64 + 1, width // 64 + 2), dtype=np.uint8)
    for t in range(frames):
        ids = np.kron(blocks, np.ones((64, 64), np.uint8))[:height, t * 8 % 64:t * 8 % 64 + width]
        instances = np.where(ids == 26, (np.arange(width) // 64 % 250)[None, :] + 1, 0).astype(np.uint8)
        Image.fromarray(ids).save(folder / "labels" / f"{t:06d}.png")
        Image.fromarray(instances).save(folder / "instances" / f"{t:06d}.png")


def write_checkpoint(folder: Path) -> None:
    """A checkpoint folder as `vid2vid generate --model` takes it: an export beside a trainer state."""
    import torch

    from dataio.labels import LabelSpec
    from models.build import build_generator
    from cluster.config import load
    from trainer.config_tree import to_dict
    from trainer.export import FORMAT

    cfg = load(REPO / "configs" / "demo.yaml", ["data.num_classes=35", "model.generator.num_scales=1"])
    labels = LabelSpec(35, has_edges=True)
    torch.manual_seed(0)
    generator = build_generator(cfg.model, labels.channels)
    (folder / "export").mkdir(parents=True, exist_ok=True)
    (folder / "step-000000001").mkdir(exist_ok=True)
    torch.save({"format": FORMAT, "state_dict": generator.state_dict(), "model": to_dict(cfg.model),
                "label_channels": labels.channels, "labels": labels.to_dict(), "active_scales": 1},
               folder / "export" / "generator.pt")
    torch.save({"config": to_dict(cfg), "progress": {"run_id": ""}, "stage": {}},
               folder / "step-000000001" / "trainer.pt")


def peak_rss(args: list[str]) -> tuple[int, float]:
    """Peak RSS (bytes) and seconds of `vid2vid generate ARGS`, measured in a fresh process."""
    probe = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, "
             "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); "
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", probe, VID2VID, "generate", *args], capture_output=True,
                         text=True, check=True).stdout
    return int(out.strip()) * 1024, time.perf_counter() - started  # ru_maxrss is in KiB on Linux


def main() -> None:
    args = parse()
    height, width = (int(v) for v in args.size.split("x"))
    out = Path(args.out).resolve()
    write_labels(out / "long", args.frames, height, width)
    # The first frame is generated from labels alone (a lighter forward); from frame L+1 on each frame
    # carries the full history, so a clip of L+1 frames is the baseline for "flat in the frame count".
    short = {"1 frame": out / "one", "3 frames": out / "three"}
    for count, folder in zip((1, 3), short.values()):
        for sub in ("labels", "instances"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
            for t in range(count):
                first = out / "long" / sub / f"{t:06d}.png"
                if not (folder / sub / first.name).exists():
                    (folder / sub / first.name).symlink_to(first)
    write_checkpoint(out / "checkpoint")
    rows = []
    for size in ([], ["--height", "512", "--width", "1024"]):
        shown = f"{size[1]}x{size[3]}" if size else f"{height}x{width} (native)"
        peaks = {}
        for name, folder in (*short.items(), (f"{args.frames} frames", out / "long")):
            peak, seconds = peak_rss(["--model", str(out / "checkpoint"), "--labels", str(folder),
                                      "--out", str(out / f"{folder.name}.mp4"), "--device", "cpu", *size])
            peaks[name] = peak
            print(f"{shown:<22} {name:<10} peak RSS {peak / 2 ** 30:6.2f} GiB  ({seconds:.0f} s)", flush=True)
        long = peaks[f"{args.frames} frames"]
        ratio, flat = long / peaks["1 frame"], long / peaks["3 frames"]
        under = all(p < GOAL_BYTES for p in peaks.values())
        print(f"{shown:<22} {args.frames} frames / 1 frame: {ratio:.2f}x; / 3 frames: {flat:.2f}x; "
              f"under 2 GiB: {'yes' if under else 'no'}")
        rows.append({"size": shown, "peaks": peaks, "ratio": ratio, "ratio_to_3_frames": flat, "under_goal": under})
    (out / "generate_memory.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
