"""`vid2vid sweep`: Ray Tune over config keys, each trial a full (small) Ray Train run, ASHA stopping.

    validate (base config, every search key) -> MLflow parent run -> Tuner over trial functions;
    each trial builds its own TorchTrainer (a V2 TorchTrainer cannot be handed to a Tuner) whose
    reports reach ASHA through TuneReportCallback; its MLflow run is nested under the parent
    -> table of trials -> the best trial's generator published to the registry

Trials run as many at once as Ray's CPUs allow (``cluster.num_workers`` each; the trial driver itself
takes 0.01 CPU: Tune refuses 0).
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
from dataclasses import dataclass
from typing import Any

from cluster.config import RootConfig
from trainer.config_tree import ConfigError, from_dict, to_dict

log = logging.getLogger(__name__)

TRIAL_DRIVER_CPU = 0.01


@dataclass
class TrialRow:
    trial: str
    params: dict[str, Any]
    metric: float | None
    reports: int
    status: str
    run_id: str


@dataclass
class SweepResult:
    rows: list[TrialRow]
    best: TrialRow | None
    parent_run_id: str
    published: Any = None


def tune_space(search: dict[str, dict[str, list[Any]]]) -> dict[str, Any]:
    """The ``sweep.search`` section as Ray Tune distributions (keys stay dotted)."""
    from ray import tune

    makers = {"choice": lambda v: tune.choice(v), "grid": lambda v: tune.grid_search(v),
              "uniform": lambda v: tune.uniform(*v), "loguniform": lambda v: tune.loguniform(*v),
              "randint": lambda v: tune.randint(*v)}
    return {key: makers[kind](values) for key, spec in search.items() for kind, values in spec.items()}


def set_key(raw: dict[str, Any], key: str, value: Any) -> None:
    """Set dotted ``key`` in a config dict; an unknown section is left for validation to name."""
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def trial_config(base: dict[str, Any], params: dict[str, Any], name: str, checkpoint_root: str,
                 run_name: str) -> RootConfig:
    """One trial's config: the base with the trial's values, its own run name and checkpoint folder."""
    raw = copy.deepcopy(base)
    for key, value in params.items():
        set_key(raw, key, _plain(value))
    raw["cluster"]["name"] = name
    raw["checkpoint"]["dir"] = os.path.join(checkpoint_root, name)
    raw["tracking"]["run_name"] = run_name
    return from_dict(RootConfig, raw, f"sweep trial {run_name}")


def check_search(base: dict[str, Any], search: dict[str, dict[str, list[Any]]]) -> None:
    """Refuse unknown keys and impossible values before any trial starts: each key is set to the
    bounds (or every choice) of its distribution and the config validated."""
    for key, spec in search.items():
        for kind, values in spec.items():
            probes = values if kind in ("choice", "grid") else [values[0], values[-1] - (1 if kind == "randint" else 0)]
            for value in probes:
                raw = copy.deepcopy(base)
                set_key(raw, key, value)
                try:
                    from_dict(RootConfig, raw, "sweep.search")
                except ConfigError as err:
                    raise ConfigError(f"sweep.search.{key} = {value!r}: {err}") from None


def run_trial(params: dict[str, Any], base: dict[str, Any], checkpoint_root: str, parent_run_id: str,
              sweep_name: str) -> None:
    """The Tune trainable: one Ray Train run of the trial's config, reporting to Tune."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from cluster.launch import fit

    context = tune.get_context()
    cfg = trial_config(base, params, f"{sweep_name}-{context.get_trial_id()}", checkpoint_root,
                       context.get_trial_name())
    fit(cfg, {"parent_run_id": parent_run_id}, callbacks=[TuneReportCallback()])


def rows_from(grid: Any, keys: list[str], metric: str) -> list[TrialRow]:
    rows = []
    for result in grid:
        metrics = result.metrics or {}
        value = metrics.get(metric)
        rows.append(TrialRow(trial=str(metrics.get("trial_id") or os.path.basename(str(result.path))), params={k: result.config.get(k) for k in keys},
                             metric=float(value) if isinstance(value, (int, float)) else None,
                             reports=int(metrics.get("training_iteration", 0)),
                             status="error" if result.error else "done", run_id=str(metrics.get("run_id", ""))))
    return rows


