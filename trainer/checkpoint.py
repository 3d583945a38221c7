"""Atomic checkpoints: a checkpoint folder is complete or it does not exist.

Layout under ``root``::

    step-000000120/            one complete checkpoint (the name orders them)
        generator/ discriminator/   each engine's DeepSpeed files (every rank writes its shards)
        trainer.pt             epoch, step, stage, data position, the resolved config (rank 0)
        rng-rank0.pt ...       each rank's RNG states (ranks draw different noise)
    latest                     the newest complete name, for people and tools
    .partial-step-000000130/   a save in progress, or what a crash left behind
    .old-step-000000120/       the copy a re-save of step 120 replaces, until the new one is in place
    .deleting-step-000000100/  a pruned checkpoint being deleted

Every rank writes into the ``.partial-`` folder; when all have finished, rank 0 renames it to its final
name. A rename within one file system is atomic, so readers (and a resumed run) only ever see complete
checkpoints; a crash mid-save leaves a ``.partial-`` folder that the next save deletes. Loading looks
for the highest complete ``step-*`` folder, so it does not depend on ``latest`` having been written.

Re-saving a step that exists (the epoch-end save of a step a periodic save just wrote, after a resume)
moves the old copy aside first and deletes it only once the new one is in place: a crash in between
leaves the ``.old-`` copy, which counts as that step until the next save renames it back. Pruning
renames a checkpoint to ``.deleting-`` before deleting it, so a crash mid-delete never leaves a
``step-*`` folder with ``trainer.pt`` but half of its engine files.

A full disk: a save that would not fit (the next checkpoint is taken to be the size of the latest,
plus 10%) is refused before anything is written, and one that fills the disk part way removes its
``.partial-`` folder; both raise ``CheckpointSpaceError`` naming the folder and the free space, and
the earlier checkpoints stay intact.

``Checkpointer`` is a run's save policy on top of that protocol: what a checkpoint records
(``Progress``, the stage, the config), engine files reused when only the data position moved, and the
launcher's hook after every complete save.
"""
from __future__ import annotations

import dataclasses
import errno
import os
import random
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch

from dataio.errors import UserInputError
from dataio.storage import AtomicFile, fsync_path
from trainer import distributed as dist

if TYPE_CHECKING:
    from trainer.average import WeightAverage
    from trainer.config import CheckpointConfig
    from trainer.engines import Engines
    from trainer.schedule import Stage

_NAME = re.compile(r"^step-(\d{9})$")
_RNG = re.compile(r"^rng-rank\d+\.pt$")
_ASIDE = ".old-"        # prefix of a replaced copy, kept until its replacement is in place
_DELETING = ".deleting-"  # prefix of a pruned checkpoint whose files are being deleted
TRAINER_FILE = "trainer.pt"


class CheckpointSpaceError(UserInputError, OSError):
    """The checkpoint folder's file system cannot hold another checkpoint: retrying cannot help."""


class OtherNetworksError(UserInputError, ValueError):
    """The checkpoint a run would resume from holds other networks than its config describes."""


NETWORK_SECTIONS = ("model.generator", "model.discriminator")
"""Where the settings that shape the saved weights live (named when a resume is refused)."""


@dataclass
class Progress:
    """The trainer state a checkpoint carries (besides the engines, the stage and RNG)."""
    epoch: int = 0
    """The epoch in progress (or the next to start)."""
    batch: int = 0
    """Batches of ``epoch`` already trained: a resumed run skips that many."""
    step: int = 0
    """Optimizer updates (chunks) attempted so far, skipped ones included."""
    skipped: int = 0
    bad_in_row: int = 0
    run_id: str = ""
    """The MLflow run, continued by a resumed run."""
    new_params: list[int] = field(default_factory=list)
    """The generator engine's fresh param group (``Engines.new_params``) at the save."""
    eval: dict[str, float] = field(default_factory=dict)
    """The latest held-out scores (``eval/psnr`` ...) and ``eval/step``, the step they were taken at:
    what picks the best checkpoint of a run (``vid2vid model publish --best``)."""


CheckpointHook = Callable[[Path, dict[str, float]], None]
"""``(folder, last_losses)``, on every rank after each complete checkpoint."""


