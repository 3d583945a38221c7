"""The pure parts of `vid2vid sweep`: search space, trial configs, trial states, the best trial and the table."""
from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from cluster.config import load
from cluster.sweep import (STOPPED_EARLY, TrialRow, TrialWatch, best_trial, check_search, format_table, trial_config,
                           tune_space)
from trainer.config_tree import ConfigError, to_dict

REPO = Path(__file__).resolve().parents[3]
CONFIG = REPO / "configs" / "sweep_demo.yaml"


def base() -> dict:
    return to_dict(load(REPO / "configs" / "sweep_demo.yaml"))


def test_search_space_from_the_demo_sweep() -> None:
    from ray.tune.search.sample import Categorical, Float
    space = tune_space(load(REPO / "configs" / "sweep_demo.yaml").sweep.search)
    assert isinstance(space["train.generator.lr"], Float) and isinstance(space["model.generator.ngf"], Categorical)
    assert space["model.generator.ngf"].categories == [8, 16]


def test_every_demo_search_value_is_a_valid_config() -> None:
    cfg = load(REPO / "configs" / "sweep_demo.yaml")
    check_search(base(), cfg.sweep.search)


@pytest.mark.parametrize("search, words", [
    ({"train.generator.learning_rate": {"choice": [0.1]}}, "train.generator.learning_rate"),
    ({"model.generator.ngf": {"choice": [8, 3]}}, "ngf"),
])
def test_unknown_keys_and_bad_values_are_refused_before_trials(search: dict, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        check_search(base(), search)
    assert words in str(err.value) and "sweep.search" in str(err.value)


def test_trial_config_has_its_values_name_and_folder() -> None:
    import numpy as np
    cfg = trial_config(base(), {"train.generator.lr": np.float64(3e-4), "model.generator.ngf": np.int64(16)},
                       "sweep-demo-abc_00001", "/ckpt", "run_trial_abc_00001")
    assert cfg.train.generator.lr == pytest.approx(3e-4) and cfg.model.generator.ngf == 16
    assert isinstance(cfg.model.generator.ngf, int)
    assert cfg.cluster.name == "sweep-demo-abc_00001"
    assert cfg.checkpoint.dir == "/ckpt/sweep-demo-abc_00001" and cfg.tracking.run_name == "run_trial_abc_00001"


ROWS = [TrialRow("t0", {"lr": 1e-4}, "done", reports=2, best=120.0, best_step=4, run_id="r0"),
        TrialRow("t1", {"lr": 5e-4}, STOPPED_EARLY, reports=1, best=50.0, best_step=2, run_id="r1"),
        TrialRow("t2", {"lr": 2e-4}, "done", reports=2, best=100.0, best_step=4, run_id="r2"),
        TrialRow("t3", {"lr": 9e-4}, "error")]


def test_a_loss_is_compared_only_among_trials_that_ran_to_the_end() -> None:
    """A loss at a coarser stage (t1, stopped by ASHA) says nothing against the finished trials'."""
    assert best_trial(ROWS, "min", any_report=False).trial == "t2"
    assert best_trial(ROWS, "max", any_report=False).trial == "t0"
    assert best_trial([ROWS[3]], "min", any_report=False) is None


def test_held_out_scores_at_one_size_compare_every_trial() -> None:
    assert best_trial(ROWS, "min", any_report=True).trial == "t1"


def test_table_lists_every_trial_best_first() -> None:
    best = best_trial(ROWS, "min", any_report=False)
    lines = format_table(ROWS, "g/flow", "min", best).splitlines()
    assert lines[0].split() == ["TRIAL", "lr", "g/flow", "AT", "STEP", "REPORTS", "STATUS", "RUN"]
    assert lines[1].split()[:5] == ["*", "t2", "0.0002", "100", "4"]
    assert lines[2].split()[0] == "t1" and "stopped early" in lines[2]
    assert len(lines) == 5 and "error" in lines[-1]


def trial(trial_id: str, status: str, lr: float) -> SimpleNamespace:
    return SimpleNamespace(trial_id=trial_id, status=status, config={"lr": lr}, path=f"/runs/{trial_id}")


def report(psnr: float, step: int, epoch: int) -> dict:
    return {"eval/psnr": psnr, "eval/ssim": 0.5, "step": step, "epoch": epoch, "run_id": "run",
            "checkpoint_path": f"/runs/step-{step}"}


def test_each_trial_ranked_by_its_best_report_and_its_true_state() -> None:
    """A trial's best checkpoint, not its last; Tune marks the trials it stops at an interrupt
    TERMINATED, but only completed trials are done (or stopped early by ASHA)."""
    said: list[str] = []
    watch = TrialWatch("eval/psnr", epochs=2, say=said.append)
    hooks = watch.callback()
    trials = [trial("a", "TERMINATED", 1e-3), trial("b", "TERMINATED", 1e-4), trial("c", "TERMINATED", 2e-4),
              trial("d", "PENDING", 3e-4), trial("e", "ERROR", 4e-4)]
    hooks.on_step_begin(0, trials)
    for t in trials[:3] + trials[4:]:
        hooks.on_trial_start(0, trials, t)
    for t, reports in ((trials[0], [report(12.0, 2, 1), report(11.0, 4, 2)]), (trials[1], [report(10.0, 2, 1)]),
                       (trials[2], [report(9.0, 2, 1)])):
        for r in reports:
            hooks.on_trial_result(0, trials, t, r)
    hooks.on_trial_complete(0, trials, trials[0])
    hooks.on_trial_complete(0, trials, trials[1])
    hooks.on_trial_error(0, trials, trials[4])
    rows = {r.trial: r for r in watch.rows(["lr"], "max", any_report=True)}
    assert {k: r.status for k, r in rows.items()} == {"a": "done", "b": STOPPED_EARLY, "c": "interrupted",
                                                        "d": "not started", "e": "error"}
    assert (rows["a"].best, rows["a"].best_step, rows["a"].checkpoint) == (12.0, 2, "/runs/step-2")
    assert rows["a"].scores == {"eval/psnr": 12.0, "eval/ssim": 0.5}
    assert best_trial(list(rows.values()), "max", any_report=True).trial == "a"
    assert "trial a started: lr=0.001" in said and "trial b stopped early after 1 report(s)" in said
    assert "trial a report 2: eval/psnr 11 (epoch 2, step 4)" in said


@pytest.mark.parametrize("sweep,words", [
    ({"metric": "eval/fid"}, "unknown held-out score 'eval/fid'"),
    ({"metric": "eval/psnr", "mode": "min"}, "a higher eval/psnr is better, so mode must be 'max'"),
    ({"metric": "eval/warp_ratio", "mode": "max"}, "a lower eval/warp_ratio is better"),
])
def test_a_held_out_metric_is_known_and_its_direction_right(sweep: dict, words: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(words)):
        load(CONFIG, [f"sweep.{k}={v}" for k, v in sweep.items()])


def test_the_runs_of_stopped_trials_end_killed_and_finished_ones_stay(tmp_path: Path) -> None:
    """A trial Tune stopped mid-run never closed its MLflow run: the sweep ends it KILLED (FAILED for an
    error); a run its trainer closed keeps its status, whatever Tune says of the trial."""
    from mlflow.tracking import MlflowClient

    from cluster.sweep import SweepResult, _close_parent

    cfg = load(CONFIG, [f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}"])
    client = MlflowClient(tracking_uri=cfg.tracking.uri)
    experiment = client.create_experiment("sweep")
    runs = {name: client.create_run(experiment).info.run_id for name in ("parent", "won", "stopped", "raced", "broke")}
    for name in ("won", "raced"):  # closed by their own trainers
        client.set_terminated(runs[name], "FINISHED")
    rows = [TrialRow("won", {}, "done", 2, 20.0, run_id=runs["won"]),
            TrialRow("stopped", {}, STOPPED_EARLY, 1, 10.0, run_id=runs["stopped"]),
            TrialRow("raced", {}, STOPPED_EARLY, 1, 11.0, run_id=runs["raced"]),
            TrialRow("broke", {}, "error", 0, run_id=runs["broke"])]
    _close_parent(cfg, SweepResult(rows, best=rows[0], worst=rows[1], parent_run_id=runs["parent"], rule="r"),
                  "eval/psnr")
    status = {name: client.get_run(run_id).info.status for name, run_id in runs.items()}
    assert status == {"parent": "FINISHED", "won": "FINISHED", "stopped": "KILLED", "raced": "FINISHED",
                      "broke": "FAILED"}
