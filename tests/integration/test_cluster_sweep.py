"""`vid2vid sweep` on an embedded Ray: Tune + ASHA on held-out PSNR, each trial a Ray Train run that
scores the val clips before every checkpoint, MLflow parent and child runs, the best trial's best
checkpoint published as `champion` with its scores.

Two sweeps of the demo config (real data, real Ray, real MLflow on sqlite):
  A  4 trials, 2 at a time, over a learning-rate grid (two that learn, two that barely move): more
     trials than run at once (finished trials must give their CPUs back), ASHA stops the two that
     barely move at their first report, whatever the order (the trials are CPU-reproducible, and
     they score below both others).
  B  the README's search, interrupted with SIGINT after the first report: nothing is published.
"""
from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from live_servers import embedded_ray_env

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "sweep_demo.yaml"
BIN = Path(sys.executable).parent
GRID = "sweep.search={train.generator.lr: {grid: [1.0e-3, 3.0e-4, 1.0e-8, 1.0e-9]}}"


def sweep_command(work: Path, *overrides: str) -> list[str]:
    return [str(BIN / "vid2vid"), "sweep", "--config", str(CONFIG), f"data.shards={work}/data/sweep/shards",
            f"tracking.uri=sqlite:///{work / 'mlflow.db'}", f"cluster.storage_path={work}/runs",
            f"cluster.temp_dir={work}/ray", f"checkpoint.dir={work}/checkpoints", *overrides]


def workdir() -> Path:
    """The README's data commands for the sweep, as written, in a fresh folder (short: Ray's sockets live
    under it)."""
    work = Path(tempfile.mkdtemp(prefix="v2vsweep-", dir="/tmp"))
    (work / "configs").symlink_to(REPO / "configs")
    (work / ".venv").symlink_to(BIN.parent)
    subprocess.run(["bash", "-c", ".venv/bin/vid2vid data synth --config configs/sweep_demo.yaml && "
                    ".venv/bin/vid2vid data pack --config configs/sweep_demo.yaml"],
                   cwd=work, check=True, capture_output=True, timeout=300)
    assert (work / "data" / "sweep" / "shards" / "manifest.parquet").is_file()
    return work


@pytest.fixture(scope="module")
def swept() -> dict:
    work = workdir()
    proc = subprocess.run(sweep_command(work, GRID, "sweep.num_samples=1"), cwd=work, env=embedded_ray_env(),
                          capture_output=True, text=True, timeout=540)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-6000:]
    yield {"out": proc.stdout, "uri": f"sqlite:///{work / 'mlflow.db'}", "work": work}
    shutil.rmtree(work, ignore_errors=True)