class Checkpointer:
    """A run's saves: ``save`` writes a checkpoint of the run's state and calls the hook.

    When only the data position moved since the last save (the epoch-end save right after a periodic
    save of the same step, or after a resume at an epoch's last batch), the engines are not written
    again: the new checkpoint of that step links the last one's engine files. It is still a full save
    (a new position and RNG, sealed atomically, and one save per call for whoever counts them: the
    cluster worker reports each save to Ray).
    """

    def __init__(self, cfg: CheckpointConfig, config: dict[str, Any], on_checkpoint: CheckpointHook | None = None
                 ) -> None:
        self.cfg, self.config, self.on_checkpoint = cfg, config, on_checkpoint
        self.last: Path | None = latest_checkpoint(cfg.dir) if cfg.resume else None
        """The newest checkpoint: the one a run resumes from, then its own last save."""

    def save(self, progress: Progress, stage: Stage, engines: Engines, average: WeightAverage,
             last_losses: dict[str, float]) -> Path:
        state = {"progress": dataclasses.asdict(progress), "config": self.config, "stage": dataclasses.asdict(stage),
                 "world_size": dist.world_size(), "param_checksum": _check_ranks_agree(engines)}

        def write_engines(folder: Path) -> None:
            engines.save(folder)
            average.save(folder)
        # Rank 0's choice for all: ranks' states can differ (only rank 0's tracker knows the run id),
        # and a rank writing engines that the others link would hang DeepSpeed's collective save.
        if dist.broadcast(_only_position_moved(self.last, progress.step, state)):
            write_engines = reuse_engine_files(self.last)
        self.last = save(self.cfg.dir, progress.step, state, write_engines, self.cfg.keep, self.cfg.keep_best)
        if self.on_checkpoint is not None:
            self.on_checkpoint(self.last, last_losses)
        return self.last


_POSITION = ("epoch", "batch")


def _only_position_moved(last: Path | None, step: int, state: dict[str, Any]) -> bool:
    """True when checkpoint ``last`` is of ``step`` and differs from ``state`` in the data position only."""
    if last is None or last.name != checkpoint_name(step) or not last.is_dir():
        return False
    return _without_position(load_trainer_state(last)) == _without_position(state)


def _without_position(state: dict[str, Any]) -> dict[str, Any]:
    return {**state, "progress": {k: v for k, v in state["progress"].items() if k not in _POSITION}}


def _check_ranks_agree(engines: Engines) -> list[float]:
    """Parameter sums of both networks, checked equal on every rank before they are saved.

    Data-parallel ranks must hold identical weights (ZeRO 0-2 keep full copies); a difference means a
    bug (a rank skipped an update the others made), and saving would make it permanent. Weights that
    are not finite (whose sums never compare equal) are refused before, by name
    (``trainer.step.check_weights``).
    """
    sums = [float(sum(p.detach().double().sum() for p in e.module.parameters()))
            for e in (engines.generator, engines.discriminator)]
    if not dist.all_equal(sums):
        raise RuntimeError(f"rank {dist.rank()}: parameters differ between ranks (sums {sums}); not saving")
    return sums


def checkpoint_name(step: int) -> str:
    return f"step-{step:09d}"


def complete_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first (a lone ``.old-`` copy stands for its step)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = {p.name: p for p in root.iterdir() if _NAME.match(p.name) and _is_complete(p)}
    for aside in root.glob(f"{_ASIDE}step-*"):
        name = aside.name[len(_ASIDE):]
        # A crash while re-saving left only the old copy: it is still that step's checkpoint.
        if _NAME.match(name) and name not in found and not (root / name).exists() and _is_complete(aside):
            found[name] = aside
    return [found[name] for name in sorted(found)]


def _is_complete(folder: Path) -> bool:
    return folder.is_dir() and (folder / TRAINER_FILE).is_file()


def latest_checkpoint(root: str | Path) -> Path | None:
    found = complete_checkpoints(root)
    return found[-1] if found else None


