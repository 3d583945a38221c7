"""`vid2vid train` through Ray Train (embedded Ray, 2 workers, gloo, ZeRO 2), then the registry.

One training run serves the module (each launch costs ~1 min on 2 busy cores):
  1  `vid2vid train` with max_failures=1; once the first checkpoint is reported, one Ray Train worker
     is killed: Ray restarts the group, which resumes from the checkpoint and finishes.
  2  the trainer's local checkpoint folder is deleted and the same command runs again: the workers
     restore Ray's copy from storage_path and resume at the end (no step is trained twice).
  3  against a real `mlflow server` on 127.0.0.1 (the run tracked there): `model publish --run`,
     `model list`, then `model fetch` and `generate` from separate processes, and the model loaded as
     pyfunc matches the exported generator run frame by frame.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
import yaml

from live_servers import embedded_ray_env, start_mlflow_server, stop_group, synth_and_pack

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "tiny_train.yaml"
BIN = Path(sys.executable).parent
NAME = "tiny-ray"


def env() -> dict[str, str]:
    return embedded_ray_env(PYTHONUNBUFFERED="1")


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synth_and_pack(CONFIG, tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory):
    """A real tracking server for the module's runs."""
    proc, url = start_mlflow_server(tmp_path_factory.mktemp("mlflow"), env())
    yield url
    stop_group(proc)


def train_command(work: Path, shards: Path, tracking: str) -> list[str]:
    return [str(BIN / "vid2vid"), "train", "--config", str(CONFIG),
            f"data.shards={shards / 'shards'}", "train.generator.zero_stage=2", "train.discriminator.zero_stage=2",
            "checkpoint.every_steps=2", "checkpoint.keep=4", f"tracking.uri={tracking}",
            # held-out scores before each checkpoint (the tiny shards have no val split: the train clips)
            "eval.at_checkpoint=true", "eval.split=train", "checkpoint.keep_best=eval/psnr",
            f"cluster.name={NAME}", "cluster.num_workers=2", "cluster.max_failures=1",
            f"cluster.storage_path={work / 'ray-storage'}", f"cluster.temp_dir={work / 'ray'}"]


def ray_workers_of(root_pid: int) -> list[psutil.Process]:
    try:
        family = psutil.Process(root_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    found = []
    for proc in family:
        try:
            if "RayTrainWorker" in " ".join(proc.cmdline()):
                found.append(proc)
        except psutil.Error:
            continue
    return found


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, shards: Path, mlflow_server: str) -> dict:
    """Run 1: a worker is killed after the first reported checkpoint; the run must still finish."""
    work = Path(tempfile_short())
    log_path = work / "train1.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(train_command(work, shards, mlflow_server), cwd=work, env=env(),
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    killed: list[int] = []
    listening: set[tuple[str, str, int]] = set()

    def kill_after_first_checkpoint() -> None:
        storage = work / "ray-storage" / NAME
        while proc.poll() is None and not killed:
            workers = ray_workers_of(proc.pid)
            listening.update(listening_sockets(proc.pid, work))
            if list(storage.glob("step-000000002_*")) and workers:
                victim = max(workers, key=lambda p: p.pid)
                victim.kill()
                killed.append(victim.pid)
            time.sleep(0.2)

    watcher = threading.Thread(target=kill_after_first_checkpoint, daemon=True)
    watcher.start()
    try:
        proc.wait(timeout=540)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    watcher.join(timeout=5)
    output = log_path.read_text()
    assert proc.returncode == 0, output[-6000:]
    yield {"work": work, "output": output, "killed": killed, "shards": shards, "tracking": mlflow_server,
           "listening": listening}
    shutil.rmtree(work, ignore_errors=True)


