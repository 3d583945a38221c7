"""Real server processes for integration tests: started in their own process group on 127.0.0.1,
waited for over HTTP, and stopped with everything they started (never anyone else's)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_mlflow_server(root: Path, env: dict[str, str] | None = None, timeout_s: float = 120
                        ) -> tuple[subprocess.Popen, str]:
    """``mlflow server`` with one worker and no job runner (2 processes, ready in seconds); returns
    the process and its URL. Its store and artifacts live under ``root``."""
    port = free_port()
    env = dict(env or os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", MLFLOW_DISABLE_TELEMETRY="true")
    log_path = root / f"mlflow-server-{port}.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
             "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
             "--artifacts-destination", str(root / "artifacts")],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    wait_for_http(proc, f"{url}/health", log_path, "mlflow server", timeout_s)
    return proc, url


def wait_for_http(proc: subprocess.Popen, url: str, log_path: Path, what: str, timeout_s: float) -> None:
    """Wait until ``url`` answers 200; fail the test with the log's tail if the process dies or time runs out."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_group(proc)
            pytest.fail(f"{what} did not start: {log_path.read_text()[-3000:]}")
        time.sleep(0.3)


def stop_group(proc: subprocess.Popen, timeout_s: float = 20) -> None:
    """Stop a process started with ``start_new_session=True`` and its children (its process group)."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGCONT)  # a frozen (SIGSTOP) server cannot handle SIGTERM
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def embedded_ray_env(**extra: str) -> dict[str, str]:
    """The environment of a `vid2vid` process that starts or joins Ray in a test: loopback, no token,
    no usage stats or telemetry, one OpenMP thread, the shared DeepSpeed build cache, and never a
    RAY_ADDRESS from the caller's shell."""
    found = dict(os.environ, OMP_NUM_THREADS="1", MLFLOW_DISABLE_TELEMETRY="true", RAY_USAGE_STATS_ENABLED="0",
                 RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_AUTH_MODE="disabled",
                 TORCH_EXTENSIONS_DIR=os.environ.get("TORCH_EXTENSIONS_DIR",
                                                     str(Path.home() / ".cache" / "torch_extensions_vid2vid")),
                 **extra)
    found.pop("RAY_ADDRESS", None)
    return found


def synth_and_pack(config: Path, root: Path) -> Path:
    """The config's synthetic sequences under ``root/synth``, packed into ``root/shards``; returns ``root``."""
    from cluster.config import load
    from dataio import pack, synth

    cfg = load(config, [f"data.shards={root}/shards", f"data.synth.out={root}/synth", f"data.pack.source={root}/synth"])
    synth.generate(cfg.data.synth)
    pack.pack(cfg.data, progress=False)
    return root
