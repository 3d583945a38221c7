"""The batches ranks agree on: the time budget stops every rank at the same batch."""
from __future__ import annotations

from pathlib import Path

import torch.distributed as tdist
import torch.multiprocessing as mp

from trainer.batches import TimeBudget, agreed_batches


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
