"""Where a Ray-launched run's logs go: worker output into files, the trainer's progress lines to the console."""
from __future__ import annotations

import io
import logging
import subprocess
import sys
from pathlib import Path

from cluster.run_log import ProgressTail, progress_line, ray_to_file, worker_log

REPO = Path(__file__).resolve().parents[3]


def test_progress_lines_are_rank_0_trainer_lines() -> None:
    assert progress_line("2026-12-03 10:00:00,1 rank0 trainer.loop: epoch 2 done: step 8") == "epoch 2 done: step 8"
    assert progress_line("2026-12-03 10:00:00,1 rank0 trainer.validation: eval at step 3") == "eval at step 3"
    assert progress_line("2026-12-03 10:00:00,1 rank1 trainer.loop: epoch 2 done") is None
    assert progress_line("[2026-12-03 10:00:00] [INFO] [engine.py:123] DeepSpeed info: ...") is None
    assert progress_line("Traceback (most recent call last):") is None


def test_progress_tail_prints_only_new_whole_progress_lines(tmp_path: Path) -> None:
    log = tmp_path / "rank-0.log"
    log.write_text("x rank0 trainer.loop: from an earlier launch\n")
    out = io.StringIO()
    with ProgressTail(log, out, interval_s=0.05):
        with log.open("a") as handle:
            handle.write("x rank0 ray.train: chatter\nx rank0 trainer.loop: epoch 0 done: step 2\n")
            handle.write("x rank0 trainer.loop: half a li")  # written on in the next instant
    assert out.getvalue() == "  epoch 0 done: step 2\n"


def test_worker_output_goes_to_its_file_native_writes_included(tmp_path: Path) -> None:
    code = ("import os, sys, logging; from cluster.run_log import redirect_worker_output; "
            f"print(redirect_worker_output({str(tmp_path)!r}, 1)); "
            "os.write(1, b'native stdout\\n'); os.write(2, b'native stderr\\n'); "
            "logging.basicConfig(); logging.getLogger('deepspeed').warning('ds says')")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert proc.stdout == "" and proc.stderr == ""  # nothing reached the console
    text = worker_log(tmp_path, 1).read_text()
    assert "native stdout" in text and "native stderr" in text and "ds says" in text
    assert str(worker_log(tmp_path, 1)) in text


def test_ray_loggers_write_to_the_driver_log_only(tmp_path: Path, capsys) -> None:
    ray_to_file(tmp_path / "logs" / "driver.log")
    logging.getLogger("ray.train").warning("Failed to query Ray Train Controller actor state")
    logging.getLogger("ray").handlers[0].flush()
    assert "Failed to query" in (tmp_path / "logs" / "driver.log").read_text()
    assert "Failed to query" not in capsys.readouterr().err
    for name in ("ray", "ray.train", "ray.tune", "ray.data", "ray.serve"):  # leave the loggers as they were
        logging.getLogger(name).handlers, logging.getLogger(name).propagate = [], True