def save(root: str | Path, step: int, trainer_state: dict[str, Any],
         write_engines: Callable[[Path], None], keep: int, keep_best: str = "") -> Path:
    """Write checkpoint ``step`` (call on every rank); returns its final folder.

    ``write_engines(folder)`` is called on every rank and must write that rank's engine files there.
    ``trainer_state`` (rank 0's is written) must hold only what ``torch.load(weights_only=True)``
    accepts: tensors, numbers, strings, lists, tuples, dicts.
    """
    root = Path(root)
    final = root / checkpoint_name(step)
    staging = root / f".partial-{final.name}"
    shortage = ""
    if dist.is_main():
        root.mkdir(parents=True, exist_ok=True)
        _restore_aside(root)
        shutil.rmtree(staging, ignore_errors=True)  # a crashed save of the same step
        shortage = space_shortage(root)
        if not shortage:
            staging.mkdir()
    shortage = dist.broadcast(shortage)
    if shortage:  # refused before a byte is written: the earlier checkpoints stay as they are
        raise CheckpointSpaceError(shortage)
    dist.barrier()
    try:
        write_engines(staging)
        _write(staging / f"rng-rank{dist.rank()}.pt", rng_state())
    except (OSError, RuntimeError) as err:
        if not _out_of_space(err, root):
            raise
        # The partial folder would only hold the full disk's last bytes: remove it now.
        shutil.rmtree(staging, ignore_errors=True)
        # Free space now includes what the partial folder held: the whole room the checkpoint had.
        raise CheckpointSpaceError(f"no space left on {root} while writing checkpoint {final.name}: "
                                   f"{_free_mb(root)} MB free, a checkpoint needs more than that ({err})") from err
    dist.barrier()  # every rank's shards are on disk before rank 0 seals the folder
    if dist.is_main():
        _write(staging / TRAINER_FILE, trainer_state)
        _replace(staging, final)
        _write_text(root / "latest", final.name + "\n")
        prune(root, keep, keep_best)
    dist.barrier()
    return final


def space_shortage(root: str | Path) -> str:
    """Why ``root`` cannot take another checkpoint (empty when it can): the next one is about the
    size of the latest, plus 10%."""
    latest = latest_checkpoint(root)
    if latest is None:
        return ""
    needed = int(sum(f.stat().st_size for f in latest.rglob("*") if f.is_file()) * 1.1)
    free = shutil.disk_usage(root).free
    if free >= needed:
        return ""
    return f"no space left on {root}: {free // 2**20} MB free, a checkpoint needs about {needed // 2**20 + 1} MB"


def _out_of_space(err: BaseException, root: Path) -> bool:
    # torch.save reports a full disk as "[enforce fail at inline_container.cc] unexpected pos".
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        return True
    return "unexpected pos" in str(err) or (isinstance(err, RuntimeError) and shutil.disk_usage(root).free == 0)


def _free_mb(root: Path) -> int:
    return shutil.disk_usage(root).free // 2**20


def reuse_engine_files(source: str | Path) -> Callable[[Path], None]:
    """A ``write_engines`` for ``save`` that hard-links (or, where links fail, copies) the engine
    files of checkpoint ``source`` instead of writing them again: for a re-save of ``source``'s step
    whose engines have not changed. Rank 0 links every file; ``save`` still writes each rank's RNG."""
    source = Path(source)

    def write(folder: Path) -> None:
        if not dist.is_main():
            return
        for entry in source.iterdir():
            if entry.name == TRAINER_FILE or _RNG.match(entry.name):
                continue
            if entry.is_dir():
                shutil.copytree(entry, folder / entry.name, copy_function=_link_or_copy)
            else:
                _link_or_copy(entry, folder / entry.name)
    return write


def _link_or_copy(src: str | Path, dst: str | Path) -> None:
    try:
        os.link(src, dst)  # no bytes copied: the old folder is deleted right after, its files live on here
    except OSError:
        shutil.copy2(src, dst)


def _replace(staging: Path, final: Path) -> None:
    """Rename ``staging`` to ``final``; an existing ``final`` is moved aside first and deleted last,
    so that at every moment one complete copy of the step exists."""
    aside = final.with_name(_ASIDE + final.name)
    if final.exists():  # re-saving a step (the epoch-end save of a periodic save's step, a resume)
        shutil.rmtree(aside, ignore_errors=True)  # a stale one: final is complete, so it is not needed
        os.replace(final, aside)
    os.replace(staging, final)
    fsync_path(final.parent)
    shutil.rmtree(aside, ignore_errors=True)


def _restore_aside(root: Path) -> None:
    """Undo what a crash mid-re-save left: a lone ``.old-`` copy becomes its step again, one whose
    replacement made it into place is deleted."""
    for aside in root.glob(f"{_ASIDE}step-*"):
        final = root / aside.name[len(_ASIDE):]
        if final.exists() or not _is_complete(aside):
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.replace(aside, final)
            fsync_path(root)


