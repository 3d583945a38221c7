"""Pieces of the training loop that need no engines: where collectives' tensors live, what a save
writes, what the export is told."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as tdist
from torch import nn

from dataio.labels import LabelSpec
from trainer import batches, checkpoint, distributed, export, step
from trainer.average import AVERAGE_FILE, WeightAverage
from trainer.config import load
from trainer.config_tree import to_dict
from trainer.schedule import Stage

REPO = Path(__file__).resolve().parents[3]


class _ReachedCollective(Exception):
    pass


@pytest.fixture
def two_ranks_on_meta(monkeypatch: pytest.MonkeyPatch) -> list[torch.device]:
    """Two ranks whose device is ``meta`` (any device but the CPU): records the device of every tensor
    handed to ``all_reduce``, then stops (no process group exists)."""
    seen: list[torch.device] = []

    def all_reduce(tensor, op=None):
        seen.append(tensor.device)
        raise _ReachedCollective

    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    monkeypatch.setattr(distributed, "device", lambda: torch.device("meta"))
    monkeypatch.setattr(tdist, "all_reduce", all_reduce)
    return seen


def test_collectives_use_the_rank_device(two_ranks_on_meta: list[torch.device]) -> None:
    """NCCL refuses CPU tensors: the flags ranks reduce must live on ``distributed.device()``."""
    with pytest.raises(_ReachedCollective):
        step._read({"g/total": torch.tensor(1.0), "d/total": torch.tensor(float("nan"))})
    with pytest.raises(_ReachedCollective):
        next(batches.agreed_batches([object()], limit=0))
    assert two_ranks_on_meta == [torch.device("meta")] * 2


class _Engines:
    """Two tiny modules standing in for the DeepSpeed engines; counts the engine writes."""

    def __init__(self) -> None:
        self.generator = SimpleNamespace(module=nn.Linear(2, 2))
        self.discriminator = SimpleNamespace(module=nn.Linear(2, 1))
        self.writes = 0

    def save(self, folder: Path) -> None:
        self.writes += 1
        (folder / "generator").mkdir()
        torch.save(self.generator.module.state_dict(), folder / "generator" / "model.pt")


def test_epoch_end_save_of_a_saved_step_does_not_rewrite_the_engines(tmp_path: Path) -> None:
    cfg = load(REPO / "configs" / "tiny_train.yaml", [f"checkpoint.dir={tmp_path}", "checkpoint.keep=3"])
    saver = checkpoint.Checkpointer(cfg.checkpoint, to_dict(cfg))
    engines, progress, stage = _Engines(), checkpoint.Progress(), Stage(0, 16, 32, 2, True)
    average = WeightAverage(0.5)
    average.reset(torch.nn.Linear(2, 2))
    progress.epoch, progress.batch, progress.step = 0, 2, 4
    saver.save(progress, stage, engines, average, {})  # the periodic save at the epoch's last batch
    progress.epoch, progress.batch = 1, 0
    saver.save(progress, stage, engines, average, {})  # the epoch-end save: same step, only the position moved
    assert engines.writes == 1
    assert [p.name for p in checkpoint.complete_checkpoints(tmp_path)] == ["step-000000004"]
    saved = checkpoint.load_trainer_state(saver.last)["progress"]
    assert (saved["epoch"], saved["batch"], saved["step"]) == (1, 0, 4)
    assert (saver.last / "generator" / "model.pt").is_file()
    assert (saver.last / AVERAGE_FILE).is_file()  # the weight average goes with the engines
    progress.step = 6  # trained on: the engines are written again
    saver.save(progress, stage, engines, average, {})
    assert engines.writes == 2


def test_export_takes_the_scales_of_the_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The last save may predate a stage change; the export must describe the saved weights."""
    cfg = load(REPO / "configs" / "tiny_train.yaml", [f"checkpoint.dir={tmp_path}"])
    folder = checkpoint.save(tmp_path, 3, {"stage": {"scale": 0}}, lambda f: None, keep=1)
    told: dict = {}
    monkeypatch.setattr(export, "export_generator", lambda *a, **kw: told.update(kw))
    export.export_run(cfg, folder, LabelSpec(8, has_edges=True))
    assert told["active_scales"] == 1

