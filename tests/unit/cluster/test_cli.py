"""The `vid2vid` console script: help on every subcommand, config show, clear errors."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cluster.cli import build_parser, main

REPO = Path(__file__).resolve().parents[3]


def _subcommands(parser) -> list[list[str]]:
    paths = []
    for action in parser._subparsers._group_actions:  # argparse keeps subparsers here
        for name, sub in action.choices.items():
            paths.append([name])
            if sub._subparsers is not None:
                paths += [[name, *rest] for rest in _subcommands(sub)]
    return paths


def test_every_subcommand_has_help(capsys: pytest.CaptureFixture) -> None:
    paths = _subcommands(build_parser())
    assert ["config", "show"] in paths and ["data", "pack"] in paths
    for path in paths:
        with pytest.raises(SystemExit) as exit_info:
            main([*path, "--help"])
        assert exit_info.value.code == 0
        assert "usage: vid2vid " + " ".join(path) in capsys.readouterr().out


def test_config_show_prints_resolved_config() -> None:
    # Through the installed console script: what a user runs.
    exe = Path(sys.executable).with_name("vid2vid")
    out = subprocess.run([str(exe), "config", "show", "configs/demo.yaml", "data.clip_frames=8",
                          "train.generator.lr=1e-4"],  # as the README shows it
                         cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert "clip_frames: 8" in out and "shards: data/demo/shards" in out
    assert "lr: 0.0001" in out.split("generator:")[2]  # train.generator, after model.generator


def test_config_error_is_one_line_with_exit_2(capsys: pytest.CaptureFixture) -> None:
    assert main(["config", "show", "configs/demo.yaml", "data.loader.batch_size=two"]) == 2
    err = capsys.readouterr().err
    assert "data.loader.batch_size" in err and "Traceback" not in err


def test_generate_size_flags_are_checked_in_one_line(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    common = ["generate", "--model", str(tmp_path / "none"), "--labels", str(tmp_path), "--out"]
    assert main([*common, str(tmp_path / "a.mp4"), "--height", "64"]) == 1
    assert capsys.readouterr().err.strip() == "vid2vid: --height and --width go together"
    assert main([*common, str(tmp_path / "a.txt")]) == 1  # before a model is looked for
    assert capsys.readouterr().err.strip() == f"vid2vid: --out {tmp_path / 'a.txt'}: the video is written as an .mp4 file"


def test_overrides_may_follow_options(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    # Reaches the manifest reader (a one-line error, exit 1), so the override after --wait was accepted.
    assert main(["submit", str(tmp_path / "missing.yaml"), "--wait", "train.epochs=1"]) == 1
    assert "cannot read" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["submit", str(tmp_path / "missing.yaml"), "--wait", "--bogus"])
    assert exit_info.value.code == 2


def test_new_commands_are_there() -> None:
    paths = _subcommands(build_parser())
    for path in (["train"], ["submit"], ["jobs", "list"], ["jobs", "status"], ["jobs", "logs"], ["jobs", "stop"],
                 ["sweep"], ["model", "publish"], ["model", "list"], ["model", "fetch"], ["generate"], ["demo"],
                 ["data", "synth"], ["data", "inspect"]):
        assert path in paths, path


def test_cli_module_imports_nothing_heavy() -> None:
    code = "import sys, cluster.cli; print(sorted(m for m in ('torch', 'ray', 'mlflow', 'deepspeed') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("override,words", [
    ("cluster.num_workers=64", "cluster.num_workers=64 workers of cluster.cpus_per_worker=1.0 CPU need more than"),
    ("checkpoint.dir=/proc/vid2vid-nowhere", "checkpoint.dir=/proc/vid2vid-nowhere/vid2vid: not writable"),
])
def test_what_would_fail_in_every_worker_is_one_line_before_any_starts(
        override: str, words: str, capsys: pytest.CaptureFixture) -> None:
    """Refused by `vid2vid train` itself (no Ray started): one line naming the key, exit 1."""
    assert main(["train", "--config", str(REPO / "configs" / "tiny_train.yaml"), override,
                 "cluster.num_cpus=2"]) == 1
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
