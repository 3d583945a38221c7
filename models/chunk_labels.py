"""What the label maps alone give the generator, computed once for every frame of a chunk.

The sequential generator makes frame t from frame t-1's output, so most of its work waits on the frame
before. Not all: each scale's label encoder reads only label maps, and so does every SPADE's gamma and
beta. The trainer generates a chunk of frames between two weight updates; for those frames this work
is one convolution call per layer for the whole chunk instead of one per frame (on a GPU a launch per
layer and frame saved, on the CPU oneDNN's fixed cost per call).

The results are the ones a pass per frame gives where the generator treats every sample on its own
(``models.config.per_sample``: no batch norm, no spectral norm), and only while the weights stay as
they were: a ``ChunkLabels`` lives for one chunk's forward pass.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Hashable, Sequence

from torch import Tensor, nn

if TYPE_CHECKING:
    from models.spade import SPADE


class ChunkLabels:
    """The label stacks of a chunk's frames [B, f, n, C, H, W] (frame t's: the labels of t-n+1..t, as
    ``Rollout.step`` reads them) and what is computed from them, frame-major ([f * B, ...]: a frame's
    share is a contiguous slice)."""

    def __init__(self, stacks: Tensor) -> None:
        self.batch, self.frames = stacks.shape[:2]
        self.stacks = stacks.transpose(0, 1).flatten(0, 1)
        self._done: dict[Hashable, Tensor] = {}

    def once(self, key: Hashable, compute: Callable[[], Tensor]) -> Tensor:
        """``compute()`` over every frame, the first time ``key`` is asked for; kept for the others."""
        if key not in self._done:
            self._done[key] = compute()
        return self._done[key]

    def rows(self, frame: int, x: Tensor) -> Tensor:
        """Frame ``frame``'s share [B, ...] of ``x`` [f * B, ...]."""
        return x[frame * self.batch:(frame + 1) * self.batch]

    def frame(self, index: int) -> FrameLabels:
        if not 0 <= index < self.frames:
            raise IndexError(f"frame {index} of a chunk of {self.frames}")
        return FrameLabels(self, index)


class FrameLabels:
    """One frame of a ``ChunkLabels``: what ``Generator.forward(..., chunk=...)`` takes."""

    def __init__(self, chunk: ChunkLabels, index: int) -> None:
        self.chunk, self.index = chunk, index

    def pooled(self, factor: int, pool: Callable[[Tensor, int], Tensor]) -> ScaleLabels:
        """The frame at the scale that sees the labels ``pool``-ed ``factor`` times smaller."""
        chunk = self.chunk
        return ScaleLabels(self, chunk.once(("stacks", factor), lambda: pool(chunk.stacks.flatten(1, 2), factor)),
                           chunk.once(("cond", factor), lambda: pool(chunk.stacks[:, -1], factor)))


class ScaleLabels:
    """One frame's label maps at one scale, and the label-side results of that scale's layers."""

    def __init__(self, frame: FrameLabels, stacks: Tensor, cond: Tensor) -> None:
        self._chunk, self._index = frame.chunk, frame.index
        self._stacks, self._cond = stacks, cond

    @property
    def stacks(self) -> Tensor:
        """The frame's label input [B, n * C, h, w]."""
        return self._chunk.rows(self._index, self._stacks)

    @property
    def cond(self) -> Tensor:
        """The frame's current label map [B, C, h, w]."""
        return self._chunk.rows(self._index, self._cond)

    def encoded(self, encoder: nn.Module) -> Tensor:
        """``encoder`` (which reads the label input alone) on this frame's label input."""
        return self._chunk.rows(self._index, self._chunk.once(encoder, lambda: encoder(self._stacks)))

    def modulation(self, spade: SPADE, size: Sequence[int]) -> Tensor:
        """``spade``'s gamma and beta for this frame at ``size`` (``SPADE.modulation``)."""
        return self._chunk.rows(self._index, self._chunk.once((spade, tuple(size)),
                                                             lambda: spade.modulation(self._cond, size)))
