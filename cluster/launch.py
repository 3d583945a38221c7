"""`vid2vid train`: the trainer's loop on ``cluster.num_workers`` Ray Train workers.

    validate (config, shards) -> create the MLflow store and experiment -> join / start Ray
        -> TorchTrainer(worker.train_loop): gloo on CPU, NCCL on GPU; checkpoints reported to
           ``storage_path/<name>``; FailureConfig(max_failures) restarts the group from the last one
        -> the result: metrics, MLflow run, Ray checkpoint, exported generator

Running the same command again (same ``cluster.name`` and ``storage_path``) resumes: Ray hands the
workers the run's latest reported checkpoint (``worker.restore_reported_checkpoint``).
"""
from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ray.exceptions import RayActorError
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig, TrainingFailedError, UserCallback
from ray.train.torch import TorchConfig, TorchTrainer

from cluster.config import RootConfig
from cluster.ray_env import connected, target
from cluster.run_log import ProgressTail, log_dir, ray_to_file, worker_log
from cluster.worker import train_loop
from dataio.errors import UnusableLocationError, UserInputError
from dataio.labels import LabelSpec
from dataio.reader import planned
from dataio.storage import check_location
from trainer import validation
from trainer.checkpoint import check_resumable, latest_checkpoint, space_shortage
from trainer.config import EVAL_METRICS
from trainer.config_tree import to_dict
from trainer.export import export_path
from trainer.tracking import brief, prepare_store, redact

log = logging.getLogger(__name__)


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) stopped the run; rerunning the same command resumes it from its last checkpoint."""


class TrainingFailed(UserInputError, RuntimeError):
    """The Ray Train run failed (after its allowed restarts); the message carries the worker's error."""


class NotReadyError(UserInputError, ValueError):
    """What would fail inside every worker, found before any starts; the message names the key."""


class NotRetriedError(RuntimeError):
    """A worker's error that a restart cannot fix, which ended the run without one."""


class StopWhenRetryCannotHelp(UserCallback):
    """Ends a run at a worker error that would only repeat after a restart.

    Ray Train restarts the workers after every worker error, up to ``cluster.max_failures`` times, and
    its failure policy takes no per-error rule (``FailureConfig`` has only counts). A ``UserInputError``
    (a full checkpoint disk, data the loader cannot use, an unsafe checkpoint) fails the same way again
    from the same checkpoint: bit-exact resume makes sure of it. Raising here, in Ray's controller,
    is a controller error, which Ray does not retry; it stops the workers and ``fit`` raises it. A lost
    process or node, and a location that cannot be reached (it may come back), are still retried.
    """

    def after_exception(self, run_context: Any, worker_exceptions: dict[int, Exception]) -> None:
        for rank, error in sorted(worker_exceptions.items()):
            # Ray hands the worker's exception over wrapped with its traceback text.
            cause = getattr(error, "_base_exc", error)
            if isinstance(cause, UserInputError) and not isinstance(cause, UnusableLocationError):
                raise NotRetriedError(f"{type(cause).__name__}: {(str(cause).splitlines() or [''])[0]} "
                                      f"(rank {rank}; not retried: a restart would fail the same way)")


@dataclass
class LaunchResult:
    run_id: str
    """The training run in MLflow ('' with tracking off)."""
    metrics: dict[str, Any]
    """Rank 0's metrics at the last report (mean losses since the previous checkpoint, epoch, step)."""
    checkpoint: str | None
    """Ray's copy of the last checkpoint (a folder or an s3:// URI)."""
    export: Path | None
    """The exported generator, when this machine can see it (an embedded run)."""
    checkpoint_dir: Path
    """The trainer's checkpoint folder of this run (``checkpoint.dir/<cluster.name>``)."""


def resolve(cfg: RootConfig, embedded: bool) -> RootConfig:
    """The config the workers get: run-scoped checkpoint folder; for an embedded run, absolute paths.

    The checkpoint folder gets the run name so that runs of other names never resume from it. Paths
    become absolute only for an embedded run, where every worker shares the driver's file system; on a
    cluster a relative path means the same place inside each node's copy of the job's working dir.
    """
    def local(path: str) -> str:
        return path if "://" in path or not embedded else os.path.abspath(path)

    checkpoint = dataclasses.replace(cfg.checkpoint, dir=local(os.path.join(cfg.checkpoint.dir, cfg.cluster.name)))
    data = dataclasses.replace(cfg.data, shards=local(cfg.data.shards))
    tracking = cfg.tracking
    if embedded and tracking.uri.startswith("sqlite:///") and not tracking.uri.startswith("sqlite:////"):
        tracking = dataclasses.replace(tracking, uri="sqlite:///" + os.path.abspath(tracking.uri[len("sqlite:///"):]))
    loss = cfg.model.loss
    if loss.vgg_weights:
        loss = dataclasses.replace(loss, vgg_weights=local(loss.vgg_weights))
    model = dataclasses.replace(cfg.model, loss=loss)
    storage = cfg.cluster.storage_path
    cluster = dataclasses.replace(cfg.cluster, storage_path=storage if "://" in storage else os.path.abspath(storage))
    return dataclasses.replace(cfg, checkpoint=checkpoint, data=data, tracking=tracking, model=model, cluster=cluster)


