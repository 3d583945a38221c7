"""`vid2vid submit` / `vid2vid jobs` against a real Ray head started here on 127.0.0.1.

The head runs in its own temp dir and process group and is stopped by the test (never `ray stop`,
which would stop every Ray on the machine). Jobs are submitted from a manifest made from the real
`ray_job.yaml` (its runtime env, working dir and all), with a tiny entrypoint in place of the
paper-scale one: a 1-epoch training job that must SUCCEED, a job with a bad config whose error the
CLI must report, and a job stopped by `vid2vid jobs stop`.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from live_servers import free_port, wait_for_http

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def env(home: Path) -> dict[str, str]:
    out = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0",
               RAY_AUTH_MODE="disabled", MLFLOW_DISABLE_TELEMETRY="true", OMP_NUM_THREADS="1",
               PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", HOME=str(home),
               TORCH_EXTENSIONS_DIR=os.environ.get("TORCH_EXTENSIONS_DIR",
                                                   str(Path.home() / ".cache" / "torch_extensions_vid2vid")))
    out.pop("RAY_ADDRESS", None)
    return out


@pytest.fixture(scope="module")
def head():
    """A Ray head with a dashboard (the job API) on 127.0.0.1, stopped with its process group.

    3 logical CPUs on 2 cores: the job's driver holds one (ray_job.yaml's entrypointNumCpus), the
    two training workers one each.
    """
    root = Path(tempfile.mkdtemp(prefix="v2vjobs-", dir="/tmp"))  # short: Ray puts sockets under it
    home = root / "home"
    home.mkdir()
    port, dashboard = free_port(), free_port()
    log = open(root / "head.log", "w")
    proc = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(port),
         "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard), "--include-dashboard", "true",
         "--num-cpus", "3", "--temp-dir", str(root / "ray"), "--disable-usage-stats"],
        stdout=log, stderr=subprocess.STDOUT, env=env(home), start_new_session=True)
    address = f"http://127.0.0.1:{dashboard}"
    wait_for_http(proc, f"{address}/api/version", root / "head.log", "ray head", timeout_s=120)
    yield {"address": address, "root": root, "home": home}
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # whatever of the group is left
    except ProcessLookupError:
        pass
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("jobdata")
    from cluster.config import load
    from dataio import pack, synth
    cfg = load(REPO / "configs" / "tiny_train.yaml",
               [f"data.shards={root}/shards", f"data.synth.out={root}/synth", f"data.pack.source={root}/synth"])
    synth.generate(cfg.data.synth)
    pack.pack(cfg.data, progress=False)
    return root / "shards"


def manifest(folder: Path, entrypoint: str) -> Path:
    """ray_job.yaml with another entrypoint; its relative working_dir pinned to the checkout."""
    doc = yaml.safe_load((REPO / "ray_job.yaml").read_text())
    doc["spec"]["entrypoint"] = entrypoint
    runtime_env = yaml.safe_load(doc["spec"]["runtimeEnvYAML"])
    runtime_env["working_dir"] = str(REPO)
    doc["spec"]["runtimeEnvYAML"] = yaml.safe_dump(runtime_env)
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def vid2vid(head: dict, *args: str, timeout: int = 400) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "vid2vid"), *args], env=env(head["home"]), capture_output=True, text=True,
                          timeout=timeout, cwd=head["root"])


def tiny_train(shards: Path, work: Path, *extra: str) -> str:
    return " ".join(["vid2vid train --config configs/tiny_train.yaml", f"data.shards={shards}",
                     "train.epochs=1", "train.decay_epochs=0", "train.steps_per_epoch=1",
                     f"tracking.uri=sqlite:///{work / 'mlflow.db'}", f"checkpoint.dir={work / 'checkpoints'}",
                     f"cluster.storage_path={work / 'storage'}", "cluster.num_workers=1", *extra])


def test_training_job_succeeds(head: dict, shards: Path, tmp_path: Path) -> None:
    from trainer.config import TrackingConfig
    from trainer.tracking import prepare_store
    prepare_store(TrackingConfig(uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="tiny"))
    job = manifest(tmp_path, tiny_train(shards, tmp_path))
    proc = vid2vid(head, "submit", str(job), "--address", head["address"], "--wait", "cluster.name=job-run")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "SUCCEEDED" in proc.stdout and "cluster.name=job-run" in proc.stdout
    job_id = proc.stdout.split()[1]
    status = vid2vid(head, "jobs", "status", job_id, "--address", head["address"])
    assert status.returncode == 0 and f"{job_id}: SUCCEEDED" in status.stdout
    logs = vid2vid(head, "jobs", "logs", job_id, "--address", head["address"])
    assert "run 'job-run' done: epoch 1, step 1" in logs.stdout, logs.stdout[-3000:]
    followed = vid2vid(head, "jobs", "logs", job_id, "--follow", "--address", head["address"], timeout=120)
    assert followed.returncode == 0 and "run 'job-run' done: epoch 1, step 1" in followed.stdout  # ends with the job
    assert list((tmp_path / "storage" / "job-run").glob("step-000000001_*"))  # reported to the cluster's Ray
    listed = vid2vid(head, "jobs", "list", "--address", head["address"])
    assert any(line.startswith(job_id) and "SUCCEEDED" in line for line in listed.stdout.splitlines())


def test_failing_job_reports_its_error(head: dict, shards: Path, tmp_path: Path) -> None:
    job = manifest(tmp_path, tiny_train(shards, tmp_path))
    proc = vid2vid(head, "submit", str(job), "--address", head["address"], "--wait", "train.epochs=0")
    assert proc.returncode == 1
    assert "FAILED" in proc.stderr and "train.epochs" in proc.stderr, proc.stderr[-3000:]
    job_id = proc.stdout.split()[1]
    status = vid2vid(head, "jobs", "status", job_id, "--address", head["address"])
    assert f"{job_id}: FAILED" in status.stdout and "train.epochs" in status.stderr


def test_stop_a_running_job(head: dict, tmp_path: Path) -> None:
    job = manifest(tmp_path, "python -c 'import time; time.sleep(600)'")
    proc = vid2vid(head, "submit", str(job), "--address", head["address"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    job_id = proc.stdout.split()[1]
    from cluster import jobs
    deadline = time.monotonic() + 120
    while jobs.status(job_id, head["address"]).status != "RUNNING":
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(1)
    stopped = vid2vid(head, "jobs", "stop", job_id, "--address", head["address"])
    assert stopped.returncode == 0 and f"{job_id}: STOPPED" in stopped.stdout, stopped.stdout + stopped.stderr
