"""MLflow tracking from rank 0: one run per training run, metrics batched off the training thread.

Why a background thread: a tracking server that stops answering must not stop training. MLflow's
client retries a failed request with exponential backoff for minutes; on the training thread that
would be a stall per logged step. Here the training thread only appends to a buffer; a sender thread
uploads it with ``log_batch`` every ``flush_every_s`` seconds (the fastest MLflow path, 5-15k values/s
against ~200/s for one ``log_metric`` per value) and, when the server does not answer, keeps the
values (up to ``max_buffered``), says so once, and sends them when it answers again.

Other ranks get a ``NullTracker`` with the same methods: callers never test the rank themselves.
"""
from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from dataio.errors import UserInputError
from trainer.config import TrackingConfig

log = logging.getLogger(__name__)

_SECRET_KEY = re.compile(r"(secret|password|passwd|token|credential|access_key|api_key)", re.IGNORECASE)
_URI_USERINFO = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]+):(?P<password>[^@/\s]+)@",
                           re.IGNORECASE)
_BATCH = 1000  # MLflow accepts at most 1000 metrics (and 100 params or tags) per log_batch


def redact(key: str, value: Any) -> str:
    """The text logged for a config value: secrets by key name hidden, passwords in URIs removed."""
    if _SECRET_KEY.search(key):
        return "***"
    text = str(value)
    return _URI_USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)[:6000]


def redacted_yaml(cfg: Any) -> str:
    """The resolved config (a config tree or its dict) as YAML, secrets hidden as in the run's params
    (by key name, and passwords inside URIs): the ``config.yaml`` logged with a run or a model."""
    import dataclasses

    import yaml

    from trainer.config_tree import to_dict

    def walk(node: Any, key: str) -> Any:
        if isinstance(node, dict):
            return {k: walk(v, f"{key}.{k}" if key else k) for k, v in node.items()}
        return redact(key, node) if isinstance(node, str) else node

    return yaml.safe_dump(walk(to_dict(cfg) if dataclasses.is_dataclass(cfg) else cfg, ""), sort_keys=False)


