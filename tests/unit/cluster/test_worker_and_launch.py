"""Pure parts of the Ray Train launch: path resolution, report names, metrics, the logged config, which
worker errors end a run without a restart."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from cluster.config import load
from cluster.launch import NotRetriedError, StopWhenRetryCannotHelp, resolve
from cluster.worker import CheckpointReporter, report_name, trainer_name
from dataio.errors import UnusableLocationError
from trainer.checkpoint import CheckpointSpaceError
from trainer.tracking import redacted_yaml

REPO = Path(__file__).resolve().parents[3]


def test_embedded_run_gets_absolute_run_scoped_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = resolve(load(REPO / "configs" / "demo.yaml"), embedded=True)
    assert cfg.checkpoint.dir == str(tmp_path / "checkpoints" / "demo")
    assert cfg.data.shards == str(tmp_path / "data" / "demo" / "shards")
    assert cfg.tracking.uri == f"sqlite:///{tmp_path}/mlflow.db"
    assert cfg.cluster.storage_path == str(tmp_path / "runs")


def test_cluster_run_keeps_paths_relative_to_each_node_s_working_dir() -> None:
    cfg = resolve(load(REPO / "configs" / "demo.yaml", ["cluster.storage_path=s3://b/runs"]), embedded=False)
    assert cfg.checkpoint.dir == os.path.join("checkpoints", "demo") and cfg.data.shards == "data/demo/shards"
    assert cfg.tracking.uri == "sqlite:///mlflow.db" and cfg.cluster.storage_path == "s3://b/runs"


def test_report_names_are_unique_and_map_back_to_the_step() -> None:
    a, b = report_name("step-000000012"), report_name("step-000000012")
    assert a != b and trainer_name(a) == trainer_name(b) == "step-000000012"


def test_reported_metrics() -> None:
    state = {"progress": {"epoch": 2, "step": 6, "skipped": 1, "run_id": "abc", "batch": 0}}
    assert CheckpointReporter.metrics({"g/total": 2.0}, state) == {
        "g/total": 2.0, "epoch": 2, "step": 6, "skipped_steps": 1, "run_id": "abc"}


def test_logged_config_hides_secrets() -> None:
    cfg = load(REPO / "configs" / "demo.yaml", ["tracking.uri=http://bob:hunter2@mlflow:5000"])
    text = redacted_yaml(cfg)
    assert "hunter2" not in text and "bob:***@mlflow:5000" in text and "cluster:" in text


def test_refused_before_any_worker_starts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each refusal is one line naming the key, raised by the driver before Ray starts a worker."""
    from cluster.launch import check_ready
    monkeypatch.chdir(tmp_path)
    base = ["cluster.num_cpus=2", "tracking.enabled=false"]
    with pytest.raises(ValueError, match=r"cluster\.num_workers=3 workers .* more than the 2 CPUs"):
        check_ready(resolve(load(REPO / "configs" / "demo.yaml", [*base, "cluster.num_workers=3"]), True))
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(ValueError, match=r"^checkpoint\.dir=.*a-file/ckpt/demo: not writable \(Not a directory\)$"):
        check_ready(resolve(load(REPO / "configs" / "demo.yaml", [*base, "checkpoint.dir=a-file/ckpt"]), True))
    with pytest.raises(FileNotFoundError, match="no train shards"):  # everything before the shards passed
        check_ready(resolve(load(REPO / "configs" / "demo.yaml", base), True))
    # Shards of shorter clips than the schedule's longest (8): refused here, not as bad data in each worker.
    from tests.unit.dataio.test_planned import shards_of
    shards_of(tmp_path / "data" / "demo" / "shards", frames=4)
    with pytest.raises(ValueError, match=r"shards: its train clips hold 4 frames, 8 are asked"):
        check_ready(resolve(load(REPO / "configs" / "demo.yaml", base), True))
    shutil.rmtree(tmp_path / "data")
    # Held-out scores asked of shards without held-out clips: here, not in each worker (retried).
    shards_of(tmp_path / "data" / "demo" / "shards", frames=16, val=0)  # one shard: one worker
    one = [*base, "cluster.num_workers=1"]
    check_ready(resolve(load(REPO / "configs" / "demo.yaml", one), True))
    with pytest.raises(ValueError, match=r"^eval: no val shards under .*shards \(eval.split=val; held-out scores "):
        check_ready(resolve(load(REPO / "configs" / "demo.yaml", [*one, "eval.every_steps=2"]), True))
    shutil.rmtree(tmp_path / "data")
    # The same run name again with other networks: the saved weights would not load, in any worker.
    from trainer import checkpoint
    from trainer.config_tree import to_dict
    shards_of(tmp_path / "data" / "demo" / "shards", frames=16)
    resolved = resolve(load(REPO / "configs" / "demo.yaml", one), True)
    folder = resolved.checkpoint.dir
    checkpoint.save(folder, 4, {"step": 4, "config": to_dict(resolved)},
                    lambda f: (f / "engine.bin").write_bytes(b"x" * 2**20), keep=1)
    with pytest.raises(ValueError, match=r"checkpoints/demo/step-000000004 holds networks of other shapes than the "
                                         r"config describes \(model.generator.ngf=16 there, 32 here\)"):
        check_ready(resolve(load(REPO / "configs" / "demo.yaml", [*one, "model.generator.ngf=32"]), True))
    # Not resuming: a fresh start in the same folder is the user's call.
    check_ready(resolve(load(REPO / "configs" / "demo.yaml", [*one, "model.generator.ngf=32",
                                                              "checkpoint.resume=false"]), True))
    # A resumed run on a disk that cannot take its next checkpoint (about the size of its latest).
    real = checkpoint.shutil.disk_usage
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda p: real(p)._replace(free=2**19))
    with pytest.raises(ValueError, match=r"^checkpoint\.dir: no space left on .*checkpoints/demo: 0 MB free, "
                                         r"a checkpoint needs about 2 MB$"):
        check_ready(resolve(load(REPO / "configs" / "demo.yaml", base), True))


