"""Jobs on a Ray cluster: ``ray_job.yaml`` (a KubeRay ``RayJob``) submitted to any cluster's job API.

One file, two doors: ``kubectl apply -f ray_job.yaml`` creates a Ray cluster and runs the job on
Kubernetes; ``vid2vid submit ray_job.yaml --address http://HEAD:8265`` reads the same
``spec.entrypoint`` and ``spec.runtimeEnvYAML`` and submits them to a running cluster, appending
command-line overrides to the entrypoint.
"""
from __future__ import annotations

import asyncio
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml
from ray.job_submission import JobSubmissionClient

from cluster.ray_env import set_loopback_env
from dataio.errors import UserInputError

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


class ManifestError(UserInputError, ValueError):
    """A ``ray_job.yaml`` that is not a usable RayJob; the message names the file and key."""


@dataclass
class JobSpec:
    name: str
    entrypoint: str
    runtime_env: dict[str, Any]
    entrypoint_num_cpus: float | None = None
    entrypoint_num_gpus: float | None = None
    metadata: dict[str, str] = field(default_factory=dict)


def read_manifest(path: str | Path) -> JobSpec:
    """The job in a KubeRay ``RayJob`` manifest; a relative ``working_dir`` is taken from its folder."""
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as err:
        raise ManifestError(f"{path}: cannot read: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise ManifestError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(doc, dict):
        raise ManifestError(f"{path}: expected a RayJob mapping")
    if doc.get("kind") != "RayJob" or not str(doc.get("apiVersion", "")).startswith("ray.io/"):
        raise ManifestError(f"{path}: apiVersion/kind are {doc.get('apiVersion')!r}/{doc.get('kind')!r}, "
                            "expected ray.io/v1 RayJob")
    spec = doc.get("spec")
    if not isinstance(spec, dict):
        raise ManifestError(f"{path}: no 'spec' mapping")
    entrypoint = spec.get("entrypoint")
    if not isinstance(entrypoint, str) or not entrypoint.strip():
        raise ManifestError(f"{path}: 'spec.entrypoint' must be a non-empty command")
    runtime_env = parse_runtime_env(spec.get("runtimeEnvYAML", ""), f"{path}: spec.runtimeEnvYAML")
    working_dir = runtime_env.get("working_dir")
    if isinstance(working_dir, str) and "://" not in working_dir and not os.path.isabs(working_dir):
        runtime_env["working_dir"] = str((path.parent / working_dir).resolve())
    metadata = doc.get("metadata") or {}
    return JobSpec(name=str(metadata.get("name", path.stem)), entrypoint=" ".join(entrypoint.split()),
                   runtime_env=runtime_env, entrypoint_num_cpus=spec.get("entrypointNumCpus"),
                   entrypoint_num_gpus=spec.get("entrypointNumGpus"),
                   metadata={str(k): str(v) for k, v in (spec.get("metadata") or {}).items()})


def parse_runtime_env(text: Any, where: str) -> dict[str, Any]:
    """``runtimeEnvYAML`` is a string holding YAML (KubeRay's format), itself a runtime_env mapping."""
    if text in (None, ""):
        return {}
    if not isinstance(text, str):
        raise ManifestError(f"{where}: must be a string of YAML (use `runtimeEnvYAML: |`)")
    try:
        env = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ManifestError(f"{where}: not valid YAML: {err}") from None
    if env is None:
        return {}
    if not isinstance(env, dict):
        raise ManifestError(f"{where}: must be a mapping (working_dir, env_vars, ...)")
    env_vars = env.get("env_vars", {})
    if not isinstance(env_vars, dict) or not all(isinstance(v, str) for v in env_vars.values()):
        raise ManifestError(f"{where}: env_vars must map names to strings (quote numbers)")
    return env


def with_overrides(entrypoint: str, overrides: Sequence[str]) -> str:
    """The entrypoint with ``key=value`` overrides appended, each quoted for the shell."""
    return " ".join([entrypoint, *(shlex.quote(o) for o in overrides)]) if overrides else entrypoint


def job_address(address: str | None) -> str:
    """The job API: the argument, else ``RAY_API_SERVER_ADDRESS`` or an http ``RAY_ADDRESS``, else local."""
    if address:
        return address
    for name in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS"):
        value = os.environ.get(name, "")
        if value.startswith(("http://", "https://")):
            return value
    return DEFAULT_ADDRESS


def _client(address: str | None):
    set_loopback_env()
    return JobSubmissionClient(job_address(address))


def submit(spec: JobSpec, overrides: Sequence[str] = (), address: str | None = None) -> str:
    """Submit ``spec`` with ``overrides``; returns the submission id."""
    kwargs: dict[str, Any] = {}
    if spec.entrypoint_num_cpus is not None:
        kwargs["entrypoint_num_cpus"] = spec.entrypoint_num_cpus
    if spec.entrypoint_num_gpus is not None:
        kwargs["entrypoint_num_gpus"] = spec.entrypoint_num_gpus
    return _client(address).submit_job(entrypoint=with_overrides(spec.entrypoint, overrides),
                                       runtime_env=spec.runtime_env or None,
                                       metadata={"name": spec.name, **spec.metadata}, **kwargs)


@dataclass
class JobState:
    job_id: str
    status: str
    message: str
    entrypoint: str
    start_time: float | None
    end_time: float | None


def status(job_id: str, address: str | None = None) -> JobState:
    info = _client(address).get_job_info(job_id)
    return _state(info)


def _state(info) -> JobState:
    return JobState(job_id=info.submission_id or info.job_id or "", status=str(info.status.value),
                    message=info.message or "", entrypoint=info.entrypoint or "",
                    start_time=info.start_time / 1000 if info.start_time else None,
                    end_time=info.end_time / 1000 if info.end_time else None)


def list_jobs(address: str | None = None) -> list[JobState]:
    jobs = [_state(info) for info in _client(address).list_jobs()]
    return sorted(jobs, key=lambda j: j.start_time or 0.0, reverse=True)


def logs(job_id: str, address: str | None = None) -> str:
    return _client(address).get_job_logs(job_id)


def follow(job_id: str, address: str | None = None, out=None) -> None:
    """Print the job's logs as they come until it ends."""
    out = out or sys.stdout
    client = _client(address)

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            out.write(chunk)
            out.flush()

    asyncio.run(tail())


def stop(job_id: str, address: str | None = None, timeout_s: float = 60.0) -> JobState:
    """Ask the job to stop and wait until it has (or ``timeout_s`` passes)."""
    client = _client(address)
    client.stop_job(job_id)
    return wait(job_id, address, timeout_s, client=client)


def wait(job_id: str, address: str | None = None, timeout_s: float | None = None, poll_s: float = 2.0,
         client=None) -> JobState:
    """Poll until the job is SUCCEEDED, FAILED or STOPPED (or ``timeout_s`` passes)."""
    client = client or _client(address)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        state = _state(client.get_job_info(job_id))
        if state.status in TERMINAL or (deadline is not None and time.monotonic() > deadline):
            return state
        time.sleep(poll_s)


def format_jobs(jobs: list[JobState]) -> str:
    if not jobs:
        return "no jobs"
    header = ("ID", "STATUS", "STARTED (UTC)", "ENTRYPOINT")
    table = [header] + [(j.job_id, j.status, _when(j.start_time), _short(j.entrypoint)) for j in jobs]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table)


def failure_summary(state: JobState, log_text: str, lines: int = 15) -> str:
    """Why a job failed: Ray's message, the job's own error lines, and the end of its log."""
    tail = [line for line in log_text.rstrip().splitlines() if line.strip()][-lines:]
    errors = [line.strip() for line in log_text.splitlines() if line.startswith("vid2vid: ")]
    parts = [f"job {state.job_id} {state.status}: {state.message.strip() or '(no message)'}"]
    if errors:
        parts.append("error: " + errors[-1][len("vid2vid: "):])
    if tail:
        parts.append("last log lines:\n  " + "\n  ".join(tail))
    return "\n".join(parts)


def _when(seconds: float | None) -> str:
    if not seconds:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(seconds))


def _short(text: str, width: int = 70) -> str:
    return text if len(text) <= width else text[:width - 3] + "..."