def listening_sockets(root_pid: int, work: Path) -> set[tuple[str, str, int]]:
    """(process name, address, port) of every listening TCP socket of the run's processes: the driver's
    tree, and Ray's processes that run from its session folder under ``work``."""
    try:
        family = [psutil.Process(root_pid), *psutil.Process(root_pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return set()
    for proc in psutil.process_iter():
        try:
            if proc not in family and str(work) in " ".join(proc.cmdline()):
                family.append(proc)
        except psutil.Error:
            continue
    found = set()
    for proc in family:
        try:
            found.update((proc.name(), c.laddr.ip, c.laddr.port) for c in proc.net_connections(kind="inet")
                         if c.status == psutil.CONN_LISTEN)
        except psutil.Error:
            continue
    return found


def test_every_socket_of_the_embedded_ray_is_on_loopback(trained: dict) -> None:
    """The README says "embedded Ray on 127.0.0.1": the GCS, raylet, agents, driver and Train
    workers listen there (IPv4-mapped loopback counts). The one exception the README names: rank 0's
    torch.distributed rendezvous store (c10d TCPStore), which torch binds to every interface."""
    names = {name for name, _, _ in trained["listening"]}
    assert {"gcs_server", "raylet"} <= names and any(n.startswith("ray::RayTrainWorker") for n in names)
    elsewhere = {s for s in trained["listening"] if s[1] not in ("127.0.0.1", "::ffff:127.0.0.1", "::1")}
    # A Ray worker's process title follows the task it runs: the store's one port, in a Ray worker.
    assert len({port for _, _, port in elsewhere}) <= 1, elsewhere
    assert all(name.startswith("ray::") for name, _, _ in elsewhere), elsewhere


def tempfile_short() -> str:
    # Ray's session folder holds Unix sockets: keep the path well under their 107-byte limit.
    import tempfile
    return tempfile.mkdtemp(prefix="v2vtrain-", dir="/tmp")


def run_id_of(output: str) -> str:
    line = next(line for line in output.splitlines() if line.strip().startswith("mlflow run:"))
    return line.split()[2]


def test_worker_failure_restarts_from_the_checkpoint(trained: dict) -> None:
    from mlflow.tracking import MlflowClient
    output = trained["output"]
    assert trained["killed"], "no Ray Train worker was found to kill: " + output[-3000:]
    assert f"run '{NAME}' done: epoch 3, step 8" in output
    assert "resumed from" in output  # the restarted group continued from a checkpoint, not from scratch
    client = MlflowClient(tracking_uri=trained["tracking"])
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert len(runs) == 1 and runs[0].info.run_id == run_id_of(output)  # the restart continued the run
    assert runs[0].info.status == "FINISHED"
    steps = {m.step for m in client.get_metric_history(runs[0].info.run_id, "g/total")}
    assert steps == set(range(1, 9))
    names = {a.path for a in client.list_artifacts(runs[0].info.run_id)}
    assert {"export", "config.yaml", "samples"} <= names
    reported = sorted(p.name for p in (trained["work"] / "ray-storage" / NAME).glob("step-*"))
    assert reported[-1].startswith("step-000000008_")


def test_same_command_again_resumes_from_ray_storage(trained: dict) -> None:
    work = trained["work"]
    local = work / "checkpoints" / "tiny" / NAME
    assert (local / "step-000000008").is_dir()
    shutil.rmtree(local)  # only Ray's copy is left: as on a new machine
    from mlflow.tracking import MlflowClient
    client = MlflowClient(tracking_uri=trained["tracking"])
    logged_before = len(client.get_metric_history(run_id_of(trained["output"]), "g/total"))
    proc = subprocess.run(train_command(work, trained["shards"], trained["tracking"]), cwd=work, env=env(),
                          capture_output=True, text=True, timeout=400)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    assert "restored checkpoint" in output and "step-000000008" in output
    assert "resumed from" in output and f"run '{NAME}' done: epoch 3, step 8" in output
    assert run_id_of(output) == run_id_of(trained["output"])
    history = client.get_metric_history(run_id_of(output), "g/total")
    assert len(history) == logged_before  # resumed at the end: no step trained again
    assert (local / "export" / "generator.pt").is_file()


def cli(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "vid2vid"), *args], cwd=cwd, env=env(), capture_output=True, text=True,
                          timeout=timeout)


