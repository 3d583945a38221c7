"""A tiny model, a clip and an engine with a real optimizer: the trainer's step on plain modules, for
tests that compare two ways of running it (eager and compiled, a pass per set and merged passes)."""
from __future__ import annotations

import torch
from torch import nn

from dataio.batch import ClipBatch
from models.config import DiscriminatorConfig, GeneratorConfig, ModelConfig

CHANNELS = 4
TINY = ModelConfig(generator=GeneratorConfig(ngf=8, n_downsample=1, n_blocks=2, spade_hidden=8),
                   discriminator=DiscriminatorConfig(ndf=8, n_layers=1, num_D=1, temporal_scales=1))


class AdamEngine:
    """What ``train_batch`` asks of a DeepSpeed engine, with a real optimizer: the second step sees
    the first step's gradients through the updated weights."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.optimizer = torch.optim.Adam(module.parameters(), lr=1e-3, betas=(0.5, 0.999))

    def __call__(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> None:
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def clips(frames: int, height: int, width: int) -> ClipBatch:
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, CHANNELS, (1, frames, height, width), generator=generator)
    # A label map that moves: the flow prior (OpenCV, eager between the compiled scales) has work to do.
    ids[:, :, height // 4:height // 2, :] = 1
    for t in range(frames):
        ids[:, t, :, t:t + width // 4] = 2
    return ClipBatch(rgb=torch.rand(1, frames, 3, height, width, generator=generator) * 2 - 1,
                     labels=nn.functional.one_hot(ids, CHANNELS).permute(0, 1, 4, 2, 3).float(),
                     flow=torch.randn(1, frames, 2, height, width, generator=generator),
                     flow_conf=torch.rand(1, frames, 1, height, width, generator=generator),
                     keys=["clip"], draws=[])
