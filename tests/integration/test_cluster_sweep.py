"""`vid2vid sweep` on an embedded Ray: Tune + ASHA over the demo sweep's keys, each trial a Ray Train
run, MLflow parent and child runs, the best trial's generator published as `champion`."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "sweep_demo.yaml"
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> dict:
    work = Path(tempfile.mkdtemp(prefix="v2vsweep-", dir="/tmp"))  # short: Ray's sockets live under it
    from cluster.config import load
    from dataio import pack, synth
    cfg = load(CONFIG, [f"data.shards={work}/shards", f"data.synth.out={work}/synth", f"data.pack.source={work}/synth"])
    synth.generate(cfg.data.synth)
    pack.pack(cfg.data, progress=False)
    env = dict(os.environ, OMP_NUM_THREADS="1", MLFLOW_DISABLE_TELEMETRY="true", RAY_USAGE_STATS_ENABLED="0",
               RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_AUTH_MODE="disabled",
               TORCH_EXTENSIONS_DIR=os.environ.get("TORCH_EXTENSIONS_DIR",
                                                   str(Path.home() / ".cache" / "torch_extensions_vid2vid")))
    env.pop("RAY_ADDRESS", None)
    uri = f"sqlite:///{work / 'mlflow.db'}"
    proc = subprocess.run(
        [str(BIN / "vid2vid"), "sweep", "--config", str(CONFIG), f"data.shards={work}/shards",
         "sweep.num_samples=2", f"tracking.uri={uri}", f"cluster.storage_path={work}/runs",
         f"cluster.temp_dir={work}/ray", f"checkpoint.dir={work}/checkpoints"],
        cwd=work, env=env, capture_output=True, text=True, timeout=540)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-6000:]
    yield {"out": proc.stdout, "uri": uri}
    import shutil
    shutil.rmtree(work, ignore_errors=True)


def test_table_of_trials_and_the_best_published(swept: dict) -> None:
    lines = swept["out"].splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:1] == ["TRIAL"])
    assert lines[header].split() == ["TRIAL", "train.generator.lr", "train.discriminator.lr", "model.generator.ngf",
                                     "model.loss.temporal_gan", "g/flow", "REPORTS", "STATUS", "RUN"]
    rows = [line.split() for line in lines[header + 1:header + 3]]
    assert rows[0][0] == "*" and all(row[-2] == "done" for row in rows)
    assert "published models:/vid2vid-sweep@champion (version 1)" in swept["out"]


def test_mlflow_parent_with_a_child_run_per_trial(swept: dict) -> None:
    from mlflow.tracking import MlflowClient
    client = MlflowClient(tracking_uri=swept["uri"])
    runs = client.search_runs([client.get_experiment_by_name("vid2vid-sweep").experiment_id])
    parents = [r for r in runs if r.info.run_name.startswith("sweep-")]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 2 and len(runs) == 3
    best = parent.data.tags["best_run_id"]
    assert best in {c.info.run_id for c in children}
    assert parent.data.params["sweep.metric"] == "g/flow"
    champion = client.get_model_version_by_alias("vid2vid-sweep", "champion")
    assert champion.run_id == best
    assert f"MLflow run {best}" in swept["out"]
