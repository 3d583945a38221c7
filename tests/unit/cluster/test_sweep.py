"""The pure parts of `vid2vid sweep`: search space, trial configs, the best trial and the table."""
from __future__ import annotations

from pathlib import Path

import pytest

from cluster.config import load
from cluster.sweep import TrialRow, best_trial, check_search, format_table, trial_config, tune_space
from trainer.config_tree import ConfigError, to_dict

REPO = Path(__file__).resolve().parents[3]


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


ROWS = [TrialRow("t0", {"lr": 1e-4}, 120.0, 2, "done", "r0"),
        TrialRow("t1", {"lr": 5e-4}, 50.0, 1, "done", "r1"),   # stopped early by ASHA at a coarser stage
        TrialRow("t2", {"lr": 2e-4}, 100.0, 2, "done", "r2"),
        TrialRow("t3", {"lr": 9e-4}, None, 0, "error", "")]


def test_best_is_chosen_among_trials_that_ran_to_the_end() -> None:
    assert best_trial(ROWS, "min").trial == "t2"
    assert best_trial(ROWS, "max").trial == "t0"
    assert best_trial([ROWS[3]], "min") is None


def test_table_lists_every_trial_best_first() -> None:
    best = best_trial(ROWS, "min")
    lines = format_table(ROWS, "g/flow", best).splitlines()
    assert lines[0].split() == ["TRIAL", "lr", "g/flow", "REPORTS", "STATUS", "RUN"]
    assert lines[1].split()[:3] == ["*", "t2", "0.0002"]
    assert len(lines) == 5 and "error" in lines[-1]
