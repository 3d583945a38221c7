"""Side-by-side sample videos (labels | generated | real) for tracking at the end of each stage."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def _palette(classes: int) -> torch.Tensor:
    """Fixed, well-separated colours per class (deterministic: the same class looks the same in every run)."""
    gen = np.random.default_rng(12345)
    colours = gen.integers(40, 256, size=(max(classes, 1), 3))
    colours[0] = 0
    return torch.as_tensor(colours, dtype=torch.float32) / 255.0


def side_by_side(labels: torch.Tensor, generated: torch.Tensor, real: torch.Tensor) -> np.ndarray:
    """uint8 [T, H, 3W, 3] from one clip: ``labels`` [T, C, H, W] one-hot (or 3-channel renderings),
    ``generated``/``real`` [T, 3, H, W] in [-1, 1]."""
    labels, generated, real = labels.float().cpu(), generated.float().cpu(), real.float().cpu()
    if labels.shape[1] == 3:
        coloured = labels.clamp(0, 1)
    else:
        ids = labels.argmax(dim=1)  # instance edges, if present, are the last channel: never the argmax
        coloured = _palette(labels.shape[1])[ids].permute(0, 3, 1, 2)
    to01 = lambda x: (x.clamp(-1, 1) + 1) / 2  # noqa: E731
    frames = torch.cat([coloured, to01(generated), to01(real)], dim=3)
    return (frames.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()


def write_mp4(frames: np.ndarray, path: str | Path, fps: int = 8) -> Path:
    """H.264 mp4 (plays in browsers, MLflow's UI included); sizes are padded to even numbers."""
    import av

    path = Path(path)
    t, h, w, _ = frames.shape
    frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
