"""Atomic checkpoints: keep-last-K, weights-only loading, and a process killed in the middle of a save."""
from __future__ import annotations

import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

from trainer import checkpoint

REPO = Path(__file__).resolve().parents[3]


def write_engines(folder: Path) -> None:
    (folder / "generator").mkdir()
    torch.save({"w": torch.arange(4.0)}, folder / "generator" / "model.pt")


def test_save_keeps_last_k_and_points_latest(tmp_path: Path) -> None:
    for step in (10, 20, 30, 40):
        checkpoint.save(tmp_path, step, {"step": step, "config": {"a": [1, 2]}}, write_engines, keep=2)
    names = [p.name for p in checkpoint.complete_checkpoints(tmp_path)]
    assert names == ["step-000000030", "step-000000040"]
    assert (tmp_path / "latest").read_text().strip() == "step-000000040"
    assert not list(tmp_path.glob(".partial-*"))
    state = checkpoint.load_trainer_state(checkpoint.latest_checkpoint(tmp_path))
    assert state == {"step": 40, "config": {"a": [1, 2]}}


def test_rng_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(3)
    random.seed(3)
    folder = checkpoint.save(tmp_path, 1, {"step": 1}, write_engines, keep=1)
    expected = (torch.rand(3), random.random())
    torch.manual_seed(99)
    random.seed(99)
    checkpoint.restore_rng(folder)
    got = (torch.rand(3), random.random())
    assert torch.equal(got[0], expected[0]) and got[1] == expected[1]


CRASHING_SAVE = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    import torch
    sys.path.insert(0, {repo!r})
    from trainer import checkpoint
    root = Path({root!r})

    def good(folder):
        torch.save({{"w": torch.ones(3)}}, folder / "engine.pt")

    def dies_half_way(folder):
        torch.save({{"w": torch.zeros(1000)}}, folder / "engine.pt")
        os.kill(os.getpid(), signal.SIGKILL)  # a real crash: no cleanup, no finally blocks

    checkpoint.save(root, 1, {{"step": 1}}, good, keep=3)
    checkpoint.save(root, 2, {{"step": 2}}, dies_half_way, keep=3)
""")


def test_crash_mid_save_leaves_last_good_checkpoint(tmp_path: Path) -> None:
    script = CRASHING_SAVE.format(repo=str(REPO), root=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert (tmp_path / ".partial-step-000000002" / "engine.pt").exists()  # the crash left debris
    latest = checkpoint.latest_checkpoint(tmp_path)
    assert latest is not None and latest.name == "step-000000001"
    assert checkpoint.load_trainer_state(latest) == {"step": 1}
    assert torch.equal(torch.load(latest / "engine.pt", weights_only=True)["w"], torch.ones(3))
    # The next save completes and clears the debris.
    checkpoint.save(tmp_path, 3, {"step": 3}, write_engines, keep=3)
    assert [p.name for p in checkpoint.complete_checkpoints(tmp_path)] == ["step-000000001", "step-000000003"]
    assert not list(tmp_path.glob(".partial-*"))


def test_missing_root_has_no_checkpoint(tmp_path: Path) -> None:
    assert checkpoint.latest_checkpoint(tmp_path / "nope") is None