def test_publish_fetch_generate_from_other_processes(trained: dict, tmp_path: Path) -> None:
    tracking, run_id = trained["tracking"], run_id_of(trained["output"])
    published = cli("model", "publish", "--run", run_id, "--name", "tiny-vid2vid", "--alias", "champion",
                    "--tracking-uri", tracking, cwd=tmp_path)
    assert published.returncode == 0, published.stderr[-4000:]
    assert "as models:/tiny-vid2vid@champion" in published.stdout
    listed = cli("model", "list", "--tracking-uri", tracking, cwd=tmp_path)
    assert listed.returncode == 0 and any(line.split()[:3] == ["tiny-vid2vid", "1", "champion"]
                                          for line in listed.stdout.splitlines()), listed.stdout

    fetched = cli("model", "fetch", "models:/tiny-vid2vid@champion", "--dest", str(tmp_path / "got"),
                  "--tracking-uri", tracking, cwd=tmp_path)
    assert fetched.returncode == 0, fetched.stderr[-4000:]
    assert (tmp_path / "got" / "model" / "MLmodel").is_file()
    # A model from code: the weights a state dict, the description JSON, not one pickle.
    mlmodel = yaml.safe_load((tmp_path / "got" / "model" / "MLmodel").read_text())
    assert "pytorch" not in mlmodel["flavors"] and mlmodel["flavors"]["python_function"].get("model_code_path")
    assert not [p for p in (tmp_path / "got" / "model").rglob("*") if p.suffix in (".pkl", ".pickle")]
    weights = next((tmp_path / "got" / "model").rglob("weights.pt"))
    assert all(isinstance(v, torch.Tensor) for v in torch.load(weights, weights_only=True).values())
    # The final stage's sample at least: a sample still buffered in the worker killed by the first
    # test is lost with it (the tracker sends artifacts off the training thread).
    samples = sorted(p.name for p in (tmp_path / "got" / "samples").glob("*.mp4"))
    assert "epoch0003-scale1-32x64.mp4" in samples, samples
    config = yaml.safe_load((tmp_path / "got" / "config.yaml").read_text())
    assert config["cluster"]["name"] == NAME and config["train"]["generator"]["zero_stage"] == 2

    labels = trained["shards"] / "synth" / "seq_0001"
    made = cli("generate", "--model", "models:/tiny-vid2vid@champion", "--labels", str(labels),
               "--out", str(tmp_path / "out.mp4"), "--side-by-side", "--tracking-uri", tracking, cwd=tmp_path)
    assert made.returncode == 0, made.stderr[-4000:]
    from dataio.video import decode, probe
    info = probe(tmp_path / "out.mp4")
    assert (info["frames"], info["height"], info["width"]) == (8, 32, 128)  # 8 label maps, labels | output
    assert decode(tmp_path / "out.mp4")[:, :, 64:].std() > 1.0  # the generated half is not blank


def test_publish_the_best_checkpoint_by_a_held_out_score(trained: dict, tmp_path: Path) -> None:
    """`model publish --run RUN --best eval/psnr`: the run's kept checkpoint with the best recorded
    PSNR, its scores on the registered version and in `model list`."""
    from mlflow.tracking import MlflowClient

    from trainer.checkpoint import best_checkpoint
    tracking, run_id = trained["tracking"], run_id_of(trained["output"])
    published = cli("model", "publish", "--run", run_id, "--best", "eval/psnr", "--name", "tiny-best",
                    "--alias", "best", "--tracking-uri", tracking, cwd=tmp_path)
    assert published.returncode == 0, published.stderr[-4000:]
    folder, scores = best_checkpoint(trained["work"] / "checkpoints" / "tiny" / NAME, "eval/psnr")
    version = MlflowClient(tracking_uri=tracking).get_model_version_by_alias("tiny-best", "best")
    assert version.run_id == run_id and version.tags["checkpoint"] == str(folder)
    assert float(version.tags["eval/psnr"]) == pytest.approx(scores["eval/psnr"], rel=1e-5)
    listed = cli("model", "list", "--tracking-uri", tracking, cwd=tmp_path)
    assert any(line.split()[:3] == ["tiny-best", "1", "best"] and f"psnr={version.tags['eval/psnr']}" in line
               for line in listed.stdout.splitlines()), listed.stdout
    refused = cli("model", "publish", "--run", run_id, "--best", "eval/fid", "--name", "x", "--tracking-uri", tracking,
                  cwd=tmp_path)
    assert refused.returncode != 0 and "--best eval/fid: not a held-out score" in refused.stderr


