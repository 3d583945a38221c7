"""`vid2vid sweep`: Ray Tune over config keys, each trial a full (small) Ray Train run, ASHA stopping.

    validate (base config, every search key, the metric) -> MLflow parent run -> Tuner over trial
    functions; each trial builds its own TorchTrainer (a V2 TorchTrainer cannot be handed to a
    Tuner) whose reports reach ASHA through TuneReportCallback; its MLflow run is nested under the
    parent; a line per trial event on the console -> table of trials (also an artifact of the parent)
    -> the best trial's best checkpoint published to the registry, its scores on the version

Selection is on held-out quality: with ``sweep.metric: eval/psnr`` (or another ``eval/*`` score) each
trial scores the ``eval.split`` clips before every checkpoint (``eval.at_checkpoint`` is turned on) and
reports the scores with it; ASHA stops trials on them, Ray keeps each trial's best checkpoints by
them, and the sweep publishes the best checkpoint of the best trial, not its last. A training loss
can still be named; trials are then compared only at their last report, among those that ran longest.

Trials run as many at once as Ray's CPUs allow (``cluster.num_workers`` each; the trial driver itself
takes 0.01 CPU: Tune refuses 0). An interrupted sweep (Ctrl-C) shows each trial's state and publishes
nothing.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any, Callable

from mlflow.entities import Param
from mlflow.tracking import MlflowClient
from ray import tune
from ray.train import Checkpoint
from ray.tune import Callback
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler

from cluster.config import RootConfig
from cluster.launch import check_ready, fit, resolve
from cluster.ray_env import connected, target
from cluster.registry import publish
from dataio.reader import list_shards, manifest_or_none
from trainer.config import EVAL_METRICS
from trainer.config_tree import ConfigError, flatten, from_dict, to_dict
from trainer.tracking import redact

log = logging.getLogger(__name__)

TRIAL_DRIVER_CPU = 0.01
STOPPED_EARLY = "stopped early"


@dataclass
class TrialRow:
    trial: str
    params: dict[str, Any]
    status: str
    """done | stopped early (by ASHA) | error | interrupted | not started"""
    reports: int = 0
    best: float | None = None
    """The ``sweep.metric`` this trial is ranked by: its best report, or for a training loss its last."""
    best_step: int = 0
    checkpoint: str = ""
    """Ray's copy of the checkpoint of that report."""
    scores: dict[str, float] = field(default_factory=dict)
    """The ``eval/*`` scores of that report."""
    run_id: str = ""


@dataclass
class SweepResult:
    rows: list[TrialRow]
    best: TrialRow | None
    worst: TrialRow | None
    parent_run_id: str
    rule: str
    """How the trials were compared, in words (printed under the table)."""
    planned: int = 0
    """Trials the search asked for (``num_samples`` times the grid); an interrupted sweep lists fewer."""
    interrupted: bool = False
    published: Any = None


def tune_space(search: dict[str, dict[str, list[Any]]]) -> dict[str, Any]:
    """The ``sweep.search`` section as Ray Tune distributions (keys stay dotted)."""
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


def check_metric(cfg: RootConfig) -> None:
    """A held-out metric needs a split to score."""
    metric = cfg.sweep.metric
    if metric not in EVAL_METRICS:
        return
    try:
        list_shards(cfg.data.shards, cfg.eval.split, manifest_or_none(cfg.data.shards))
    except FileNotFoundError as err:
        raise ConfigError(f"sweep.metric={metric}: {err} (eval.split={cfg.eval.split}; pack with "
                          "data.pack.val_fraction > 0)") from None


def run_trial(params: dict[str, Any], base: dict[str, Any], checkpoint_root: str, parent_run_id: str,
              sweep_name: str) -> None:
    """The Tune trainable: one Ray Train run of the trial's config, reporting to Tune."""
    context = tune.get_context()
    cfg = trial_config(base, params, f"{sweep_name}-{context.get_trial_id()}", checkpoint_root,
                       context.get_trial_name())
    fit(cfg, {"parent_run_id": parent_run_id}, callbacks=[TuneReportCallback()])