def configure_client() -> None:
    """Our own sender retries every flush; MLflow's minutes-long backoff on top would only delay it."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def prepare_store(cfg: TrackingConfig) -> str:
    """Create the store (an sqlite file on first use) and the experiment; returns the experiment id.

    Call once before workers start: two processes creating one sqlite DB at once crash (docs/platform.md).
    """
    configure_client()
    from mlflow.tracking import MlflowClient

    try:
        client = MlflowClient(tracking_uri=cfg.uri)
        found = client.get_experiment_by_name(cfg.experiment)
        return found.experiment_id if found else client.create_experiment(
            cfg.experiment, artifact_location=cfg.artifact_location or None)
    except Exception as err:  # noqa: BLE001 - whatever the store's client raises, said in one line with the key
        raise TrackingStoreError(f"tracking.uri={redact('uri', cfg.uri)}: cannot use the tracking store: "
                                 f"{brief(err)}") from None


class TrackingStoreError(UserInputError, RuntimeError):
    """The tracking store cannot be reached or written, found before any worker starts."""


class NullTracker:
    """What ranks other than 0 (and runs with tracking off) get."""
    run_id: str | None = None

    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...
    def set_tag(self, key: str, value: str) -> None: ...
    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...
    def flush(self, timeout_s: float = 30.0) -> bool:
        return True

    def close(self, status: str = "FINISHED", timeout_s: float = 30.0) -> None: ...


class Tracker(NullTracker):
    """The MLflow run of this training run; ``run_id`` continues a resumed run's."""

    def __init__(self, cfg: TrackingConfig, params: dict[str, Any], run_id: str | None = None,
                 tags: dict[str, str] | None = None) -> None:
        configure_client()
        from mlflow.tracking import MlflowClient

        self.cfg = cfg
        self.run_id = run_id
        self._resumed = run_id is not None
        self._client = MlflowClient(tracking_uri=cfg.uri)
        self._params = {k: redact(k, v) for k, v in params.items()}
        self._tags: dict[str, str] = dict(tags or {})
        self._metrics: deque = deque()
        self._artifacts: deque = deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._down_since: float | None = None
        self.dropped = 0
        """Values dropped because the buffer was full while the server was down."""
        self.sent = 0
        self._logged_through = -1
        """Steps up to this one are in the run already (a resumed run re-trains the steps after its
        checkpoint that were logged before the stop: each step is logged once)."""
        self._thread = threading.Thread(target=self._run, name="mlflow-sender", daemon=True)
        self._thread.start()

    # -- called from the training thread: never blocks on the network ---------------------------
    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        with self._lock:
            for key, value in metrics.items():
                self._metrics.append(Metric(key, float(value), now, step))
            overflow = len(self._metrics) - self.cfg.max_buffered
            for _ in range(max(0, overflow)):
                self._metrics.popleft()
            self.dropped += max(0, overflow)

    def set_tag(self, key: str, value: str) -> None:
        with self._lock:
            self._tags[key] = redact(key, value)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        with self._lock:
            self._artifacts.append((str(path), artifact_path))

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._metrics)

    @property
    def server_down(self) -> bool:
        return self._down_since is not None

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Ask the sender to upload now and wait up to ``timeout_s``; True when nothing is left."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._wake.set()
            time.sleep(0.05)
            with self._lock:
                if not self._metrics and not self._artifacts and not self._tags and self.run_id:
                    return True
        return False

    def close(self, status: str = "FINISHED", timeout_s: float = 30.0) -> None:
        """Send what is buffered (waiting up to ``timeout_s``) and end the run with ``status``."""
        sent_all = self.flush(timeout_s)
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=max(1.0, timeout_s))
        if not sent_all:
            log.warning("tracking: %d metric values could not be sent to %s before closing",
                        self.pending, redact("uri", self.cfg.uri))
        if self.run_id:
            try:
                self._client.set_terminated(self.run_id, status)
            except Exception as err:  # the server may be gone: training's result does not depend on it
                log.warning("tracking: could not mark run %s %s: %s", self.run_id, status, brief(err))

    # -- the sender thread --------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.cfg.flush_every_s)
            self._wake.clear()
            try:
                self._send()
                if self._down_since is not None:
                    log.warning("tracking: %s answers again after %.0f s; buffered values sent",
                                redact("uri", self.cfg.uri), time.monotonic() - self._down_since)
                    self._down_since = None
            except Exception as err:  # any failure: keep the data, say so once, try again later
                if self._down_since is None:
                    self._down_since = time.monotonic()
                    log.warning("tracking: %s is not answering (%s); training goes on, metrics are "
                                "buffered (up to %d values) and sent when it answers",
                                redact("uri", self.cfg.uri), brief(err), self.cfg.max_buffered)

    def _send(self) -> None:
        from mlflow.entities import Param, RunTag

        if self.run_id is None:
            self._start_run()
        if self._resumed:  # a resumed run continues the same MLflow run, which may have been ended
            self._continue_run()
        with self._lock:
            tags = [RunTag(k, v) for k, v in self._tags.items()]
        if tags:
            self._client.log_batch(self.run_id, tags=tags)
            with self._lock:
                for tag in tags:
                    if self._tags.get(tag.key) == tag.value:
                        del self._tags[tag.key]
        if self._params:
            self._send_params([Param(k, v) for k, v in self._params.items()])
            self._params = {}
        while True:
            with self._lock:
                chunk = [self._metrics[i] for i in range(min(_BATCH, len(self._metrics)))]
            if not chunk:
                break
            fresh = [m for m in chunk if m.step > self._logged_through]
            if fresh:
                self._client.log_batch(self.run_id, metrics=fresh)
            with self._lock:
                for _ in chunk:  # only the training thread appends, so the head is still our chunk
                    self._metrics.popleft()
            self.sent += len(fresh)
        while self._artifacts:
            path, artifact_path = self._artifacts[0]
            self._client.log_artifact(self.run_id, path, artifact_path)
            self._artifacts.popleft()

    def _send_params(self, items: list) -> None:
        from mlflow.exceptions import MlflowException

        for i in range(0, len(items), 100):
            try:
                self._client.log_batch(self.run_id, params=items[i:i + 100])
            except MlflowException as err:
                if err.error_code != "INVALID_PARAMETER_VALUE":
                    raise  # the server is down: try again later
                # MLflow params are write-once: a resumed run with a changed override keeps the first.
                log.warning("tracking: run %s keeps its earlier params: %s", self.run_id, brief(err))

    def _continue_run(self) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self._client.update_run(self.run_id, status="RUNNING")
            logged = self._client.get_metric_history(self.run_id, STEP_METRIC)
            self._logged_through = max((m.step for m in logged), default=-1)
        except MlflowException as err:
            if err.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            # The checkpoint came from another tracking store (copied, or the URI changed): new run.
            log.warning("tracking: run %s of the checkpoint is not in %s; starting a new run",
                        self.run_id, redact("uri", self.cfg.uri))
            self._start_run()
        self._resumed = False

    def _start_run(self) -> None:
        client = self._client
        found = client.get_experiment_by_name(self.cfg.experiment)
        experiment_id = found.experiment_id if found else client.create_experiment(
            self.cfg.experiment, artifact_location=self.cfg.artifact_location or None)
        with self._lock:  # created with its tags: a launcher finds the run by them even if this rank dies next
            tags = dict(self._tags)
        run = client.create_run(experiment_id, run_name=self.cfg.run_name or None, tags=tags)
        self.run_id = run.info.run_id
        log.info("tracking: run %s in experiment %s at %s", self.run_id, self.cfg.experiment,
                 redact("uri", self.cfg.uri))


STEP_METRIC = "g/total"
"""Logged at every logged step: its history says which steps a run has already."""


def make_tracker(cfg: TrackingConfig, params: dict[str, Any], run_id: str | None = None,
                 tags: dict[str, str] | None = None) -> NullTracker:
    """A ``Tracker`` on rank 0 when tracking is on, else a ``NullTracker``."""
    from trainer import distributed as dist

    if not cfg.enabled or not dist.is_main():
        return NullTracker()
    return Tracker(cfg, params, run_id=run_id, tags=tags)


def brief(err: Exception) -> str:
    """``Type: message``, first line, secrets removed: an error as a log line shows it."""
    text = f"{type(err).__name__}: {err}"
    return redact("error", text.splitlines()[0][:300]) if text else type(err).__name__