def table(out: str) -> tuple[list[str], list[list[str]]]:
    """The header and the rows of the trials table, each row without the best's leading "*"."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:1] == ["TRIAL"])
    end = next(i for i in range(start, len(lines)) if lines[i].startswith("ranked by"))
    rows = [line.split() for line in lines[start + 1:end]]
    return lines[start].split(), [row[1:] if row[0] == "*" else row for row in rows]


def test_a_line_per_trial_and_asha_stops_the_trials_that_barely_learn(swept: dict) -> None:
    out = swept["out"]
    assert sum(" started: train.generator.lr=" in line for line in out.splitlines()) == 4
    header, rows = table(out)
    assert header == ["TRIAL", "train.generator.lr", "eval/psnr", "AT", "STEP", "eval/ssim", "eval/warp_error",
                      "eval/warp_ratio", "REPORTS", "STATUS", "RUN"]
    # trial, lr, psnr, step, ssim, warp error, warp ratio, reports, status (one or two words), run
    states = {row[1]: (row[7], " ".join(row[8:-1])) for row in rows}
    # 0.0003 scores below 0.001 at the first report: stopped if it reports second (timing decides).
    assert states.pop("0.0003") in (("2", "done"), ("1", "stopped early"))
    assert states == {"0.001": ("2", "done"), "1e-08": ("1", "stopped early"), "1e-09": ("1", "stopped early")}
    best_line = next(line for line in out.splitlines() if line.split()[:1] == ["*"])
    assert best_line.split()[2] == "0.001"
    assert "ranked by the best eval/psnr of any report (held-out, all at 32x64)" in out
    best = next(line for line in out.splitlines() if line.startswith("best: "))
    worst = next(line for line in out.splitlines() if line.startswith("worst: "))
    assert "eval/psnr" in best and "best - worst = +" in worst


def test_the_best_by_held_out_psnr_read_back_from_mlflow_is_the_champion(swept: dict) -> None:
    from mlflow.tracking import MlflowClient
    client = MlflowClient(tracking_uri=swept["uri"])
    runs = client.search_runs([client.get_experiment_by_name("vid2vid-sweep").experiment_id])
    parent = next(r for r in runs if r.info.run_name.startswith("sweep-"))
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert parent.info.status == "FINISHED" and len(children) == 4 and len(runs) == 5
    # ASHA stops trials mid-run: their runs end KILLED, not RUNNING forever. A stopped trial whose last
    # epoch (seconds here) ended before the stop reached it closed its own run FINISHED: that race is
    # Tune's, and FINISHED is then the truth. At least the trial that won is FINISHED.
    statuses = sorted(c.info.status for c in children)
    assert set(statuses) <= {"FINISHED", "KILLED"} and "FINISHED" in statuses, statuses
    # Each child's best held-out PSNR, and the step of it, from what the trials logged themselves.
    best_of = {c.info.run_id: max(client.get_metric_history(c.info.run_id, "eval/psnr"), key=lambda m: m.value)
               for c in children}
    winner = max(best_of, key=lambda run_id: best_of[run_id].value)
    assert parent.data.tags["best_run_id"] == winner
    assert parent.data.metrics["best/eval/psnr"] == pytest.approx(best_of[winner].value)
    assert parent.data.params["sweep.metric"] == "eval/psnr"
    champion = client.get_model_version_by_alias("vid2vid-sweep", "champion")
    assert champion.run_id == winner
    assert float(champion.tags["eval/psnr"]) == pytest.approx(best_of[winner].value, rel=1e-5)
    assert int(champion.tags["step"]) == best_of[winner].step and "eval/ssim" in champion.tags
    trials = client.download_artifacts(parent.info.run_id, "trials.txt", str(swept["work"]))
    assert Path(trials).read_text().splitlines()[0].split()[:2] == ["TRIAL", "train.generator.lr"]
    listed = subprocess.run([str(BIN / "vid2vid"), "model", "list", "--tracking-uri", swept["uri"]],
                            env=embedded_ray_env(), capture_output=True, text=True, timeout=120)
    row = next(line for line in listed.stdout.splitlines() if line.startswith("vid2vid-sweep"))
    assert f"psnr={champion.tags['eval/psnr']}" in row, listed.stdout


def test_an_interrupted_sweep_says_so_and_publishes_nothing() -> None:
    work = workdir()
    try:
        proc = subprocess.Popen(sweep_command(work), cwd=work, env=embedded_ray_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        seen = []
        for line in proc.stdout:  # the README's search; Ctrl-C once a trial has reported
            seen.append(line)
            if " report 1: " in line:
                proc.send_signal(signal.SIGINT)
                break
        rest, err = proc.communicate(timeout=300)
        out = "".join(seen) + rest
        assert proc.returncode == 130, out[-3000:] + err[-3000:]
        assert "nothing published" in err and "interrupted" in out
        from mlflow.tracking import MlflowClient
        client = MlflowClient(tracking_uri=f"sqlite:///{work / 'mlflow.db'}")
        assert client.search_registered_models() == []
        parent = next(r for r in client.search_runs([client.get_experiment_by_name("vid2vid-sweep").experiment_id])
                      if r.info.run_name.startswith("sweep-"))
        assert parent.info.status == "KILLED"
    finally:
        shutil.rmtree(work, ignore_errors=True)