class TrialWatch:
    """A Tune callback (driver side): a console line per trial event, and each trial's reports and
    final state, which the table and the choice are made from."""

    def __init__(self, metric: str, epochs: int, say: Callable[[str], None]) -> None:
        self.metric, self.epochs, self.say = metric, epochs, say
        self.trials: dict[str, Any] = {}
        self.reports: dict[str, list[dict[str, Any]]] = {}
        self.completed: set[str] = set()
        self.started: set[str] = set()

    def callback(self):
        watch = self

        class _Callback(Callback):
            def on_step_begin(self, iteration, trials, **info):
                for trial in trials:
                    watch.trials[trial.trial_id] = trial

            def on_trial_start(self, iteration, trials, trial, **info):
                watch.trials[trial.trial_id] = trial
                watch.started.add(trial.trial_id)
                watch.say(f"trial {trial.trial_id} started: " + ", ".join(
                    f"{k}={_fmt(_plain(v))}" for k, v in trial.config.items()))

            def on_trial_result(self, iteration, trials, trial, result, **info):
                reports = watch.reports.setdefault(trial.trial_id, [])
                reports.append(dict(result))
                watch.say(f"trial {trial.trial_id} report {len(reports)}: {watch.metric} "
                          f"{_fmt(result.get(watch.metric))} (epoch {result.get('epoch')}, step {result.get('step')})")

            def on_trial_complete(self, iteration, trials, trial, **info):
                watch.completed.add(trial.trial_id)
                reports = len(watch.reports.get(trial.trial_id, []))
                watch.say(f"trial {trial.trial_id} {watch.state(trial)} after {reports} report(s)")

            def on_trial_error(self, iteration, trials, trial, **info):
                watch.say(f"trial {trial.trial_id} failed: see {trial.path}")

        return _Callback()

    def state(self, trial: Any) -> str:
        """Tune marks the trials it stops at an interrupt TERMINATED too, without completing them:
        only the completion and error callbacks say how a trial really ended."""
        if str(trial.status) == "ERROR":
            return "error"
        if trial.trial_id in self.completed:
            last = (self.reports.get(trial.trial_id) or [{}])[-1]
            return "done" if last.get("epoch", 0) >= self.epochs else STOPPED_EARLY
        return "interrupted" if trial.trial_id in self.started else "not started"

    def rows(self, keys: list[str], mode: str, any_report: bool) -> list[TrialRow]:
        """One row per trial; ``any_report``: rank a trial by its best report (held-out scores at a
        fixed size), else by its last."""
        rows = []
        for trial_id, trial in sorted(self.trials.items()):
            reports = [r for r in self.reports.get(trial_id, []) if _finite(r.get(self.metric))]
            row = TrialRow(trial_id, {k: _plain(trial.config.get(k)) for k in keys}, self.state(trial),
                           reports=len(self.reports.get(trial_id, [])))
            if reports:
                pick = (min if mode == "min" else max) if any_report else (lambda rs, key: rs[-1])
                chosen = pick(reports, key=lambda r: r[self.metric])
                row.best, row.best_step = float(chosen[self.metric]), int(chosen.get("step", 0))
                row.checkpoint = str(chosen.get("checkpoint_path") or "")
                row.scores = {k: float(v) for k, v in chosen.items() if k in EVAL_METRICS}
                row.run_id = str(chosen.get("run_id", ""))
            rows.append(row)
        return rows


def best_trial(rows: list[TrialRow], mode: str, any_report: bool) -> TrialRow | None:
    """The best finite metric among the trials that ended normally; when trials are ranked by their
    last report (a training loss), only among those that ran longest: ASHA stopped the others at a
    point where losses are not comparable with finished trials'."""
    scored = [r for r in rows if r.status in ("done", STOPPED_EARLY) and r.best is not None]
    if not any_report and scored:
        longest = max(r.reports for r in scored)
        scored = [r for r in scored if r.reports == longest]
    if not scored:
        return None
    return (min if mode == "min" else max)(scored, key=lambda r: r.best)


def format_table(rows: list[TrialRow], metric: str, mode: str, best: TrialRow | None = None) -> str:
    """The trials, best first: their values, ranking metric (and the step it was reported at), every
    held-out score of that report, reports, state and MLflow run."""
    keys = list(rows[0].params) if rows else []
    scores = [k for k in EVAL_METRICS if k != metric and any(k in r.scores for r in rows)]
    header = ["", "TRIAL", *keys, metric, "AT STEP", *scores, "REPORTS", "STATUS", "RUN"]
    ordered = sorted(rows, key=lambda r: (r is not best, r.best is None, _rank_key(r, mode)))
    table = [header] + [["*" if r is best else "", r.trial, *(_fmt(r.params[k]) for k in keys), _fmt(r.best),
                         str(r.best_step) if r.best is not None else "-", *(_fmt(r.scores.get(k)) for k in scores),
                         str(r.reports), r.status, r.run_id or "-"] for r in ordered]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table)


