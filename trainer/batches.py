"""The batches every rank trains: ranks stop together when any runs out of data or of time, and each
batch is made ready (on the device, its label flow computed) while the one before trains.

Shards can split unevenly across ranks, and each rank reads its own clock; a rank that stopped alone
would leave the others waiting in the next collective. So before each batch the ranks all-reduce two
flags (have a batch, still in time) with MIN and all take the same way out.
"""
from __future__ import annotations

import dataclasses
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Iterable, Iterator

import torch

from models.label_flow import clip_label_flows
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


def prepared(batches: Iterable[Any], device: torch.device, label_flow: bool, skip: int = 0) -> Iterator[Any]:
    """``batches`` (``ClipBatch``) on ``device``, with the flow prior of their label maps
    (``ClipBatch.label_flow``) where ``label_flow``: each made ready in a thread of its own while the
    caller trains on the one before. The first ``skip`` (a resumed epoch's, trained before the
    checkpoint) pass through as they are.

    The label flow is OpenCV's on the host (``models/label_flow.py``: 14 ms per 512x256 pair on one core,
    about 0.17 s for 4 clips of 4 frames): inside the step, a GPU would wait for it every step. OpenCV
    releases the GIL while it computes, so the caller's Python keeps launching work meanwhile. For a GPU
    step: on the CPU the step's own threads take every core, and this one beside them slows it.
    """
    def prepare(batch):
        flows = clip_label_flows(batch.labels) if label_flow else None
        batch = on_device(batch, device)
        return batch if flows is None else dataclasses.replace(batch, label_flow=flows.to(device))
    items = iter(batches)
    pool = ThreadPoolExecutor(1, thread_name_prefix="next-batch")
    try:
        for _ in range(skip):
            batch = next(items, None)
            if batch is None:
                return
            yield batch
        pending: Future | None = None
        for batch in items:
            upcoming = pool.submit(prepare, batch)
            if pending is not None:
                yield pending.result()
            pending = upcoming
        if pending is not None:
            yield pending.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        close = getattr(items, "close", None)
        if close is not None:
            close()