def check_ready(cfg: RootConfig, embedded: bool = True) -> None:
    """What would otherwise fail inside every worker, late and retried: more workers than an embedded
    Ray has CPUs, a location that cannot be read or written, a checkpoint folder whose disk cannot
    take the next checkpoint, a checkpoint to resume that holds other networks, shards missing, too few to
    split, or unlike what the config asks of them."""
    cluster = cfg.cluster
    if embedded:
        cpus = cluster.num_cpus or os.cpu_count() or 1
        if cluster.num_workers * cluster.cpus_per_worker > cpus:
            raise NotReadyError(f"cluster.num_workers={cluster.num_workers} workers of cluster.cpus_per_worker="
                             f"{cluster.cpus_per_worker} CPU need more than the {cpus} CPUs of this machine's "
                             "embedded Ray (cluster.num_cpus); Ray would wait for them forever")
    # Local paths are this machine's only when Ray runs here; on a cluster they are the nodes'.
    check_location(cfg.data.shards, "data.shards")
    for key, url in (("checkpoint.dir", cfg.checkpoint.dir), ("cluster.storage_path", cluster.storage_path)):
        if embedded or "://" in url:
            check_location(url, key, write=True)
    if embedded and "://" not in cfg.checkpoint.dir:
        # A resumed run whose disk cannot hold its next checkpoint would train an epoch, then fail.
        shortage = space_shortage(cfg.checkpoint.dir)
        if shortage:
            raise NotReadyError(f"checkpoint.dir: {shortage}")
    # Clips as long as the schedule's longest, the classes, a full batch per worker.
    shards, layout = planned(cfg.data, "train", cfg.train.schedule.max_frames, cfg.cluster.num_workers,
                             full_batches=True)
    local = embedded and "://" not in cfg.checkpoint.dir
    resumed = latest_checkpoint(cfg.checkpoint.dir) if local and cfg.checkpoint.resume else None
    if resumed is not None:  # the same run name again, with other networks?
        check_resumable(resumed, to_dict(cfg), LabelSpec(cfg.data.num_classes, layout.label_kind,
                                                         has_edges=layout.has_edges).channels)
    if validation.enabled(cfg):
        validation.check_held_out(cfg)
    if len(shards) < cfg.cluster.num_workers:
        raise NotReadyError(f"data.shards {cfg.data.shards}: {len(shards)} train shard(s) cannot feed "
                         f"cluster.num_workers={cfg.cluster.num_workers} workers; pack with fewer "
                         "data.pack.clips_per_shard or use fewer workers")
    if cfg.tracking.enabled:
        # Once, here: workers creating a fresh sqlite store at the same time crash (docs/platform.md).
        prepare_store(cfg.tracking)


def torch_trainer(cfg: RootConfig, loop_config: dict[str, Any] | None = None, callbacks: Sequence[Any] = ()):
    """The ``TorchTrainer`` of one training run of ``cfg`` (already resolved). Ray keeps the last
    ``checkpoint.keep`` checkpoints, or with ``checkpoint.keep_best`` the best by that reported
    held-out score (and always the latest, to resume from)."""
    cluster, best = cfg.cluster, cfg.checkpoint.keep_best
    resources = {"CPU": cluster.cpus_per_worker, **({"GPU": 1} if cluster.use_gpu else {})}
    return TorchTrainer(
        train_loop,
        train_loop_config={"config": to_dict(cfg), **(loop_config or {})},
        scaling_config=ScalingConfig(num_workers=cluster.num_workers, use_gpu=cluster.use_gpu,
                                     resources_per_worker=resources),
        torch_config=TorchConfig(backend="nccl" if cluster.use_gpu else "gloo"),
        run_config=RunConfig(name=cluster.name, storage_path=cluster.storage_path,
                             failure_config=FailureConfig(max_failures=cluster.max_failures),
                             checkpoint_config=CheckpointConfig(
                                 num_to_keep=cfg.checkpoint.keep,
                                 checkpoint_score_attribute=best or None,
                                 checkpoint_score_order=EVAL_METRICS.get(best, "max")),
                             callbacks=[StopWhenRetryCannotHelp(), *callbacks]),
    )