def best_trial(rows: list[TrialRow], mode: str) -> TrialRow | None:
    """The best final metric among the trials that ran longest (ASHA stopped the others early, at a
    point where losses are not comparable with finished trials')."""
    scored = [r for r in rows if r.status == "done" and r.metric is not None and math.isfinite(r.metric)]
    if not scored:
        return None
    longest = max(r.reports for r in scored)
    finalists = [r for r in scored if r.reports == longest]
    pick = min if mode == "min" else max
    return pick(finalists, key=lambda r: r.metric)


def format_table(rows: list[TrialRow], metric: str, best: TrialRow | None = None) -> str:
    """The trials, best first, with their values, final metric, reports and MLflow run."""
    keys = list(rows[0].params) if rows else []
    header = ["", "TRIAL", *keys, metric, "REPORTS", "STATUS", "RUN"]
    ordered = sorted(rows, key=lambda r: (r is not best, r.metric is None, r.metric if r.metric is not None else 0))
    table = [header] + [["*" if r is best else "", r.trial, *(_fmt(r.params[k]) for k in keys), _fmt(r.metric),
                         str(r.reports), r.status, r.run_id or "-"] for r in ordered]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table)


def sweep(cfg: RootConfig) -> SweepResult:
    """`vid2vid sweep`: the search of ``cfg.sweep`` over ``cfg`` (the base of every trial)."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from cluster.launch import check_ready, resolve
    from cluster.ray_env import connected, target

    spec = cfg.sweep
    if not spec.search:
        raise ConfigError("sweep.search is empty: give at least one key to search over")
    checkpoint_root = os.path.abspath(cfg.checkpoint.dir) if target(cfg.cluster).embedded else cfg.checkpoint.dir
    embedded = target(cfg.cluster).embedded
    resolved = resolve(cfg, embedded)
    base = to_dict(resolved)
    check_search(base, spec.search)
    check_ready(resolved, embedded)
    parent = _parent_run(resolved)
    with connected(resolved.cluster):
        tuner = tune.Tuner(
            tune.with_resources(tune.with_parameters(run_trial, base=base, checkpoint_root=checkpoint_root,
                                                     parent_run_id=parent, sweep_name=cfg.cluster.name),
                                {"CPU": TRIAL_DRIVER_CPU}),
            param_space=tune_space(spec.search),
            tune_config=tune.TuneConfig(
                metric=spec.metric, mode=spec.mode, num_samples=spec.num_samples,
                max_concurrent_trials=spec.max_concurrent or None,
                scheduler=ASHAScheduler(time_attr="training_iteration", grace_period=spec.grace_period,
                                        reduction_factor=spec.reduction_factor, max_t=10**6)),
            run_config=tune.RunConfig(name=f"{cfg.cluster.name}-sweep", storage_path=resolved.cluster.storage_path))
        grid = tuner.fit()
    rows = rows_from(grid, list(spec.search), spec.metric)
    best = best_trial(rows, spec.mode)
    result = SweepResult(rows, best, parent)
    _close_parent(resolved, parent, best, spec.metric)
    if best is not None and spec.publish_name and best.run_id and resolved.tracking.enabled:
        from cluster.registry import publish

        result.published = publish(resolved.tracking.uri, spec.publish_name, spec.publish_alias, run_id=best.run_id)
    return result


def _parent_run(cfg: RootConfig) -> str:
    if not cfg.tracking.enabled:
        return ""
    from mlflow.entities import Param
    from mlflow.tracking import MlflowClient

    from trainer.config_tree import flatten
    from trainer.tracking import redact

    client = MlflowClient(tracking_uri=cfg.tracking.uri)
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    run = client.create_run(experiment.experiment_id, run_name=f"sweep-{cfg.cluster.name}")
    params = [Param(k, redact(k, v)[:6000]) for k, v in flatten(dataclasses.asdict(cfg.sweep), "sweep.").items()]
    for i in range(0, len(params), 100):
        client.log_batch(run.info.run_id, params=params[i:i + 100])
    return run.info.run_id


def _close_parent(cfg: RootConfig, parent: str, best: TrialRow | None, metric: str) -> None:
    if not parent:
        return
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=cfg.tracking.uri)
    if best is not None:
        client.log_metric(parent, f"best/{metric}", best.metric)
        client.set_tag(parent, "best_run_id", best.run_id)
        client.set_tag(parent, "best_trial", best.trial)
    client.set_terminated(parent, "FINISHED" if best is not None else "FAILED")


def _plain(value: Any) -> Any:
    """Tune hands numpy scalars; the config tree wants plain Python numbers."""
    return value.item() if hasattr(value, "item") else value


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
