"""The batches every rank trains: ranks stop together when any runs out of data or of time.

Shards can split unevenly across ranks, and each rank reads its own clock; a rank that stopped alone
would leave the others waiting in the next collective. So before each batch the ranks all-reduce two
flags (have a batch, still in time) with MIN and all take the same way out.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Iterable, Iterator

import torch

from trainer import distributed as dist


class TimeBudget:
    """``train.time_budget_s`` of wall-clock training; ``over()`` is this rank's clock, ``spent`` is set
    once the ranks agreed to stop for it. Time spent outside training (held-out evaluation) is handed
    back with ``exclude``, so the budget and ``elapsed`` count training alone."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.deadline: float | None = None
        self.spent = False
        self._started: float | None = None
        self._excluded = 0.0

    def start(self) -> None:
        self._started = time.monotonic()
        if self.seconds:
            self.deadline = self._started + self.seconds

    def over(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def exclude(self, seconds: float) -> None:
        """Do not count ``seconds`` just spent on something other than training."""
        self._excluded += seconds
        if self.deadline is not None:
            self.deadline += seconds

    def elapsed(self) -> float:
        """Seconds of training since ``start``."""
        return 0.0 if self._started is None else time.monotonic() - self._started - self._excluded


def agreed_batches(loader: Iterable[Any], limit: int, budget: TimeBudget | None = None) -> Iterator[Any]:
    """The loader's batches while every rank still has one, up to ``limit`` (0: the whole epoch), until
    any rank's clock says the time budget is over (then ``budget.spent`` on every rank).

    An epoch whose data ends as the time runs out ends as an epoch (not as a stop mid-epoch): the
    caller's check before the next epoch stops the run, and a resume starts at the next epoch.
    """
    batches = iter(loader)
    count = 0
    try:
        while not limit or count < limit:
            batch = next(batches, None)
            in_time = budget is None or not budget.over()
            flags = torch.tensor([batch is not None, in_time], dtype=torch.int32, device=dist.device())  # NCCL: no CPU tensors
            have, in_time = dist.all_reduce_min(flags).tolist()
            if not have:
                return
            if not in_time:
                budget.spent = True
                return
            count += 1
            yield batch
    finally:
        close = getattr(batches, "close", None)
        if close is not None:
            close()


def on_device(batch, device: torch.device):
    """``batch`` (a ``ClipBatch``) with its tensors on ``device``."""
    if batch.rgb.device == device:
        return batch
    return dataclasses.replace(batch, rgb=batch.rgb.to(device), labels=batch.labels.to(device),
                               flow=batch.flow.to(device), flow_conf=batch.flow_conf.to(device))
