"""The batches ranks agree on (the time budget stops every rank at the same batch), each made ready
while the one before trains."""
from __future__ import annotations

import threading
from pathlib import Path

import torch
import torch.distributed as tdist
import torch.multiprocessing as mp
from tiny_training import clips

import trainer.batches as batches_module
from models.label_flow import clip_label_flows
from trainer.batches import TimeBudget, agreed_batches, prepared


def test_time_budget_stops_the_batches_and_says_so() -> None:
    unlimited = TimeBudget(0)
    unlimited.start()
    assert list(agreed_batches(range(5), limit=0, budget=unlimited)) == [0, 1, 2, 3, 4]
    assert not unlimited.spent

    budget = TimeBudget(3600)
    budget.start()
    taken = []
    for batch in agreed_batches(range(10), limit=0, budget=budget):
        taken.append(batch)
        if batch == 2:
            budget.deadline = 0.0  # the clock passes the deadline during batch 2
    assert taken == [0, 1, 2] and budget.spent

    assert list(agreed_batches(range(10), limit=4, budget=TimeBudget(3600))) == [0, 1, 2, 3]


def test_an_epoch_that_ends_as_time_runs_out_ends_as_an_epoch() -> None:
    budget = TimeBudget(3600)
    budget.start()
    for batch in agreed_batches(range(3), limit=0, budget=budget):
        if batch == 2:
            budget.deadline = 0.0  # over, but the loader has nothing left either
    assert not budget.spent  # the epoch ended normally; the loop's check before the next epoch stops


def _rank(rank: int, store: str, out: str) -> None:
    tdist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    budget = TimeBudget(3600)
    budget.start()
    taken = []
    for batch in agreed_batches(range(10), limit=0, budget=budget):
        taken.append(batch)
        if rank == 1 and batch == 3:
            budget.deadline = 0.0  # only rank 1's clock passes the deadline
    Path(out, f"rank{rank}").write_text(f"{taken} {budget.spent}")
    tdist.destroy_process_group()


def test_ranks_stop_together_when_one_clock_runs_out(tmp_path: Path) -> None:
    mp.spawn(_rank, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    assert (tmp_path / "rank0").read_text() == (tmp_path / "rank1").read_text() == "[0, 1, 2, 3] True"


def test_each_batch_is_made_ready_while_the_one_before_trains(monkeypatch) -> None:
    """``prepared``: batches in order, each with its label flow (the same as the step computes), the next
    taken from the loader and prepared before the caller gets the current; a resumed epoch's first
    batches pass through untouched; closing stops the loader."""
    made = [clips(frames=3, height=16, width=32) for _ in range(4)]
    taken, threads, closed = [], set(), []

    def loader():
        try:
            for index, batch in enumerate(made):
                taken.append(index)
                yield batch
        finally:
            closed.append(True)

    def flows(labels):
        threads.add(threading.current_thread().name)
        return clip_label_flows(labels)
    monkeypatch.setattr(batches_module, "clip_label_flows", flows)
    got = prepared(loader(), torch.device("cpu"), label_flow=True, skip=1)
    first = next(got)
    assert first is made[0] and first.label_flow is None and taken == [0]  # trained before: untouched
    second = next(got)
    assert taken == [0, 1, 2]  # the third was taken (and its flow started) before the second came back
    assert torch.equal(second.label_flow, clip_label_flows(made[1].labels))
    assert second.label_flow.shape == (1, 2, 2, 16, 32) and torch.equal(second.rgb, made[1].rgb)
    assert threads and threading.current_thread().name not in threads
    got.close()
    assert closed == [True]
    plain = list(prepared(iter(made), torch.device("cpu"), label_flow=False))
    assert [b.label_flow for b in plain] == [None] * 4 and all(p.rgb is m.rgb for p, m in zip(plain, made))
