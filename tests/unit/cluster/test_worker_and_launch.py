"""Pure parts of the Ray Train launch: path resolution, report names, metrics, the logged config."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from cluster.config import load
from cluster.launch import resolve
from cluster.worker import CheckpointReporter, redacted_yaml, report_name, trainer_name

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
