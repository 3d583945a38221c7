"""Atomic checkpoints: keep-last-K, weights-only loading, and a process killed in the middle of a save."""
from __future__ import annotations

import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
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


def test_resuming_with_other_networks_is_refused_by_name(tmp_path: Path) -> None:
    from trainer.config import Config
    from trainer.config_tree import to_dict
    config = to_dict(Config())
    folder = checkpoint.save(tmp_path, 10, {"config": config}, write_engines, keep=1)
    changed = to_dict(Config())
    changed["train"]["generator"]["lr"] = 1e-4  # not the networks
    changed["model"]["generator"]["flow_multiplier"] *= 2  # a network setting that shapes no weight
    del changed["model"]["generator"]["first_frame"]  # a setting this config lacks: its default
    checkpoint.check_resumable(folder, changed, label_channels=9)
    changed["model"]["generator"]["ngf"] = 32
    with pytest.raises(checkpoint.OtherNetworksError, match=r"step-000000010 holds networks of other shapes than "
                                                           r"the config describes \(model.generator.flow_multiplier="
                                                           r".*; model.generator.ngf=16 there, 32 here\): resume"):
        checkpoint.check_resumable(folder, changed, label_channels=9)


def scored(step: int, psnr: float, at: int | None = None) -> dict:
    """A trainer state whose held-out scores were taken at step ``at`` (its own step by default)."""
    return {"progress": {"step": step, "eval": {"eval/psnr": psnr, "eval/warp_ratio": 10.0 - psnr,
                                                "eval/step": step if at is None else at}}}


def test_the_best_scored_checkpoint_outlives_newer_ones(tmp_path: Path) -> None:
    """keep=2 with keep_best: the newest two plus the best by its own recorded score; scores carried
    from an earlier step (a checkpoint saved without scoring) do not count for it."""
    for step, psnr, at in ((10, 20.0, None), (20, 25.0, None), (30, 21.0, None), (40, 25.0, 20), (50, 22.0, None)):
        checkpoint.save(tmp_path, step, scored(step, psnr, at), write_engines, keep=2, keep_best="eval/psnr")
    assert [p.name for p in checkpoint.complete_checkpoints(tmp_path)] == [
        "step-000000020", "step-000000040", "step-000000050"]
    best, scores = checkpoint.best_checkpoint(tmp_path, "eval/psnr")
    assert best.name == "step-000000020" and scores["eval/psnr"] == 25.0
    assert checkpoint.best_checkpoint(tmp_path, "eval/warp_ratio")[0].name == "step-000000020"  # lower is better
    assert checkpoint.best_checkpoint(tmp_path, "eval/ssim") is None


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


def test_crash_while_replacing_a_step_keeps_the_old_copy(tmp_path: Path, monkeypatch) -> None:
    """Re-saving a step (epoch-end save of a periodic save's step): a crash between moving the old copy
    out and the new one in must leave that step loadable, and the next save puts it back."""
    checkpoint.save(tmp_path, 100, {"epoch": 3}, write_engines, keep=3)
    real_replace = checkpoint.os.replace

    def crash_on_seal(src, dst):
        if Path(src).name.startswith(".partial-") and Path(dst).name == "step-000000100":
            raise KeyboardInterrupt("simulated crash")
        real_replace(src, dst)

    monkeypatch.setattr(checkpoint.os, "replace", crash_on_seal)
    with pytest.raises(KeyboardInterrupt, match="simulated crash"):  # the crash did happen
        checkpoint.save(tmp_path, 100, {"epoch": 4}, write_engines, keep=3)
    monkeypatch.setattr(checkpoint.os, "replace", real_replace)
    latest = checkpoint.latest_checkpoint(tmp_path)
    assert latest is not None and checkpoint.load_trainer_state(latest) == {"epoch": 3}
    assert torch.equal(torch.load(latest / "generator" / "model.pt", weights_only=True)["w"], torch.arange(4.0))
    checkpoint.save(tmp_path, 110, {"epoch": 5}, write_engines, keep=3)
    assert [p.name for p in checkpoint.complete_checkpoints(tmp_path)] == ["step-000000100", "step-000000110"]
    assert checkpoint.load_trainer_state(tmp_path / "step-000000100") == {"epoch": 3}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step-000000100", "step-000000110"]