def fit(cfg: RootConfig, loop_config: dict[str, Any] | None = None, callbacks: Sequence[Any] = (),
        progress: bool = False) -> LaunchResult:
    """Run ``cfg`` (resolved) on the Ray that is already initialised; raise ``TrainingFailed``.
    ``progress``: print rank 0's progress lines as they come (an embedded run: its log is here)."""
    sigint = _RaySigintSeen()
    try:
        with sigint:
            if progress:
                with ProgressTail(worker_log(cfg.checkpoint.dir, 0)):
                    result = torch_trainer(cfg, loop_config, callbacks).fit()
            else:
                result = torch_trainer(cfg, loop_config, callbacks).fit()
    except TrainingFailedError as err:
        end_unfinished_runs(cfg)
        raise TrainingFailed(f"training run '{cfg.cluster.name}' failed: {_first_line(err)} "
                             f"(logs: {log_dir(cfg.checkpoint.dir)})") from err
    except (KeyboardInterrupt, SystemExit, RayActorError) as err:
        # Ray Train's SIGINT handler aborts the run's controller, then exits the driver with SystemExit
        # (or the driver's wait for the aborted controller fails): the workers are gone, rank 0's MLflow
        # run with them, still RUNNING. Without that signal they are no interrupt: they pass through as
        # they are (a sweep's trials run fit in threads where Ray installs no handler).
        if not (sigint.seen or isinstance(err, KeyboardInterrupt)):
            raise
        end_unfinished_runs(cfg, "KILLED")
        raise TrainingInterrupted(f"training run '{cfg.cluster.name}' interrupted: the same command again resumes "
                                  f"it from its last checkpoint (logs: {log_dir(cfg.checkpoint.dir)})") from None
    metrics = dict(result.metrics or {})
    export = export_path(cfg.checkpoint.dir)
    return LaunchResult(run_id=str(metrics.get("run_id", "")), metrics=metrics,
                        checkpoint=result.checkpoint.path if result.checkpoint else None,
                        export=export if export.is_file() else None, checkpoint_dir=Path(cfg.checkpoint.dir))


class _RaySigintSeen(logging.Handler):
    """Whether Ray Train's SIGINT handler ran during a ``fit`` (``with`` it): it logs this line before it
    aborts the run, and that is all of it the driver can see (the handler replaces any of ours)."""
    _LOGGER = "ray.train.v2.api.data_parallel_trainer"

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.seen = False

    def emit(self, record: logging.LogRecord) -> None:
        self.seen = self.seen or record.getMessage().startswith("Received SIGINT")

    def __enter__(self) -> "_RaySigintSeen":
        logger = logging.getLogger(self._LOGGER)
        self._level = logger.level
        logger.setLevel(min(logger.getEffectiveLevel(), logging.INFO))
        logger.addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        logger = logging.getLogger(self._LOGGER)
        logger.removeHandler(self)
        logger.setLevel(self._level)


def end_unfinished_runs(cfg: RootConfig, status: str = "FAILED") -> None:
    """Mark ``status`` (FAILED, or KILLED after an interrupt) the MLflow run of this training run (``cfg``
    resolved: its tag ``checkpoint_dir``) where it is still RUNNING once Ray gave up. Rank 0 ends its run
    FAILED itself as it cleans up, unless Ray stopped it first: another rank's failure reached Ray while
    rank 0 was still flushing (seen in a test run), or its process or node was lost. A tracking store that
    cannot be reached is said, not raised."""
    if not cfg.tracking.enabled:
        return
    from mlflow.tracking import MlflowClient

    folder = str(Path(cfg.checkpoint.dir).resolve())
    try:
        client = MlflowClient(tracking_uri=cfg.tracking.uri)
        experiment = client.get_experiment_by_name(cfg.tracking.experiment)
        if experiment is None:
            return
        for run in client.search_runs([experiment.experiment_id], filter_string="attributes.status = 'RUNNING'"):
            if run.data.tags.get("checkpoint_dir") == folder:
                client.set_terminated(run.info.run_id, status)
                log.info("tracking: marked run %s %s (its rank 0 was stopped before it could)", run.info.run_id,
                         status)
    except Exception as err:  # noqa: BLE001 - the run's failure is what the caller reports
        log.warning("tracking: could not mark the run %s at %s: %s", status, redact("uri", cfg.tracking.uri),
                    brief(err))


def train(cfg: RootConfig) -> LaunchResult:
    """`vid2vid train`: validate, prepare tracking, then train through Ray Train."""
    embedded = target(cfg.cluster).embedded
    resolved = resolve(cfg, embedded)
    check_ready(resolved, embedded)
    ray_to_file(log_dir(resolved.checkpoint.dir) / "driver.log")
    with connected(resolved.cluster):
        return fit(resolved, progress=embedded)


def _first_line(err: BaseException) -> str:
    """The worker's own error, not Ray's wrapper: the last line of the innermost traceback text."""
    text = str(err).strip()
    lines = [line for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line.split(":")[0] or "Exception" in line.split(":")[0]]
    return (errors[-1] if errors else lines[-1] if lines else type(err).__name__).strip()[:500]