def sweep(cfg: RootConfig, say: Callable[[str], None] = log.info) -> SweepResult:
    """`vid2vid sweep`: the search of ``cfg.sweep`` over ``cfg`` (the base of every trial); ``say``
    gets a line per trial event."""
    spec = cfg.sweep
    if not spec.search:
        raise ConfigError("sweep.search is empty: give at least one key to search over")
    embedded = target(cfg.cluster).embedded
    checkpoint_root = os.path.abspath(cfg.checkpoint.dir) if embedded else cfg.checkpoint.dir
    if spec.metric in EVAL_METRICS:  # every report carries the scores ASHA compares; the best is kept
        cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, at_checkpoint=True),
                                  checkpoint=dataclasses.replace(cfg.checkpoint, keep_best=spec.metric))
    resolved = resolve(cfg, embedded)
    base = to_dict(resolved)
    check_search(base, spec.search)
    check_metric(resolved)  # before check_ready's own held-out check: this one says how to get the split
    check_ready(resolved, embedded)
    # Held-out scores at one fixed size compare across stages: a trial's best report counts wherever
    # it came; at each stage's own size (or for a loss) only last reports of equally long trials do.
    any_report = spec.metric in EVAL_METRICS and bool(cfg.eval.height)
    rule = (f"ranked by the best {spec.metric} of any report (held-out, all at {cfg.eval.height}x{cfg.eval.width})"
            if any_report else f"ranked by the last {spec.metric} among the trials with the most reports "
            "(reports at different stages are not comparable)")
    parent = _parent_run(resolved)
    watch = TrialWatch(spec.metric, cfg.train.epochs, say)
    interrupted = False
    # The dashboard serves the state API that Ray Train's placement-group cleaner polls: without it,
    # a trial ASHA stops keeps its workers' CPUs reserved and later trials wait forever.
    with connected(resolved.cluster, dashboard=True):
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
            run_config=tune.RunConfig(name=f"{cfg.cluster.name}-sweep", storage_path=resolved.cluster.storage_path,
                                      callbacks=[watch.callback()], verbose=0))
        try:
            tuner.fit()
        except KeyboardInterrupt:
            interrupted = True
    rows = watch.rows(list(spec.search), spec.mode, any_report)
    interrupted = interrupted or any(r.status in ("interrupted", "not started") for r in rows)
    best = best_trial(rows, spec.mode, any_report)
    scored = [r for r in rows if r.best is not None]
    worst = ((max if spec.mode == "min" else min)(scored, key=lambda r: r.best) if scored else None)
    grid = math.prod(len(values) for spec_ in spec.search.values() for kind, values in spec_.items() if kind == "grid")
    result = SweepResult(rows, best, worst, parent, rule, spec.num_samples * grid, interrupted)
    _close_parent(resolved, result, spec.metric)
    if best is not None and not interrupted and spec.publish_name and resolved.tracking.enabled:
        result.published = _publish_best(resolved, best)
    return result


def _publish_best(cfg: RootConfig, best: TrialRow):
    """The best trial's checkpoint of its best report (Ray's copy, local or remote) published, with
    its scores and step on the registered version."""
    spec = cfg.sweep
    tags = {**best.scores, "sweep.metric": spec.metric, "step": best.best_step}
    if not best.checkpoint:
        return publish(cfg.tracking.uri, spec.publish_name, spec.publish_alias, run_id=best.run_id, tags=tags)
    if "://" not in best.checkpoint:
        return publish(cfg.tracking.uri, spec.publish_name, spec.publish_alias, checkpoint=best.checkpoint, tags=tags)


    with tempfile.TemporaryDirectory(prefix="vid2vid-best-") as tmp:
        local = Checkpoint(best.checkpoint).to_directory(tmp)
        return publish(cfg.tracking.uri, spec.publish_name, spec.publish_alias, checkpoint=local, tags=tags)


def _parent_run(cfg: RootConfig) -> str:
    if not cfg.tracking.enabled:
        return ""


    client = MlflowClient(tracking_uri=cfg.tracking.uri)
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    run = client.create_run(experiment.experiment_id, run_name=f"sweep-{cfg.cluster.name}")
    params = [Param(k, redact(k, v)[:6000]) for k, v in flatten(dataclasses.asdict(cfg.sweep), "sweep.").items()]
    for i in range(0, len(params), 100):
        client.log_batch(run.info.run_id, params=params[i:i + 100])
    return run.info.run_id


def _close_parent(cfg: RootConfig, result: SweepResult, metric: str) -> None:
    """The table as an artifact, the best trial as tags; KILLED when interrupted, and so are the runs
    of the trials Tune stopped."""
    if not result.parent_run_id:
        return

    client = MlflowClient(tracking_uri=cfg.tracking.uri)
    parent, best = result.parent_run_id, result.best
    table = format_table(result.rows, metric, cfg.sweep.mode, best)
    client.log_text(parent, f"{table}\n\n{result.rule}\n", "trials.txt")
    if best is not None:
        client.log_metric(parent, f"best/{metric}", best.best)
        client.set_tag(parent, "best_run_id", best.run_id)
        client.set_tag(parent, "best_trial", best.trial)
        client.set_tag(parent, "best_checkpoint", best.checkpoint)
    client.set_terminated(parent, "KILLED" if result.interrupted else "FINISHED" if best is not None else "FAILED")
    # A trial Tune stopped was killed mid-run: its tracker never closed its run.
    for row in result.rows:
        if row.run_id and row.status in (STOPPED_EARLY, "interrupted", "error"):
            if client.get_run(row.run_id).info.status == "RUNNING":
                client.set_terminated(row.run_id, "FAILED" if row.status == "error" else "KILLED")


def _rank_key(row: TrialRow, mode: str) -> float:
    if row.best is None:
        return 0.0
    return -row.best if mode == "max" else row.best


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _plain(value: Any) -> Any:
    """Tune hands numpy scalars; the config tree wants plain Python numbers."""
    return value.item() if hasattr(value, "item") else value


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
