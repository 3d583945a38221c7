"""How well the label maps alone tell the motion: the label-flow prior's end-point error against the exact flow.

The quality benchmark's diagnostics found the sequential generator carrying texture along a flow hardly
better than none (0.64 px against 0.66 px on visible pixels at 64x128). Two suspects were the way the
labels reach the training size: nearest-neighbour resizing hides sub-pixel boundary motion that an
area-resized (soft) label map keeps, and the flow could be estimated at the packed size. This measures
all of them on the quality benchmark's own synthetic sequences (``configs/quality.yaml``: synth seed 7,
128x256, trained at 64x128), each frame pair against the exact flow on pixels visible in both frames:

  zero       no motion at all
  nearest    the prior as trained: label maps resized nearest-neighbour to the training size
  area       label maps one-hot, then area-resized (soft boundaries) to the training size
  packed     the prior at the packed size, its flow resized to the training size
  real DIS   OpenCV DIS between the real frames at the packed size (what packing stores as the target)

    .venv/bin/python benchmarks/label_flow_error.py [--sequences 16] [--frames 24]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dataio.synth import disocclusions, render_sequence, sequence_seed  # noqa: E402
from models.label_flow import label_flow  # noqa: E402

FACTOR = 2  # packed 128x256 -> trained 64x128, as configs/quality.yaml


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequences", type=int, default=16)
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--seed", type=int, default=7, help="data.synth.seed")
    parser.add_argument("--classes", type=int, default=8)
    return parser.parse_args()


def real_flow(rgb: np.ndarray, t: int) -> np.ndarray:
    """DIS flow t -> t-1 between the real frames [h, w, 2], as packing computes the target."""
    grey = [cv2.cvtColor(rgb[i], cv2.COLOR_RGB2GRAY) for i in (t, t - 1)]
    return cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM).calc(grey[0], grey[1], None)


def main() -> None:
    args = parse()
    sums: dict[str, float] = {}
    visible = 0.0
    pick = FACTOR // 2  # the loader's nearest resize samples pixel centres
    for index in range(args.sequences):
        seq = render_sequence(sequence_seed(args.seed, index), args.frames, 128, 256)
        onehot = F.one_hot(torch.from_numpy(seq["labels"].astype(np.int64)), args.classes)
        onehot = onehot.permute(0, 3, 1, 2).float()  # [T, C, 128, 256]
        nearest, area = onehot[:, :, pick::FACTOR, pick::FACTOR], F.avg_pool2d(onehot, FACTOR)
        new = disocclusions(seq["instances"], seq["flow"])
        exact = torch.from_numpy(seq["flow"][:, pick::FACTOR, pick::FACTOR].transpose(0, 3, 1, 2) / FACTOR)
        seen = torch.from_numpy(~new[:, pick::FACTOR, pick::FACTOR]).double()
        for t in range(1, args.frames):
            packed_real = torch.from_numpy(real_flow(seq["rgb"], t)).permute(2, 0, 1)[None]
            flows = {
                "zero": torch.zeros(1, 2, *exact.shape[-2:]),
                "nearest": label_flow(nearest[t:t + 1], nearest[t - 1:t]),
                "area": label_flow(area[t:t + 1], area[t - 1:t]),
                "packed": F.avg_pool2d(label_flow(onehot[t:t + 1], onehot[t - 1:t]), FACTOR) / FACTOR,
                "real DIS": F.avg_pool2d(packed_real, FACTOR) / FACTOR,
            }
            for name, flow in flows.items():
                error = (flow[0].double() - exact[t]).norm(dim=0)
                sums[name] = sums.get(name, 0.0) + float((error * seen[t]).sum())
            visible += float(seen[t].sum())
    print(f"{args.sequences} sequences x {args.frames - 1} frame pairs, 64x128, exact flow on visible pixels")
    zero = sums["zero"] / visible
    for name, total in sums.items():
        epe = total / visible
        print(f"  {name:<9} end-point error {epe:.3f} px  ({epe / zero:.2f}x zero flow's)")


if __name__ == "__main__":
    main()
