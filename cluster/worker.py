"""What each Ray Train worker runs: the trainer's loop, its checkpoints reported to Ray.

    restore Ray's latest reported checkpoint into the local checkpoint folder (a restart, or a re-run
    of the same run name, perhaps on other machines) -> ``trainer.loop.train(cfg, on_checkpoint)``,
    each complete checkpoint reported with ``ray.train.report`` -> rank 0 logs the export and the
    config to MLflow

The trainer resumes from the newest complete checkpoint in ``checkpoint.dir`` by itself; Ray's copy in
``storage_path`` is what survives the loss of that folder (a new node, a wiped disk, another cluster).
"""
from __future__ import annotations

import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import ray.train
from mlflow.tracking import MlflowClient

from cluster.config import RootConfig
from cluster.run_log import redirect_worker_output
from trainer.checkpoint import TRAINER_FILE, load_trainer_state
from trainer.config_tree import from_dict
from trainer.distributed import barrier, setup_process
from trainer.tracking import configure_client, redacted_yaml

log = logging.getLogger(__name__)

REPORT_SEP = "_"
RESTORE_PREFIX = ".partial-restore-"
"""Staging folder of a restore; ``.partial-*`` leftovers are deleted by the trainer's next save."""


def train_loop(loop_config: dict[str, Any]) -> None:
    """``train_loop_per_worker`` of the ``TorchTrainer`` (``loop_config`` is plain data: it is pickled)."""
    context = ray.train.get_context()
    rank = context.get_world_rank()
    cfg = from_dict(RootConfig, loop_config["config"], "<config sent to the Ray workers>")
    redirect_worker_output(cfg.checkpoint.dir, rank)  # DeepSpeed's and Ray's chatter too: not the console
    setup_process(rank)
    restore_reported_checkpoint(Path(cfg.checkpoint.dir), context.get_local_rank())
    reporter = CheckpointReporter(rank, cfg.tracking.uri if cfg.tracking.enabled else "",
                                  loop_config.get("parent_run_id", ""))
    # Imported here, once the output is redirected: DeepSpeed logs as it is imported, and that belongs
    # in this worker's log.
    from trainer.loop import train

    result = train(cfg, on_checkpoint=reporter)  # a failure is in this rank's log before Ray stops the others
    if rank == 0 and cfg.tracking.enabled and result.progress.run_id:
        log_run_files(cfg, result.progress.run_id, result.export)


def restore_reported_checkpoint(root: Path, local_rank: int) -> Path | None:
    """Copy Ray's latest reported checkpoint to ``root/<its name>`` unless it is already there.

    One copier per node (local rank 0); the others wait at a barrier. The copy is staged and renamed,
    so the trainer only ever sees a complete checkpoint folder.
    """
    reported = ray.train.get_checkpoint()
    target = None
    if reported is not None:
        target = root / trainer_name(Path(reported.path).name)
        if local_rank == 0 and not (target / TRAINER_FILE).is_file():
            root.mkdir(parents=True, exist_ok=True)  # a fresh machine has no checkpoint folder yet
            staging = root / f"{RESTORE_PREFIX}{target.name}-{uuid.uuid4().hex[:8]}"
            reported.to_directory(str(staging))
            if not (staging / TRAINER_FILE).is_file():
                raise RuntimeError(f"reported checkpoint {reported.path} has no {TRAINER_FILE}: "
                                   "it was not written by this trainer")
            shutil.rmtree(target, ignore_errors=True)
            os.replace(staging, target)
            log.info("restored checkpoint %s from %s", target, reported.path)
    barrier()
    return target


def report_name(step_name: str) -> str:
    """Ray's folder for a reported checkpoint: the trainer's name plus a unique suffix.

    After a restart the trainer saves the same step again; reported under the same name, Ray's
    pruning of the older entry deleted the folder the newer entry points at (seen: the next run
    refused the "corrupted run directory").
    """
    return f"{step_name}{REPORT_SEP}{uuid.uuid4().hex[:8]}"


def trainer_name(report_dir: str) -> str:
    """The trainer's checkpoint name (``step-000000120``) of a reported folder."""
    return report_dir.split(REPORT_SEP)[0]


class CheckpointReporter:
    """The trainer's ``on_checkpoint`` hook: reports each complete checkpoint to Ray.

    The trainer calls it on every rank after each save, in step, which is what ``ray.train.report``
    needs (every rank must report the same number of times). Metrics: the losses of the last update
    and, from the checkpoint's ``trainer.pt``, the latest held-out scores (``eval/*``, with
    ``eval.at_checkpoint`` those of this checkpoint), where training is and its MLflow run.
    """

    def __init__(self, rank: int, tracking_uri: str = "", parent_run_id: str = "") -> None:
        self.rank = rank
        self.tracking_uri = tracking_uri
        self.parent_run_id = parent_run_id
        self._tagged = False
        self.reports = 0

    @staticmethod
    def metrics(losses: dict[str, float], state: dict[str, Any]) -> dict[str, Any]:
        progress = state["progress"]
        return {**losses, **progress.get("eval", {}), "epoch": progress["epoch"], "step": progress["step"],
                "skipped_steps": progress["skipped"], "run_id": progress["run_id"]}

    def __call__(self, folder: Path, losses: dict[str, float]) -> None:
        folder = Path(folder)
        metrics = self.metrics(losses, load_trainer_state(folder))  # sealed: every rank can read it
        # Rank 0 uploads the whole folder: every rank wrote its shards into it (a shared file system,
        # which the trainer's atomic save needs anyway); the other ranks report no checkpoint.
        if self.rank == 0:
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(folder)),
                             checkpoint_dir_name=report_name(folder.name))
            self._tag_parent(metrics["run_id"])
        else:
            ray.train.report(metrics)
        self.reports += 1

    def _tag_parent(self, run_id: str) -> None:
        """Nest this run under a sweep's parent run in MLflow (the UI groups by this tag)."""
        if self._tagged or not (self.parent_run_id and self.tracking_uri and run_id):
            return

        MlflowClient(tracking_uri=self.tracking_uri).set_tag(run_id, "mlflow.parentRunId", self.parent_run_id)
        self._tagged = True


def log_run_files(cfg, run_id: str, export: Path | None) -> None:
    """The exported generator and the resolved config, as artifacts of the training run.

    What ``vid2vid model publish --run`` and ``model fetch`` read, from any machine that reaches the
    tracking server. A tracking failure is logged, not raised: the training itself succeeded.
    """
    configure_client()
    try:
        client = MlflowClient(tracking_uri=cfg.tracking.uri)
        client.log_text(run_id, redacted_yaml(cfg), "config.yaml")
        if export is not None and Path(export).is_file():
            client.log_artifact(run_id, str(export), "export")
    except Exception as err:  # noqa: BLE001 - see the docstring
        log.warning("could not log the export and config to MLflow run %s: %s", run_id, err)
