"""Side-by-side sample videos (labels | generated | real) for tracking at the end of each stage."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from models.generator import generate_clip
from trainer import distributed as dist

if TYPE_CHECKING:
    from trainer.config import Config
    from trainer.schedule import Stage


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
    """H.264 mp4 of uint8 frames [T, H, W, 3] (see ``Mp4Writer``)."""
    with Mp4Writer(path, fps) as out:
        for frame in frames:
            out.write(frame)
    return Path(path)


class Mp4Writer:
    """H.264 mp4 written a frame at a time (plays in browsers, MLflow's UI included); odd sizes are
    padded to even numbers. ``with Mp4Writer(path) as out: out.write(frame)``."""

    def __init__(self, path: str | Path, fps: int = 8) -> None:
        import av

        self.path, self.fps = Path(path), fps
        self._container = av.open(str(self.path), "w")
        self._stream = None

    def write(self, frame: np.ndarray) -> None:
        """One uint8 [H, W, 3] RGB frame; every frame has the first one's size."""
        import av

        h, w = frame.shape[:2]
        frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        if self._stream is None:
            self._stream = self._container.add_stream("libx264", rate=self.fps)
            self._stream.width, self._stream.height, self._stream.pix_fmt = frame.shape[1], frame.shape[0], "yuv420p"
            # No lookahead or B-frames: x264's defaults hold up to ~50 frames back (0.48 GiB after 60
            # frames of 2048x1024, still growing); zerolatency stays at 0.09 GiB from the first frames,
            # for files ~25% larger. `vid2vid generate` streams: its memory must not grow with the video.
            self._stream.options = {"tune": "zerolatency"}
        for packet in self._stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
            self._container.mux(packet)

    def close(self) -> None:
        if self._stream is not None:
            for packet in self._stream.encode():
                self._container.mux(packet)
        self._container.close()

    def __enter__(self) -> "Mp4Writer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def log_sample(tracker, cfg: Config, generator, batch, stage: Stage, epoch: int) -> None:
    """labels | generated | real of the stage's last batch's first clip, as an mp4 artifact.

    Every rank generates (the same clip): sharded engines gather weights collectively, so a forward on
    rank 0 alone could hang. Rank 0 writes and logs it.
    """
    if not cfg.tracking.sample_video or not cfg.tracking.enabled:
        return
    generator.eval()
    try:
        with torch.no_grad():
            clip = generate_clip(generator, batch.labels[:1].to(next(generator.parameters()).dtype))
    finally:
        generator.train()
    if not dist.is_main():
        return
    frames = side_by_side(batch.labels[0], clip.images[0], batch.rgb[0])
    folder = Path(cfg.checkpoint.dir) / "samples"
    folder.mkdir(parents=True, exist_ok=True)
    path = write_mp4(frames, folder / f"epoch{epoch:04d}-scale{stage.scale}-{stage.height}x{stage.width}.mp4")
    tracker.log_artifact(path, "samples")