def test_crash_after_replacing_a_step_uses_the_new_copy(tmp_path: Path, monkeypatch) -> None:
    checkpoint.save(tmp_path, 100, {"epoch": 3}, write_engines, keep=3)
    real_rmtree = checkpoint.shutil.rmtree

    def crash_on_old(path, *args, **kwargs):
        if Path(path).name.startswith(".old-") and Path(path).exists():
            raise KeyboardInterrupt("simulated crash")
        real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(checkpoint.shutil, "rmtree", crash_on_old)
    with pytest.raises(KeyboardInterrupt, match="simulated crash"):  # the crash did happen
        checkpoint.save(tmp_path, 100, {"epoch": 4}, write_engines, keep=3)
    monkeypatch.setattr(checkpoint.shutil, "rmtree", real_rmtree)
    assert [p.name for p in checkpoint.complete_checkpoints(tmp_path)] == ["step-000000100"]
    assert checkpoint.load_trainer_state(checkpoint.latest_checkpoint(tmp_path)) == {"epoch": 4}
    checkpoint.save(tmp_path, 110, {"epoch": 5}, write_engines, keep=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step-000000100", "step-000000110"]
    assert checkpoint.load_trainer_state(tmp_path / "step-000000100") == {"epoch": 4}


def test_crash_mid_prune_leaves_no_half_deleted_checkpoint(tmp_path: Path, monkeypatch) -> None:
    checkpoint.save(tmp_path, 10, {"step": 10}, write_engines, keep=1)
    real_rmtree = checkpoint.shutil.rmtree

    def dies_half_way(path, *args, **kwargs):
        engine = Path(path) / "generator" / "model.pt"
        if engine.exists():  # the folder being pruned: its engine file goes, then the process dies
            engine.unlink()
            raise KeyboardInterrupt("simulated crash")
        real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(checkpoint.shutil, "rmtree", dies_half_way)
    with pytest.raises(KeyboardInterrupt, match="simulated crash"):  # the crash did happen
        checkpoint.save(tmp_path, 20, {"step": 20}, write_engines, keep=1)
    monkeypatch.setattr(checkpoint.shutil, "rmtree", real_rmtree)
    assert [p.name for p in checkpoint.complete_checkpoints(tmp_path)] == ["step-000000020"]
    checkpoint.save(tmp_path, 30, {"step": 30}, write_engines, keep=1)  # clears what the crash left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step-000000030"]


def test_reused_engine_files_are_linked_not_rewritten(tmp_path: Path) -> None:
    first = checkpoint.save(tmp_path, 5, {"epoch": 0, "batch": 2}, write_engines, keep=2)
    inode = (first / "generator" / "model.pt").stat().st_ino
    again = checkpoint.save(tmp_path, 5, {"epoch": 1, "batch": 0}, checkpoint.reuse_engine_files(first), keep=2)
    assert again == first and checkpoint.load_trainer_state(again) == {"epoch": 1, "batch": 0}
    assert (again / "generator" / "model.pt").stat().st_ino == inode
    assert torch.equal(torch.load(again / "generator" / "model.pt", weights_only=True)["w"], torch.arange(4.0))
    assert (again / "rng-rank0.pt").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step-000000005"]


def test_a_disk_too_full_for_the_next_checkpoint_is_refused_before_writing(tmp_path: Path, monkeypatch) -> None:
    checkpoint.save(tmp_path, 1, {"step": 1}, write_engines, keep=3)
    real = checkpoint.shutil.disk_usage
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda p: real(p)._replace(free=100))
    assert checkpoint.space_shortage(tmp_path).startswith(f"no space left on {tmp_path}: 0 MB free, a checkpoint "
                                                          "needs about 1 MB")
    with pytest.raises(checkpoint.CheckpointSpaceError, match="no space left on"):
        checkpoint.save(tmp_path, 2, {"step": 2}, write_engines, keep=3)
    assert not list(tmp_path.glob(".partial-*"))
    assert [p.name for p in checkpoint.complete_checkpoints(tmp_path)] == ["step-000000001"]


@pytest.mark.parametrize("failure", [
    OSError(28, "No space left on device"),
    RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 7040 vs 6932"),  # torch.save's
])
def test_a_disk_filling_up_mid_save_removes_the_partial_folder(tmp_path: Path, failure: Exception) -> None:
    checkpoint.save(tmp_path, 1, {"step": 1}, write_engines, keep=3)

    def fills_the_disk(folder: Path) -> None:
        write_engines(folder)
        raise failure

    with pytest.raises(checkpoint.CheckpointSpaceError, match=f"no space left on {tmp_path} while writing "
                                                              "checkpoint step-000000002: [0-9]+ MB free, a checkpoint needs "
                                                              "more than that"):
        checkpoint.save(tmp_path, 2, {"step": 2}, fills_the_disk, keep=3)
    assert not list(tmp_path.glob(".partial-*"))
    assert checkpoint.load_trainer_state(checkpoint.latest_checkpoint(tmp_path)) == {"step": 1}


def test_other_save_errors_are_not_called_a_full_disk(tmp_path: Path) -> None:
    def broken(folder: Path) -> None:
        raise RuntimeError("something else")

    with pytest.raises(RuntimeError, match="something else") as caught:
        checkpoint.save(tmp_path, 1, {"step": 1}, broken, keep=3)
    assert not isinstance(caught.value, checkpoint.CheckpointSpaceError)