PYFUNC = """
import sys, numpy as np, mlflow.pyfunc
model = mlflow.pyfunc.load_model("models:/tiny-vid2vid@champion")
out = model.predict(np.load(sys.argv[1]))
np.save(sys.argv[2], out)
"""


def test_pyfunc_matches_the_exported_generator(trained: dict, tmp_path: Path) -> None:
    """Label video in, RGB video out: another batch, length and size than the signature's example;
    plain `mlflow.pyfunc.load_model` with unpickling forbidden."""
    export = trained["work"] / "checkpoints" / "tiny" / NAME / "export" / "generator.pt"
    if not export.is_file():  # test 2 deleted the local folder; its re-run exported again
        pytest.fail(f"no export at {export}")
    ids = torch.randint(0, 8, (2, 5, 64, 32))
    labels = torch.nn.functional.one_hot(ids, 9).permute(0, 1, 4, 2, 3).float().numpy()
    np.save(tmp_path / "in.npy", labels)
    script = tmp_path / "pyfunc.py"
    script.write_text(PYFUNC)
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "in.npy"), str(tmp_path / "out.npy")],
                          env=dict(env(), MLFLOW_TRACKING_URI=trained["tracking"],
                                   MLFLOW_ALLOW_PICKLE_DESERIALIZATION="false"),  # nothing to unpickle
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    got = np.load(tmp_path / "out.npy")
    assert got.shape == (2, 5, 64, 32, 3) and got.dtype == np.uint8
    from models.generator import generate_clip
    from trainer.export import load_generator
    with torch.no_grad():
        ref = generate_clip(load_generator(export), torch.from_numpy(labels)).images
    expected = ((ref.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 1, 3, 4, 2).numpy()
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1


def test_a_model_published_as_a_pickle_still_loads_with_a_warning(trained: dict, tmp_path: Path) -> None:
    """Versions published before models from code were pickles of VideoGenerator (PyTorch flavour)."""
    import mlflow
    import mlflow.pytorch

    from cluster.registry import video_model
    from trainer.checkpoint import load_trainer_state, latest_checkpoint
    local = trained["work"] / "checkpoints" / "tiny" / NAME
    old = video_model(local / "export" / "generator.pt", load_trainer_state(latest_checkpoint(local))["config"])
    mlflow.set_tracking_uri(trained["tracking"])
    with mlflow.start_run():
        mlflow.pytorch.log_model(old, name="generator", registered_model_name="tiny-old", serialization_format="pickle",
                                 code_paths=[str(REPO / p) for p in ("cluster", "models", "dataio")],
                                 pip_requirements=["torch"])
    labels = trained["shards"] / "synth" / "seq_0001"
    made = cli("generate", "--model", "models:/tiny-old/1", "--labels", str(labels), "--out", str(tmp_path / "old.mp4"),
               "--tracking-uri", trained["tracking"], cwd=tmp_path)
    assert made.returncode == 0, made.stderr[-4000:]
    assert "was published as a pickle" in made.stderr and "vid2vid model publish --run RUN_ID" in made.stderr
    assert (tmp_path / "old.mp4").stat().st_size > 0
