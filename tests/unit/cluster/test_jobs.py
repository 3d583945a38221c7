"""ray_job.yaml: a KubeRay RayJob whose entrypoint and runtime env `vid2vid submit` reuses."""
from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import yaml

from cluster import jobs
from cluster.jobs import ManifestError, read_manifest, with_overrides

REPO = Path(__file__).resolve().parents[3]
MANIFEST = REPO / "ray_job.yaml"


def test_ray_job_yaml_is_a_kuberay_rayjob() -> None:
    doc = yaml.safe_load(MANIFEST.read_text())
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayJob"
    cluster = doc["spec"]["rayClusterSpec"]
    assert cluster["headGroupSpec"]["template"]["spec"]["containers"]
    gpu_groups = [g for g in cluster["workerGroupSpecs"]
                  if any("nvidia.com/gpu" in c["resources"]["limits"] for c in g["template"]["spec"]["containers"])]
    assert gpu_groups and gpu_groups[0]["replicas"] >= 1
    # Every pod, the head (driver: logs, publishing) included, mounts the one checkpoint volume.
    pods = [cluster["headGroupSpec"]] + cluster["workerGroupSpecs"]
    for pod in pods:
        spec = pod["template"]["spec"]
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in spec["volumes"] if "persistentVolumeClaim" in v}
        mounts = {m["mountPath"]: m["name"] for m in spec["containers"][0]["volumeMounts"]}
        assert claims[mounts["/checkpoints"]] == "vid2vid-checkpoints"


def test_entrypoint_and_runtime_env() -> None:
    spec = read_manifest(MANIFEST)
    assert spec.entrypoint.startswith("vid2vid train --config configs/paper.yaml ")
    assert spec.runtime_env["working_dir"] == str(REPO)  # relative to the manifest's folder
    assert ".venv" in spec.runtime_env["excludes"] and "data" in spec.runtime_env["excludes"]
    assert all(isinstance(v, str) for v in spec.runtime_env["env_vars"].values())
    assert spec.name == "vid2vid-paper"


def test_the_entrypoint_config_is_valid_paper_scale_training() -> None:
    from cluster.config import load
    argv = shlex.split(read_manifest(MANIFEST).entrypoint)
    config_at = argv.index("--config") + 1
    cfg = load(REPO / argv[config_at], argv[config_at + 1:])
    assert cfg.cluster.use_gpu and cfg.cluster.num_workers >= 2
    assert (cfg.train.height, cfg.train.width) == (1024, 2048)
    assert cfg.model.generator.ngf == 128 and cfg.train.generator.zero_stage == 2
    assert cfg.cluster.storage_path.startswith("s3://") and cfg.tracking.uri.startswith("http")


def test_overrides_are_appended_and_quoted() -> None:
    assert with_overrides("vid2vid train", []) == "vid2vid train"
    cmd = with_overrides("vid2vid train --config c.yaml", ["train.epochs=2", "tracking.run_name=my run"])
    assert shlex.split(cmd)[-2:] == ["train.epochs=2", "tracking.run_name=my run"]


def write(tmp_path: Path, doc: dict) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


GOOD = {"apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": {"name": "j"},
        "spec": {"entrypoint": "echo hi", "runtimeEnvYAML": "working_dir: sub\nenv_vars: {A: '1'}\n"}}


def test_relative_working_dir_is_the_manifest_folder(tmp_path: Path) -> None:
    spec = read_manifest(write(tmp_path, GOOD))
    assert spec.runtime_env == {"working_dir": str(tmp_path / "sub"), "env_vars": {"A": "1"}}


@pytest.mark.parametrize("change, words", [
    ({"kind": "RayCluster"}, "RayJob"),
    ({"spec": {"runtimeEnvYAML": ""}}, "spec.entrypoint"),
    ({"spec": {"entrypoint": "x", "runtimeEnvYAML": {"working_dir": "."}}}, "runtimeEnvYAML"),
    ({"spec": {"entrypoint": "x", "runtimeEnvYAML": "env_vars: {A: 1}"}}, "env_vars"),
    ({"spec": {"entrypoint": "x", "runtimeEnvYAML": "- a\n- b"}}, "mapping"),
])
def test_bad_manifests_are_refused_naming_the_key(tmp_path: Path, change: dict, words: str) -> None:
    with pytest.raises(ManifestError) as err:
        read_manifest(write(tmp_path, {**GOOD, **change}))
    assert words in str(err.value) and str(tmp_path) in str(err.value)


def test_job_address(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")  # a GCS address, not the job API
    assert jobs.job_address(None) == jobs.DEFAULT_ADDRESS
    monkeypatch.setenv("RAY_ADDRESS", "http://head:8265")
    assert jobs.job_address(None) == "http://head:8265"
    assert jobs.job_address("http://other:8265") == "http://other:8265"


def test_failure_summary_names_the_cli_error() -> None:
    state = jobs.JobState("raysubmit_1", "FAILED", "Job entrypoint command failed with exit code 2", "x", None, None)
    text = jobs.failure_summary(state, "starting\nvid2vid: config error: 'train.epochs' must be >= 1\n")
    assert "FAILED" in text and "error: config error: 'train.epochs'" in text
