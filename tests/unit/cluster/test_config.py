"""The `cluster` and `sweep` sections and the root config the CLI loads."""
from __future__ import annotations

from pathlib import Path

import pytest

from cluster.config import ClusterConfig, RootConfig, SweepConfig, load
from trainer.config import Config
from trainer.config_tree import ConfigError

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("name", ["demo.yaml", "sweep_demo.yaml", "tiny_train.yaml", "paper.yaml"])
def test_every_config_file_loads(name: str) -> None:
    cfg = load(REPO / "configs" / name)
    assert isinstance(cfg, RootConfig) and isinstance(cfg, Config)  # what trainer.loop.train takes


def test_demo_is_the_issue_s_main_job() -> None:
    cfg = load(REPO / "configs" / "demo.yaml")
    assert cfg.cluster.num_workers == 2
    assert cfg.train.generator.zero_stage == cfg.train.discriminator.zero_stage == 2
    assert cfg.model.generator.num_scales == 2
    from trainer.schedule import stage_at
    stages = [stage_at(cfg.train.schedule, e, scales=2, height=cfg.train.height, width=cfg.train.width)
              for e in range(cfg.train.epochs)]
    assert [s.frames for s in stages] == [2, 4, 8, 2, 4, 8]
    assert [s.scale for s in stages] == [0, 0, 0, 1, 1, 1]


def test_overrides_reach_the_cluster_section() -> None:
    cfg = load(REPO / "configs" / "tiny_train.yaml", ["cluster.num_workers=3", "cluster.address=auto"])
    assert cfg.cluster.num_workers == 3 and cfg.cluster.address == "auto"


@pytest.mark.parametrize("override, key", [
    ("cluster.num_workers=0", "num_workers"),
    ("cluster.max_failures=-2", "max_failures"),
    ("cluster.name=has space", "name"),
    ("cluster.cpus_per_worker=0", "cpus_per_worker"),
    ("cluster.workers=2", "cluster.workers"),
    ("sweep.search={train.lr: {normal: [0, 1]}}", "normal"),
    ("sweep.search={train.lr: {loguniform: [0, 1]}}", "loguniform"),
    ("sweep.search={train.lr: {uniform: [1]}}", "uniform"),
    ("sweep.reduction_factor=1", "reduction_factor"),
])
def test_bad_values_are_refused_naming_them(override: str, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        load(REPO / "configs" / "tiny_train.yaml", [override])
    assert key in str(err.value)


def test_numeric_bounds_written_without_a_dot_are_numbers() -> None:
    sweep = SweepConfig(search={"train.generator.lr": {"loguniform": ["1e-4", "1e-3"]}})
    assert sweep.search["train.generator.lr"]["loguniform"] == [1e-4, 1e-3]
    with pytest.raises(ValueError, match="not a number"):
        SweepConfig(search={"x": {"uniform": ["low", 1]}})


def test_defaults_are_valid() -> None:
    assert ClusterConfig().num_workers >= 1 and RootConfig().sweep.metric
