"""The typed config tree: YAML + dotted overrides, refusing unknown keys and wrong types by name."""
from __future__ import annotations

from pathlib import Path

import pytest

from cluster.config import load as load_root
from trainer.config import Config, load
from trainer.config_tree import ConfigError, flatten, to_yaml

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_defaults_and_overrides_resolve() -> None:
    cfg = load_root(REPO / "configs" / "demo.yaml", ["data.clip_frames=8", "data.pack.label_map={255: 1}"])
    assert isinstance(cfg, Config)
    assert cfg.data.clip_frames == 8
    assert cfg.data.pack.label_map == {255: 1}
    assert cfg.data.synth.width == 256  # from the file
    assert cfg.data.loader.min_scale == 0.8  # a default the file leaves alone


def test_every_config_file_loads() -> None:
    # The files in configs/ are for the `vid2vid` CLI, whose root adds the cluster sections.
    paths = sorted((REPO / "configs").glob("*.yaml"))
    assert {"demo.yaml", "paper.yaml", "tiny_train.yaml", "sweep_demo.yaml"} <= {p.name for p in paths}
    for path in paths:
        load_root(path)
    load(REPO / "configs" / "tiny_train.yaml")  # the torchrun entry point's config: trainer sections only


def test_unknown_key_names_key_and_file(tmp_path: Path) -> None:
    path = write(tmp_path, "data:\n  loader:\n    batchsize: 4\n")
    with pytest.raises(ConfigError, match=r"c\.yaml.*unknown key 'data\.loader\.batchsize'.*batch_size"):
        load(path)


def test_wrong_type_names_key_and_file(tmp_path: Path) -> None:
    path = write(tmp_path, "data:\n  clip_frames: sixteen\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: 'data\.clip_frames' must be an integer, got 'sixteen'"):
        load(path)
    with pytest.raises(ConfigError, match=r"'data\.loader\.flip' must be true or false"):
        load(write(tmp_path, "data:\n  loader:\n    flip: 1\n"))


def test_bad_override_names_the_override(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"command-line override 'data\.loader\.device=tpu'.*one of 'cpu', 'mixed'"):
        load(None, ["data.loader.device=tpu"])
    with pytest.raises(ConfigError, match=r"override 'data\.nope=1'.*unknown key 'data\.nope'"):
        load(None, ["data.nope=1"])
    with pytest.raises(ConfigError, match="expected dotted.key=value"):
        load(None, ["data.clip_frames"])


def test_range_check_names_section(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"c\.yaml: invalid 'data\.loader'.*min_scale"):
        load(write(tmp_path, "data:\n  loader:\n    min_scale: 1.5\n"))


def test_round_trip_through_yaml(tmp_path: Path) -> None:
    cfg = load(None, ["data.num_classes=35", "data.pack.resize=[64, 128]"])
    again = load(write(tmp_path, to_yaml(cfg)))
    assert again == cfg
    flat = flatten(cfg)
    assert flat["data.num_classes"] == 35 and flat["data.pack.resize"] == [64, 128]


def test_label_map_checked_against_num_classes() -> None:
    with pytest.raises(ConfigError, match=r"pack\.label_map \{255: 9\}.*0\.\.7"):
        load(None, ["data.pack.label_map={255: 9}"])
    with pytest.raises(ConfigError, match="label_kind 'rgb'"):
        load(None, ["data.pack.label_map={255: 1}", "data.pack.label_kind=rgb"])
    # Typed without the space, YAML reads one key, 255:1 (base 60: 15301), with no value.
    with pytest.raises(ConfigError, match=r"^override 'data.pack.label_map=\{255:1\}': a mapping key without a "
                                          r"value \(YAML reads \{255:1\} as one key: write a space after each ':', "
                                          r"as in \{255: 1\}\)$"):
        load(None, ["data.pack.label_map={255:1}"])


def test_exponent_floats_without_a_dot(tmp_path: Path) -> None:
    # YAML 1.1 reads 1e-4 as a string; users write it that way on the command line.
    cfg = load(None, ["data.loader.min_scale=5e-1"])
    assert cfg.data.loader.min_scale == 0.5
    with pytest.raises(ConfigError, match="must be a number"):
        load(None, ["data.loader.min_scale=half"])


@pytest.mark.parametrize("override,words", [
    ("eval.height=64", "height and width together"),
    ("eval.frames=1", "frames must be >= 2"),
    ("eval.split=test", "eval.split"),
    ("train.time_budget_s=-1", "time_budget_s must be >= 0"),
    ("train.channels_last=true", r"channels_last needs compile \(not off\)"),
])
def test_eval_and_budget_values_are_checked(override: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words) as caught:
        load(None, [override])
    assert f"override '{override}'" in str(caught.value)  # the override is named, even for a section-wide check
    assert load(None, ["eval.height=64", "eval.width=128", "train.time_budget_s=30"]).eval.width == 128
    assert load(None, ["train.compile=reduce-overhead", "train.channels_last=true"]).train.channels_last
