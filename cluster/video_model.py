"""The published model: label video in, RGB video out, any batch, length and (divisible) size.

Logged with MLflow's PyTorch flavour, so ``mlflow.pyfunc.load_model(uri).predict(labels)`` works:
``labels`` float32 [B, T, C, H, W] (one-hot classes, then the instance-edge channel when the model
has one: what the training loader produces), result uint8 [B, T, H, W, 3] RGB.

Why pickle and not MLflow's default ``pt2`` (torch.export): the generator is sequential, frame t
reads the outputs of frames t-L..t-1, so its forward is a Python loop over T. torch.export unrolls
that loop for the example's length and the loaded model accepts no other; the signature could not
keep T dynamic. The pickled module needs this file and ``models/`` importable, which the model
carries (``code_paths``).
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch import Tensor, nn

from models.generator import Generator


class VideoGenerator(nn.Module):
    def __init__(self, generator: Generator, num_classes: int, label_kind: str = "classes") -> None:
        super().__init__()
        self.generator = generator.eval()
        self.num_classes = num_classes
        """Classes of the label maps (one-hot channels); the rest of ``label_channels`` are edges."""
        self.label_kind = label_kind
        """``classes`` (one-hot) or ``rgb`` (3-channel renderings in [0, 1])."""

    @property
    def label_channels(self) -> int:
        return self.generator.label_channels

    @property
    def has_edges(self) -> bool:
        base = 3 if self.label_kind == "rgb" else self.num_classes
        return self.label_channels > base

    @property
    def divisor(self) -> int:
        """Height and width must be multiples of this."""
        return self.generator.divisor()

    def images(self, labels: Tensor) -> Iterator[Tensor]:
        """Frame by frame: float [B, 3, H, W] in [-1, 1] for each t of ``labels`` [B, T, C, H, W].

        Only the last L outputs are kept (the generator's previous frames), so memory does not grow
        with the clip; ``vid2vid eval`` scores these, ``generate`` and pyfunc serve them as uint8.
        """
        history = self.generator.cfg.prev_frames
        param = next(self.generator.parameters())
        labels = labels.to(param.device, param.dtype)
        previous: list[Tensor] = []
        with torch.no_grad():
            for t in range(labels.shape[1]):
                prev = torch.stack(previous[-history:], dim=1) if previous and history else None
                image = self.generator(labels[:, max(0, t - history):t + 1], prev).image
                previous = (previous + [image])[-max(history, 1):]
                yield image

    def frames(self, labels: Tensor) -> Iterator[Tensor]:
        """Frame by frame (for progress): uint8 [B, H, W, 3] for each t of ``labels`` [B, T, C, H, W]."""
        for image in self.images(labels):
            yield to_uint8(image)

    def forward(self, labels: Tensor) -> Tensor:
        """uint8 [B, T, H, W, 3] for float labels [B, T, C, H, W]."""
        return torch.stack(list(self.frames(labels)), dim=1)


def pick_device(name: str = "auto") -> str:
    """``auto``: the first GPU when there is one, else the CPU; anything else as given."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def to_uint8(image: Tensor) -> Tensor:
    """[B, 3, H, W] in [-1, 1] -> uint8 [B, H, W, 3]."""
    return ((image.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)
