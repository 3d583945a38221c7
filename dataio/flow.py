"""Optical-flow targets, computed on the CPU with OpenCV when packing.

``flow[t]`` follows the convention of ``dataio.format``: for a pixel ``p`` of frame t it points to where
that content was in frame t-1, ``frame[t](p) ~= frame[t-1](p + flow[t](p))``. OpenCV's ``calc(a, b)``
returns ``f`` with ``a(p) ~= b(p + f(p))``, so the target is ``calc(frame[t], frame[t-1])``.

Confidence is forward-backward consistency: where the flow t -> t-1 and the flow t-1 -> t undo each
other the pixel was visible in both frames; where they disagree (occlusion, or the estimate is simply
wrong) the pixel gets little weight in the flow and warping losses. The soft weight is
``exp(-d^2 / (a1 * (|f|^2 + |g|^2) + a2))`` with ``d = |f(p) + g(p + f(p))|``, the test of Meister et
al. (UnFlow, AAAI 2018; a1 = 0.01, a2 = 0.5) turned into a weight; pixels whose ``p + f(p)`` falls outside
frame t-1 get 0.
"""
from __future__ import annotations

from typing import Literal

import cv2
import numpy as np

Method = Literal["dis", "farneback"]
_ALPHA1, _ALPHA2 = 0.01, 0.5


class FlowEstimator:
    """Dense flow between two grey frames with one OpenCV method."""

    def __init__(self, method: Method = "dis") -> None:
        if method not in ("dis", "farneback"):
            raise ValueError(f"data.pack.flow: unknown flow method {method!r} (dis or farneback)")
        self.method = method

    def __call__(self, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
        """Flow f [H, W, 2] float32 with ``src(p) ~= dst(p + f(p))``."""
        if self.method == "dis":
            # MEDIUM: ~10 ms per 256x128 pair on one core; FAST is 3x quicker and visibly worse on
            # texture. A fresh object per pair: a DIS object that has seen other images returns a
            # slightly different flow (up to 0.08 px measured), so packing would depend on its order.
            return cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM).calc(src, dst, None)
        return cv2.calcOpticalFlowFarneback(src, dst, None, pyr_scale=0.5, levels=4, winsize=15,
                                            iterations=3, poly_n=5, poly_sigma=1.2, flags=0)


def backward_flow(frames: np.ndarray, method: Method = "dis") -> tuple[np.ndarray, np.ndarray]:
    """Flow targets of uint8 RGB frames [T, H, W, 3].

    Returns ``flow`` [T, H, W, 2] float32 in pixels (t -> t-1) and ``confidence`` [T, H, W] float32 in
    [0, 1]; index 0 has no previous frame: zero flow, zero confidence.
    """
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected uint8 frames [T, H, W, 3], got {frames.dtype} {frames.shape}")
    count, height, width, _ = frames.shape
    estimate = FlowEstimator(method)
    grey = [cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY) for frame in frames]
    flow = np.zeros((count, height, width, 2), np.float32)
    confidence = np.zeros((count, height, width), np.float32)
    for t in range(1, count):
        flow[t] = estimate(grey[t], grey[t - 1])
        confidence[t] = consistency(flow[t], estimate(grey[t - 1], grey[t]))
    return flow, confidence


def consistency(backward: np.ndarray, forward: np.ndarray) -> np.ndarray:
    """Soft forward-backward consistency [H, W] of ``backward`` (t -> t-1) against ``forward`` (t-1 -> t)."""
    height, width = backward.shape[:2]
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    map_x, map_y = xs + backward[..., 0], ys + backward[..., 1]
    # forward flow sampled where each pixel of frame t came from in frame t-1
    returned = cv2.remap(forward, map_x, map_y, interpolation=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    mismatch = np.sum((backward + returned) ** 2, axis=-1)
    scale = _ALPHA1 * (np.sum(backward ** 2, axis=-1) + np.sum(returned ** 2, axis=-1)) + _ALPHA2
    inside = (map_x >= 0) & (map_x <= width - 1) & (map_y >= 0) & (map_y <= height - 1)
    return np.where(inside, np.exp(-mismatch / scale), 0.0).astype(np.float32)


def endpoint_error(estimate: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean end-point error (Euclidean distance in pixels) over ``mask`` (all pixels when None)."""
    error = np.linalg.norm(estimate.astype(np.float64) - truth, axis=-1)
    if mask is not None:
        if not mask.any():
            raise ValueError("endpoint_error: the mask selects no pixel")
        return float(error[mask].mean())
    return float(error.mean())
