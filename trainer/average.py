"""A running average of the generator's weights: what is evaluated, sampled and exported.

A GAN generator's weights swing from update to update (the discriminator it chases moves too), and so
does what it makes: consecutive held-out scores of one run differed by 50% and more. The average of
recent weights (imaginaire's "model average", a standard of GAN training since Karras et al. 2018)
makes steadier and better frames. After every generator update:

    average = beta * average + (1 - beta) * weights,    beta = min(train.weight_average, (1 + n) / (10 + n))

with n the updates averaged so far, so a young average follows the weights closely and an old one
spans about ``1 / (1 - train.weight_average)`` updates. It restarts from the current weights when the
generator's trainable scales change (a new scale would otherwise be averaged with its random start).

Every rank keeps the same average (ZeRO 0-2 give every rank the full weights after an update); rank 0
writes it into each checkpoint as ``average.pt`` (plain tensors), so a resumed run continues it exactly.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from trainer import distributed as dist

AVERAGE_FILE = "average.pt"


class WeightAverage:
    def __init__(self, decay: float) -> None:
        self.decay = decay
        self.updates = 0
        self.shadow: dict[str, torch.Tensor] = {}

    @property
    def enabled(self) -> bool:
        return self.decay > 0

    def reset(self, module: nn.Module) -> None:
        """Start again from ``module``'s current weights."""
        if self.enabled:
            self.shadow = {name: value.detach().float().clone() for name, value in module.state_dict().items()}
            self.updates = 0

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        """Fold ``module``'s weights in (after a generator update)."""
        if not self.enabled:
            return
        if not self.shadow:
            self.reset(module)
        beta = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for name, value in module.state_dict().items():
            average = self.shadow[name]
            if value.is_floating_point():
                average.lerp_(value.float(), 1 - beta)
            else:
                average.copy_(value)  # counters such as BatchNorm's num_batches_tracked
        self.updates += 1

    @contextmanager
    def applied(self, module: nn.Module) -> Iterator[nn.Module]:
        """``module`` holding the average for the block, its own weights back afterwards."""
        if not self.enabled or not self.shadow:
            yield module
            return
        own = {name: value.detach().clone() for name, value in module.state_dict().items()}
        module.load_state_dict({name: value.to(own[name].dtype) for name, value in self.shadow.items()})
        try:
            yield module
        finally:
            module.load_state_dict(own)

    def save(self, folder: Path) -> None:
        if self.enabled and dist.is_main():
            torch.save({"updates": self.updates, "decay": self.decay, "state_dict": self.shadow},
                       folder / AVERAGE_FILE)

    def load(self, folder: Path, module: nn.Module) -> None:
        """The checkpoint's average, or (an older checkpoint without one) a fresh start from ``module``."""
        path = Path(folder) / AVERAGE_FILE
        if not self.enabled:
            return
        if not path.is_file():
            self.reset(module)
            return
        saved = torch.load(path, map_location="cpu", weights_only=True)
        # Where the module's own tensors are (a GPU): ``update`` folds them into the average in place.
        own = module.state_dict()
        self.shadow = {name: value.to(own[name].device) for name, value in saved["state_dict"].items()}
        self.updates = saved["updates"]


def averaged_state(checkpoint: str | Path) -> dict[str, torch.Tensor] | None:
    """The generator's averaged fp32 weights in checkpoint folder ``checkpoint``, None without them."""
    path = Path(checkpoint) / AVERAGE_FILE
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
