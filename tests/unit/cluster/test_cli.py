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
    out = subprocess.run([str(exe), "config", "show", "configs/demo.yaml", "data.clip_frames=8"],
                         cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert "clip_frames: 8" in out and "shards: data/demo/shards" in out


def test_config_error_is_one_line_with_exit_2(capsys: pytest.CaptureFixture) -> None:
    assert main(["config", "show", "configs/demo.yaml", "data.loader.batch_size=two"]) == 2
    err = capsys.readouterr().err
    assert "data.loader.batch_size" in err and "Traceback" not in err