def test_a_tracking_store_that_cannot_be_used_is_named_in_one_line(tmp_path: Path) -> None:
    from dataio.errors import UserInputError
    from trainer.config import TrackingConfig
    from trainer.tracking import prepare_store
    for uri, why in (("http://bob:hunter2@127.0.0.1:9", "MlflowException"), (f"sqlite:///{tmp_path}/a-file/mlflow.db", "")):
        (tmp_path / "a-file").write_text("x")
        with pytest.raises(UserInputError) as refused:  # was a traceback of 40-109 lines
            prepare_store(TrackingConfig(uri=uri))
        message = str(refused.value)
        assert message.startswith(f"tracking.uri={uri.replace('hunter2', '***')}: cannot use the tracking store: {why}")
        assert "\n" not in message and "hunter2" not in message


def test_s3_locations_that_cannot_be_used_are_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    s3_endpoint: str) -> None:
    from dataio.storage import check_location, s3_filesystem
    s3_filesystem().mkdir("present")
    check_location("s3://present/shards", "data.shards")  # reachable: no error
    with pytest.raises(ValueError, match=r"^data\.shards=s3://absent/shards: no such bucket \(endpoint http"):
        check_location("s3://absent/shards", "data.shards")
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    with pytest.raises(ValueError, match=r"^cluster\.storage_path=s3://present/runs: no AWS credentials: set "
                                         r"AWS_ACCESS_KEY_ID"):
        check_location("s3://present/runs", "cluster.storage_path", write=True)


def test_errors_a_restart_cannot_fix_end_the_run() -> None:
    """Ray hands the controller's callbacks each worker's exception wrapped with its traceback text."""
    from ray.train.v2._internal.exceptions import UserExceptionWithTraceback

    def worker_errors(*errors: Exception) -> dict[int, Exception]:
        return {rank: UserExceptionWithTraceback(err, f"Traceback ...\n{err!r}") for rank, err in enumerate(errors)}

    stop = StopWhenRetryCannotHelp()
    with pytest.raises(NotRetriedError, match=r"^CheckpointSpaceError: no space left on /ck: 0 MB free \(rank 1; "
                                              r"not retried: a restart would fail the same way\)$"):
        stop.after_exception(None, worker_errors(RuntimeError("gloo: connection reset"),
                                                 CheckpointSpaceError("no space left on /ck: 0 MB free")))
    # Retried as before: a crash, a lost connection, a location that may come back.
    stop.after_exception(None, worker_errors(RuntimeError("gloo: connection reset"), ConnectionError("peer gone"),
                                             UnusableLocationError("data.shards s3://b/p: endpoint unreachable")))