def prune(root: str | Path, keep: int, keep_best: str = "") -> None:
    """Delete all but the newest ``keep`` complete checkpoints (and the best by ``keep_best``, an
    ``eval/*`` score), and leftovers of crashed saves."""
    root = Path(root)
    best = best_checkpoint(root, keep_best) if keep_best else None
    for old in complete_checkpoints(root)[:-keep]:
        if best is not None and old == best[0]:
            continue
        # Renamed first: a crash mid-delete must not leave a step-* folder that looks complete.
        doomed = root / f"{_DELETING}{old.name.removeprefix(_ASIDE)}"
        shutil.rmtree(doomed, ignore_errors=True)
        os.replace(old, doomed)
    fsync_path(root)
    for leftover in [*root.glob(".partial-*"), *root.glob(f"{_DELETING}*")]:
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:  # a crashed write of ``latest``
            leftover.unlink(missing_ok=True)


def best_checkpoint(root: str | Path, metric: str) -> tuple[Path, dict[str, float]] | None:
    """The complete checkpoint under ``root`` whose own recorded held-out scores are best by
    ``metric`` (an ``eval/*`` key of ``EVAL_METRICS``), with its scores; None when none records it."""
    from trainer.config import EVAL_METRICS

    scored = []
    for folder in complete_checkpoints(root):
        progress = load_trainer_state(folder)["progress"]
        scores = progress.get("eval", {})
        # Scores taken at an earlier step describe other weights: only a checkpoint's own count.
        value = scores.get(metric)
        if scores.get("eval/step") == progress["step"] and value is not None and value == value:
            scored.append((value, folder, scores))
    if not scored:
        return None
    _, folder, scores = (max if EVAL_METRICS[metric] == "max" else min)(scored, key=lambda found: found[0])
    return folder, scores


def load_trainer_state(folder: str | Path) -> dict[str, Any]:
    """Rank 0's trainer state; loads with ``weights_only=True`` (no code runs from the file)."""
    return torch.load(Path(folder) / TRAINER_FILE, map_location="cpu", weights_only=True)


def check_resumable(folder: str | Path, config: dict[str, Any], label_channels: int) -> None:
    """Refuse to resume ``folder`` under ``config`` (a config tree as a dict) when the networks it
    describes for ``label_channels`` label channels hold other weight shapes than the checkpoint's
    config gives: the weights would not load, and only after the workers started (under Ray, restarted).
    Settings that shape no weight (``flow_multiplier``, a channel cap never reached) may change. Built on
    the meta device: no memory, no arithmetic. A checkpoint config this code cannot read is not checked."""
    from trainer.config_tree import ConfigError

    saved = load_trainer_state(folder).get("config", {})
    try:
        before = _weight_shapes(saved.get("model", {}), label_channels)
    except ConfigError:
        return
    if before == _weight_shapes(config.get("model", {}), label_channels):
        return
    changed = [f"{section}.{key}={old[key]!r} there, {new[key]!r} here"
               for section in NETWORK_SECTIONS
               for old, new in [(_section(saved, section), _section(config, section))]
               for key in sorted(old.keys() & new.keys()) if old[key] != new[key]]
    raise OtherNetworksError(f"{folder} holds networks of other shapes than the config describes "
                             f"({'; '.join(changed) or 'the label input'}): resume it with the same networks, "
                             "or start another run (another cluster.name, or checkpoint.dir under plain torchrun)")


def _weight_shapes(model: dict[str, Any], label_channels: int) -> dict[str, tuple[int, ...]]:
    from models.build import build_discriminators, build_generator
    from models.config import ModelConfig
    from trainer.config_tree import from_dict

    cfg = from_dict(ModelConfig, model, "<a checkpoint's model config>")
    with torch.device("meta"):
        networks = {"generator": build_generator(cfg, label_channels),
                    **dict(zip(("image", "temporal"), build_discriminators(cfg, label_channels)))}
    return {f"{name}.{key}": tuple(value.shape) for name, net in networks.items()
            for key, value in net.state_dict().items()}


def _section(tree: dict[str, Any], dotted: str) -> dict[str, Any]:
    for part in dotted.split("."):
        tree = tree.get(part, {}) if isinstance(tree, dict) else {}
    return tree


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
    with AtomicFile(path) as temp:
        torch.save(obj, temp)


def _write_text(path: Path, text: str) -> None:
    with AtomicFile(path) as temp:
        temp.write_text(text)
