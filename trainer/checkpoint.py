"""Atomic checkpoints: a checkpoint folder is complete or it does not exist.

Layout under ``root``::

    step-000000120/            one complete checkpoint (the name orders them)
        generator/ discriminator/   each engine's DeepSpeed files (every rank writes its shards)
        trainer.pt             epoch, step, stage, data position, the resolved config (rank 0)
        rng-rank0.pt ...       each rank's RNG states (ranks draw different noise)
    latest                     the newest complete name, for people and tools
    .partial-step-000000130/   a save in progress, or what a crash left behind

Every rank writes into the ``.partial-`` folder; when all have finished, rank 0 renames it to its final
name. A rename within one file system is atomic, so readers (and a resumed run) only ever see complete
checkpoints; a crash mid-save leaves a ``.partial-`` folder that the next save deletes. Loading looks
for the highest complete ``step-*`` folder, so it does not depend on ``latest`` having been written.
"""
from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path
from typing import Any, Callable

import torch

from trainer import distributed as dist

_NAME = re.compile(r"^step-(\d{9})$")
TRAINER_FILE = "trainer.pt"


def checkpoint_name(step: int) -> str:
    return f"step-{step:09d}"


def complete_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _NAME.match(p.name) and (p / TRAINER_FILE).is_file()]
    return sorted(found, key=lambda p: p.name)


def latest_checkpoint(root: str | Path) -> Path | None:
    found = complete_checkpoints(root)
    return found[-1] if found else None


def save(root: str | Path, step: int, trainer_state: dict[str, Any],
         write_engines: Callable[[Path], None], keep: int) -> Path:
    """Write checkpoint ``step`` (call on every rank); returns its final folder.

    ``write_engines(folder)`` is called on every rank and must write that rank's engine files there.
    ``trainer_state`` (rank 0's is written) must hold only what ``torch.load(weights_only=True)``
    accepts: tensors, numbers, strings, lists, tuples, dicts.
    """
    root = Path(root)
    final = root / checkpoint_name(step)
    staging = root / f".partial-{final.name}"
    if dist.is_main():
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(staging, ignore_errors=True)  # a crashed save of the same step
        staging.mkdir()
    dist.barrier()
    write_engines(staging)
    _write(staging / f"rng-rank{dist.rank()}.pt", rng_state())
    dist.barrier()  # every rank's shards are on disk before rank 0 seals the folder
    if dist.is_main():
        _write(staging / TRAINER_FILE, trainer_state)
        if final.exists():  # re-saving a step after a resume: replace the old copy
            shutil.rmtree(final)
        os.replace(staging, final)
        _fsync_dir(root)
        _write_text(root / "latest", final.name + "\n")
        prune(root, keep)
    dist.barrier()
    return final


def prune(root: str | Path, keep: int) -> None:
    """Delete all but the newest ``keep`` complete checkpoints, and leftovers of crashed saves."""
    root = Path(root)
    for old in complete_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    for partial in root.glob(".partial-*"):
        shutil.rmtree(partial, ignore_errors=True)


def load_trainer_state(folder: str | Path) -> dict[str, Any]:
    """Rank 0's trainer state; loads with ``weights_only=True`` (no code runs from the file)."""
    return torch.load(Path(folder) / TRAINER_FILE, map_location="cpu", weights_only=True)


def restore_rng(folder: str | Path) -> None:
    """Restore this rank's RNG states (a rank count change falls back to rank 0's)."""
    path = Path(folder) / f"rng-rank{dist.rank()}.pt"
    if not path.exists():
        path = Path(folder) / "rng-rank0.pt"
    state = torch.load(path, map_location="cpu", weights_only=True)
    torch.set_rng_state(state["torch"])
    random.setstate((state["python"][0], tuple(state["python"][1]), state["python"][2]))
    if torch.cuda.is_available() and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"])


def rng_state() -> dict[str, Any]:
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": [version, list(internal), gauss]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _write(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        torch.save(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