def test_a_failed_run_left_running_is_marked_failed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rank 0 ends its MLflow run FAILED as it cleans up, unless Ray stopped it first: after Ray gives up,
    the launcher marks this run's (found by its checkpoint folder) FAILED; other runs are left alone."""
    from mlflow.tracking import MlflowClient

    from cluster.launch import end_unfinished_runs
    from trainer.tracking import prepare_store

    monkeypatch.chdir(tmp_path)
    cfg = resolve(load(REPO / "configs" / "demo.yaml"), embedded=True)
    experiment = prepare_store(cfg.tracking)
    client = MlflowClient(tracking_uri=cfg.tracking.uri)
    ours = client.create_run(experiment, tags={"checkpoint_dir": str(Path(cfg.checkpoint.dir).resolve())})
    other = client.create_run(experiment, tags={"checkpoint_dir": str(tmp_path / "checkpoints" / "other")})
    finished = client.create_run(experiment, tags={"checkpoint_dir": str(Path(cfg.checkpoint.dir).resolve())})
    client.set_terminated(finished.info.run_id, "FINISHED")  # an earlier run of the same name
    end_unfinished_runs(cfg)
    status = {run: client.get_run(run.info.run_id).info.status for run in (ours, other, finished)}
    assert list(status.values()) == ["FAILED", "RUNNING", "FINISHED"], status


def test_an_interrupted_run_ends_killed_and_says_how_to_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture) -> None:
    """Ray Train's SIGINT handler logs that it got the signal, aborts the run, then exits the driver
    (SystemExit) or leaves its wait on the aborted controller failing: either way the run is KILLED in
    MLflow and the CLI exits 130. Without the signal (Tune stopping a sweep's trial) they pass through
    untouched. (The signal itself, through a real run: docs/architecture.md.)"""
    import logging

    from mlflow.tracking import MlflowClient
    from ray.exceptions import RayActorError

    import cluster.launch
    from cluster.cli import main
    from trainer.tracking import prepare_store

    monkeypatch.chdir(tmp_path)
    cfg = resolve(load(REPO / "configs" / "demo.yaml"), embedded=True)
    client = MlflowClient(tracking_uri=cfg.tracking.uri)
    for how, signalled, ends, status in ((SystemExit(0), True, cluster.launch.TrainingInterrupted, "KILLED"),
                                         (RayActorError(), True, cluster.launch.TrainingInterrupted, "KILLED"),
                                         (RayActorError(), False, RayActorError, "RUNNING"),
                                         (SystemExit(0), False, SystemExit, "RUNNING")):
        run = client.create_run(prepare_store(cfg.tracking),
                                tags={"checkpoint_dir": str(Path(cfg.checkpoint.dir).resolve())})

        class Aborted:
            def fit(self):
                if signalled:  # as Ray's handler says it, in the driver
                    logging.getLogger("ray.train.v2.api.data_parallel_trainer").info(
                        "Received SIGINT. Gracefully aborting the training run")
                raise how

        monkeypatch.setattr(cluster.launch, "torch_trainer", lambda *args, **kwargs: Aborted())
        with pytest.raises(ends) as ended:
            cluster.launch.fit(cfg)
        if signalled:
            assert str(ended.value).startswith("training run 'demo' interrupted: the same command again resumes it")
        assert client.get_run(run.info.run_id).info.status == status
    monkeypatch.setattr(cluster.launch, "train", lambda cfg: (_ for _ in ()).throw(
        cluster.launch.TrainingInterrupted("training run 'demo' interrupted: ...")))
    capsys.readouterr()
    assert main(["train", "--config", str(REPO / "configs" / "demo.yaml")]) == 130
    assert capsys.readouterr().err == "vid2vid: training run 'demo' interrupted: ...\n"  # no traceback
