"""Joining Ray: an embedded instance on 127.0.0.1, or the cluster an address (or a Ray job) names.

Facts this is built around (docs/platform.md): Ray uses the host address as the
node IP and its gRPC servers, agents and workers listen on every interface unless the node IP is
given as 127.0.0.1 (``_node_ip_address``); it rewrites 127.0.0.1 to the host address unless
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` is set for the head and every client;
an embedded ``ray.init()`` silently writes ``~/.ray/auth_token``, after which every later ``ray start``
on the machine turns token auth on; ``ray.init()`` without an address joins whatever ``ray start``
cluster runs on the machine, so an embedded instance must ask for ``address="local"``.
"""
from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from typing import Iterator

import ray

from cluster.config import ClusterConfig

log = logging.getLogger(__name__)

LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
"""Set for every Ray process we start or connect from (a user's explicit value wins)."""


@dataclass(frozen=True)
class RayTarget:
    address: str
    """Empty for an embedded instance."""

    @property
    def embedded(self) -> bool:
        return not self.address


def target(cfg: ClusterConfig) -> RayTarget:
    """Where this command runs: ``cluster.address``, else ``RAY_ADDRESS``, else embedded."""
    return RayTarget(cfg.address or os.environ.get("RAY_ADDRESS", ""))


def set_loopback_env() -> None:
    for key, value in LOOPBACK_ENV.items():
        os.environ.setdefault(key, value)


@contextlib.contextmanager
def connected(cfg: ClusterConfig, dashboard: bool = False) -> Iterator[RayTarget]:
    """Ray is initialised inside the block and shut down after it (an embedded instance stops).
    ``dashboard``: an embedded instance runs its dashboard (on 127.0.0.1), which serves the state API."""
    where = target(cfg)
    set_loopback_env()
    if where.embedded:
        # The instance listens on loopback and lives as long as this command: no token to guard it,
        # and none written to ~/.ray where it would switch later `ray start` clusters to token auth.
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        # The node IP decides where Ray's gRPC servers (GCS, raylet, workers) and agents listen: left
        # to Ray it is the host address and most of them listen on every interface; set to loopback,
        # every socket of the instance is on 127.0.0.1 (tested).
        kwargs = {"num_cpus": cfg.num_cpus or os.cpu_count() or 1, "include_dashboard": dashboard,
                  "_node_ip_address": "127.0.0.1", **({"dashboard_host": "127.0.0.1"} if dashboard else {})}
        if cfg.temp_dir:
            kwargs["_temp_dir"] = os.path.abspath(cfg.temp_dir)
        log.info("starting an embedded Ray on 127.0.0.1 (%s CPUs)", kwargs["num_cpus"])
        # log_to_driver off: the workers write their own log files (cluster/run_log.py).
        ray.init(address="local", configure_logging=False, log_to_driver=False, **kwargs)
    else:
        # Inside a Ray job the job's runtime_env already reaches every worker: passing env vars again
        # here fails with a merge error (docs/platform.md), so join with none.
        log.info("joining the Ray cluster at %s", where.address)
        ray.init(address=where.address, configure_logging=False, log_to_driver=False)
    try:
        yield where
    finally:
        ray.shutdown()
