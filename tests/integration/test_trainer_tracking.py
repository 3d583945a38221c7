"""Tracking against a real MLflow server process on 127.0.0.1 that hangs mid-run, then answers again.

The server is frozen with SIGSTOP (its connections hang: the worst case for a client, worse than a
refused connection) and thawed with SIGCONT; a restart would cost ~20-30 s on this machine.
"""
from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path

import pytest

from live_servers import start_mlflow_server, stop_group
from trainer.config import TrackingConfig
from trainer.tracking import Tracker, redact


def history(uri: str, run_id: str, key: str) -> list[int]:
    from mlflow.tracking import MlflowClient
    return sorted(m.step for m in MlflowClient(tracking_uri=uri).get_metric_history(run_id, key))


def test_training_survives_a_hung_server(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.WARNING, logger="trainer.tracking")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    server, uri = start_mlflow_server(tmp_path)
    try:
        cfg = TrackingConfig(uri=uri, experiment="survive", run_name="r1", flush_every_s=0.2)
        tracker = Tracker(cfg, {"train.lr": 2e-4, "data.secret_key": "hunter2",
                                "tracking.uri": "http://bob:hunter2@host:5000"})
        for step in range(10):
            tracker.log_metrics({"g/total": step * 0.5, "d/total": 1.0}, step)
        assert tracker.flush(30)
        run_id = tracker.run_id
        assert history(uri, run_id, "g/total") == list(range(10))

        os.killpg(server.pid, signal.SIGSTOP)
        started = time.monotonic()
        for step in range(10, 20):
            tracker.log_metrics({"g/total": step * 0.5, "d/total": 1.0}, step)
        assert time.monotonic() - started < 0.5  # the training thread never waits on the network
        deadline = time.monotonic() + 30
        while not tracker.server_down and time.monotonic() < deadline:
            time.sleep(0.1)
        assert tracker.server_down
        assert tracker.pending == 20
        assert "is not answering" in caplog.text and "training goes on" in caplog.text

        os.killpg(server.pid, signal.SIGCONT)  # the server answers again
        assert tracker.flush(60)
        assert history(uri, run_id, "g/total") == list(range(20))
        assert "answers again" in caplog.text
        tracker.close()
        from mlflow.tracking import MlflowClient
        run = MlflowClient(tracking_uri=uri).get_run(run_id)
        assert run.info.status == "FINISHED"
        assert run.data.params["train.lr"] == "0.0002"
        assert run.data.params["data.secret_key"] == "***"
        assert "hunter2" not in run.data.params["tracking.uri"]
        assert "hunter2" not in caplog.text
    finally:
        stop_group(server)


def test_redact() -> None:
    assert redact("data.s3.secret_access_key", "abc") == "***"
    assert redact("tracking.uri", "https://u:p4ss@mlflow:5000/x") == "https://u:***@mlflow:5000/x"
    assert redact("train.lr", 0.1) == "0.1"


def test_a_resumed_run_logs_each_step_once(tmp_path: Path) -> None:
    """A run stopped after logging steps 1-4 and resumed from its step-2 checkpoint trains steps 3-4 again:
    the run keeps one value per step (the re-trained ones are the same values: resume is exact)."""
    from trainer.tracking import prepare_store
    cfg = TrackingConfig(uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="resume", flush_every_s=0.1)
    prepare_store(cfg)
    first = Tracker(cfg, {"train.epochs": 3})
    for step in range(1, 5):
        first.log_metrics({"g/total": float(step), "d/total": -float(step)}, step)
    assert first.flush(timeout_s=30)
    first.close("FAILED")
    resumed = Tracker(cfg, {"train.epochs": 3}, run_id=first.run_id)
    for step in range(3, 7):
        resumed.log_metrics({"g/total": float(step), "d/total": -float(step)}, step)
    assert resumed.flush(timeout_s=30)
    resumed.close()
    for key in ("g/total", "d/total"):
        assert history(cfg.uri, first.run_id, key) == [1, 2, 3, 4, 5, 6], key
