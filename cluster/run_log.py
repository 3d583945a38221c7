"""Where a Ray-launched training run writes its logs, and what reaches the console.

Ray's own messages (the controller's polling, autoscaling timeouts, worker start-up), DeepSpeed's and
everything a worker prints go to files under the run's checkpoint folder, ``<checkpoint.dir>/logs/``:
``driver.log`` for the process that launched the run, ``rank-N.log`` per worker (its file descriptors
are redirected, so output of native code lands there too). The console shows the project's own
progress: the trainer's lines of rank 0 (a stage change, a line per epoch with step, losses and
frames/s, held-out scores), then the result, and errors in one line.
"""
from __future__ import annotations

import logging
import os
import sys
import threading
from pathlib import Path
from typing import TextIO

LOG_DIR = "logs"
PROGRESS_LOGGERS = ("trainer.loop", "trainer.validation", "cluster.worker")
"""Rank 0's log lines from these loggers are the console's progress lines (resumes and restores too)."""
RAY_LOGGERS = ("ray", "ray.train", "ray.tune", "ray.data", "ray.serve")


def log_dir(checkpoint_dir: str | Path) -> Path:
    return Path(checkpoint_dir) / LOG_DIR


def worker_log(checkpoint_dir: str | Path, rank: int) -> Path:
    return log_dir(checkpoint_dir) / f"rank-{rank}.log"


def redirect_worker_output(checkpoint_dir: str | Path, rank: int) -> Path:
    """Point this worker's stdout and stderr (the file descriptors) at its log file; returns the path."""
    path = worker_log(checkpoint_dir, rank)
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    return path


def ray_to_file(path: Path) -> None:
    """The driver's Ray loggers write to ``path`` only, not to the console."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
    for name in RAY_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers = [handler]
        logger.propagate = False


class ProgressTail:
    """Prints rank 0's progress lines (``PROGRESS_LOGGERS``) from its log file as they are written."""

    def __init__(self, path: Path, out: TextIO | None = None, interval_s: float = 1.0) -> None:
        self.path, self.out, self.interval_s = path, out or sys.stdout, interval_s
        self._offset = path.stat().st_size if path.is_file() else 0  # only this launch's lines
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="progress-tail", daemon=True)

    def __enter__(self) -> ProgressTail:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._read()  # what was written in the last interval

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._read()

    def _read(self) -> None:
        if not self.path.is_file():
            return
        with self.path.open("rb") as handle:
            handle.seek(self._offset)
            data = handle.read()
        end = data.rfind(b"\n") + 1  # whole lines only: a line being written is read next time
        self._offset += end
        for line in data[:end].decode("utf-8", "replace").splitlines():
            shown = progress_line(line)
            if shown is not None:
                print(f"  {shown}", file=self.out, flush=True)


def progress_line(line: str) -> str | None:
    """The message of a rank-0 log line of a progress logger (``<time> rank0 <logger>: <message>``)."""
    for name in PROGRESS_LOGGERS:
        marker = f" rank0 {name}: "
        if marker in line:
            return line.split(marker, 1)[1]
    return None
