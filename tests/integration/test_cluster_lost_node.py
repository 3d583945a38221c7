"""A lost node, not just a lost process: Ray's own multi-node test cluster on this machine.

`ray.cluster_utils.Cluster` starts a head (no CPUs) and three raylets on loopback, one CPU each, as
three machines would be. `vid2vid train --address` runs 2 workers on 2 of them; after the first
reported checkpoint the node of one worker is removed without warning (its raylet and every process
on it killed). Ray Train restarts the worker group on the nodes left, the workers restore the last
reported checkpoint and the run finishes, every checkpoint it reported still there. On one machine
`checkpoint.dir` and `cluster.storage_path` are shared by all nodes, as they must be on a real
cluster (a shared file system, or `s3://` for the storage path).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from live_servers import embedded_ray_env, synth_and_pack

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "tiny_train.yaml"
BIN = Path(sys.executable).parent
NAME = "lost-node"


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synth_and_pack(CONFIG, tmp_path_factory.mktemp("tiny")) / "shards"


def raylet_of(node) -> psutil.Process:
    from ray._private import ray_constants
    return psutil.Process(node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid)


def train_workers_under(raylet: psutil.Process) -> list[psutil.Process]:
    found = []
    for proc in raylet.children(recursive=True):
        try:
            if "RayTrainWorker" in " ".join(proc.cmdline()):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def test_a_run_survives_the_loss_of_a_worker_s_node(shards: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    os.environ.update({k: v for k, v in embedded_ray_env().items() if k.startswith("RAY_")})
    from ray.cluster_utils import Cluster

    work = Path(tempfile.mkdtemp(prefix="v2vnode-", dir="/tmp"))  # short: Ray's sockets live under it
    # The head writes its address to <RAY_TMPDIR>/ray/ray_current_cluster, by default /tmp/ray, which a
    # fresh machine does not have until some other Ray has run there.
    monkeypatch.setenv("RAY_TMPDIR", str(work))
    (work / "ray").mkdir()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "node_ip_address": "127.0.0.1",
                                                            "include_dashboard": False, "temp_dir": str(work / "ray")})
    try:
        nodes = [cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1") for _ in range(3)]
        command = [str(BIN / "vid2vid"), "train", "--config", str(CONFIG), "--address", cluster.address,
                   f"data.shards={shards}", "checkpoint.every_steps=2", "checkpoint.keep=4",
                   f"checkpoint.dir={work / 'checkpoints'}", "tracking.enabled=false", f"cluster.name={NAME}",
                   "cluster.num_workers=2", "cluster.max_failures=2", f"cluster.storage_path={work / 'storage'}"]
        with open(work / "train.log", "w") as log:
            proc = subprocess.Popen(command, cwd=work, env=embedded_ray_env(), stdout=log, stderr=subprocess.STDOUT)
        storage = work / "storage" / NAME
        lost = None
        deadline = time.monotonic() + 400
        while proc.poll() is None and lost is None and time.monotonic() < deadline:
            if list(storage.glob("step-000000002_*")):
                busy = [n for n in nodes if train_workers_under(raylet_of(n))]
                if len(busy) == 2:
                    lost = busy[-1]
                    cluster.remove_node(lost, allow_graceful=False)
            time.sleep(0.2)
        assert lost is not None, (work / "train.log").read_text()[-4000:]
        proc.wait(timeout=500)
        output = (work / "train.log").read_text()
        assert proc.returncode == 0, output[-6000:]
        assert f"run '{NAME}' done: epoch 3, step 8" in output
        # Every step the run reported is still in Ray's storage, complete (a step saved again after the
        # restart, or at an epoch end right after a periodic save, is reported under a new name).
        reported = list(storage.glob("step-*"))
        assert sorted({p.name.split("_")[0] for p in reported}) == [
            "step-000000002", "step-000000004", "step-000000006", "step-000000008"], reported
        assert all((p / "trainer.pt").is_file() for p in reported)
        logs = "".join(p.read_text(errors="replace") for p in (work / "checkpoints" / NAME / "logs").glob("rank-*.log"))
        assert "resumed from" in logs
    finally:
        cluster.shutdown()
        shutil.rmtree(work, ignore_errors=True)
