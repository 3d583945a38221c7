"""`make demo` as the README shows it, in a fresh folder (the Makefile, configs and the set-up .venv
linked in): the whole system end to end on 2 embedded Ray workers, then `make demo` again, which
resumes the same run instead of training again, as does the README's `vid2vid train --config
configs/demo.yaml`. A successful demo prints no traceback."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def make_demo(work: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED="1",
               TORCH_EXTENSIONS_DIR=os.environ.get("TORCH_EXTENSIONS_DIR",
                                                   str(Path.home() / ".cache" / "torch_extensions_vid2vid")))
    return subprocess.run([shutil.which("make") or "make", "demo"], cwd=work, env=env, capture_output=True,
                          text=True, timeout=900)


def test_make_demo_then_again_resumes(tmp_path: Path) -> None:
    for name in ("Makefile", "configs", ".venv", "pyproject.toml", "constraints.txt"):
        (tmp_path / name).symlink_to(REPO / name)
    first = make_demo(tmp_path)
    output = first.stdout + first.stderr
    assert first.returncode == 0, output[-6000:]
    assert "Traceback" not in output, output[-6000:]
    for step in ("[1/6] synthetic paired videos", "[3/6] training through Ray Train", "[6/6] scoring"):
        assert step in first.stdout
    assert re.search(r"epoch \d+ done: step \d+, g/total", first.stdout)  # the trainer's progress lines
    assert (tmp_path / "out" / "demo.mp4").is_file() and (tmp_path / "out" / "eval" / "report.json").is_file()
    assert (tmp_path / "checkpoints" / "demo" / "logs" / "rank-0.log").is_file()
    trained = re.search(r"epoch (\d+), step (\d+), MLflow run (\w+)", first.stdout)
    assert trained and "version 1" in first.stdout

    again = make_demo(tmp_path)
    assert again.returncode == 0, (again.stdout + again.stderr)[-6000:]
    resumed = re.search(r"epoch (\d+), step (\d+), MLflow run (\w+)", again.stdout)
    assert resumed and resumed.groups() == trained.groups()  # same run, nothing trained again
    assert not re.search(r"epoch \d+ done:", again.stdout) and "version 2" in again.stdout

    # The README's training command, as written, on the demo's config: the same run, resumed, done.
    train = subprocess.run([str(tmp_path / ".venv" / "bin" / "vid2vid"), "train", "--config", "configs/demo.yaml"],
                           cwd=tmp_path, env=dict(os.environ, PYTHONUNBUFFERED="1"), capture_output=True, text=True,
                           timeout=600)
    assert train.returncode == 0, (train.stdout + train.stderr)[-6000:]
    epoch, step, run_id = trained.groups()
    assert f"run 'demo' done: epoch {epoch}, step {step}" in train.stdout and f"mlflow run:  {run_id}" in train.stdout
    assert not re.search(r"epoch \d+ done:", train.stdout)
