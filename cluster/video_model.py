"""The generator as a video model: label video in, RGB video out, any batch, length and (divisible) size.

What ``vid2vid generate`` and ``eval`` run, and what the registered model (``cluster/pyfunc_model.py``)
wraps: ``labels`` float32 [B, T, C, H, W] (one-hot classes, then the instance-edge channel when the
model has one: what the training loader produces), result uint8 [B, T, H, W, 3] RGB.

Why a model from code and not MLflow's default ``pt2`` (torch.export): the generator is sequential,
frame t reads the outputs of frames t-L..t-1, so its forward is a Python loop over T. torch.export
unrolls that loop for the example's length and the loaded model accepts no other; the signature could
not keep T dynamic. Versions published before models from code pickled this module.
"""
from __future__ import annotations

from typing import Iterable, Iterator

import torch
from torch import Tensor, nn

from dataio.labels import LabelSpec
from models.generator import Generator, Rollout

WEIGHTS_ARTIFACT = "weights"
CONFIG_ARTIFACT = "config"
"""The registered model's artifacts: the state dict file and the JSON description."""


class VideoGenerator(nn.Module):
    def __init__(self, generator: Generator, labels: LabelSpec) -> None:
        super().__init__()
        if labels.channels != generator.label_channels:
            raise ValueError(f"label spec {labels} gives {labels.channels} channels, the generator takes "
                             f"{generator.label_channels}")
        self.generator = generator.eval()
        self.labels = labels
        """How label maps are read and encoded for this generator (stored with the training export)."""

    def __setstate__(self, state: dict) -> None:
        # Models published before the label spec was stored pickled num_classes and label_kind instead.
        if "labels" not in state and "num_classes" in state:
            kind, classes = state.pop("label_kind", "classes"), state.pop("num_classes")
            channels = state["_modules"]["generator"].label_channels
            state["labels"] = LabelSpec(classes, kind, has_edges=channels > (3 if kind == "rgb" else classes))
        super().__setstate__(state)

    @property
    def num_classes(self) -> int:
        return self.labels.num_classes

    @property
    def label_kind(self) -> str:
        """``classes`` (one-hot) or ``rgb`` (3-channel renderings in [0, 1])."""
        return self.labels.kind

    @property
    def label_channels(self) -> int:
        return self.generator.label_channels

    @property
    def has_edges(self) -> bool:
        return self.labels.has_edges

    @property
    def divisor(self) -> int:
        """Height and width must be multiples of this."""
        return self.generator.divisor()

    def images(self, labels: Tensor) -> Iterator[Tensor]:
        """Frame by frame: float [B, 3, H, W] in [-1, 1] for each t of ``labels`` [B, T, C, H, W]."""
        return self.stream(labels.unbind(dim=1))

    def stream(self, labels: Iterable[Tensor]) -> Iterator[Tensor]:
        """Frame by frame from label frames [B, C, H, W] as they come (float, or uint8 0/1 planes from
        ``LabelSpec.encode(compact=True)``): float [B, 3, H, W] in [-1, 1].

        Only the last L+1 label frames and L outputs are kept (what the generator reads), so memory
        does not grow with the video; ``vid2vid eval`` scores these, ``generate`` and pyfunc serve
        them as uint8.
        """
        param = next(self.generator.parameters())
        rollout = Rollout(self.generator)
        with torch.no_grad():
            for frame in labels:
                # Compact uint8 label planes stay compact: the generator converts what it reads.
                yield rollout.step(frame.to(param.device, None if frame.dtype == torch.uint8 else param.dtype)).image

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
