"""benchmarks/op_count.py: operators of a frame and of a step, the trainer's own step among them."""
from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

from models.config import DiscriminatorConfig, GeneratorConfig, ModelConfig

REPO = Path(__file__).resolve().parents[3]
TINY = ModelConfig(generator=GeneratorConfig(num_scales=2, ngf=8, n_downsample=2, n_blocks=2, n_blocks_local=1,
                                             spade_hidden=8),
                   discriminator=DiscriminatorConfig(ndf=8, n_layers=2, num_D=2, temporal_scales=1))


@pytest.fixture(scope="module")
def op_count():
    sys.path.insert(0, str(REPO / "benchmarks"))  # it imports its neighbours, as when run as a script
    spec = importlib.util.spec_from_file_location("op_count", REPO / "benchmarks" / "op_count.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_counts_do_not_depend_on_the_frame_size_and_grow_with_the_clip(op_count) -> None:
    small, ops = op_count.trainer_step_ops(TINY, 4, 16, 32, frames=4, merge_passes=True)
    assert op_count.trainer_step_ops(TINY, 4, 32, 64, frames=4, merge_passes=True)[0] == small  # the docstring's promise
    assert ops.ops["aten.convolution"] > 0 and ops.ops["aten.convolution_backward"] > 0
    # Two chunks of 2 frames against one: every chunk adds a D and a G update.
    assert op_count.trainer_step_ops(TINY, 4, 16, 32, frames=2, merge_passes=True)[0] < small
    # A pass per set of frames (train.merge_passes=false): more discriminator passes, more operators.
    apart, apart_ops = op_count.trainer_step_ops(TINY, 4, 16, 32, frames=4, merge_passes=False)
    assert apart_ops.computing > ops.computing and apart_ops.ops["aten.convolution"] > ops.ops["aten.convolution"]
    assert 0 < ops.views < ops.total
    per_frame, _ = op_count.ops_per_frame(TINY, 4, 16, 32, frames=3)
    assert 0 < per_frame < small / 4


def test_against_a_commit_measures_both_trees(op_count, capsys) -> None:
    """``--against REV``: step_cost.py on a copy of the commit (here HEAD) and on this tree, each in a
    process of its own; HEAD has the same step as a clean checkout, so the counts agree there."""
    op_count.against("HEAD", 16, 32, frames=2, repeats=1)
    out = capsys.readouterr().out
    counts = [int(n) for n in re.findall(r"trainer's step at 32x16, (?:HEAD|this tree): (\d+) operators", out)]
    assert len(counts) == 2 and min(counts) > 1000, out
    assert re.search(r"this tree against HEAD: [\d.]+x fewer operators, [\d.]+x fewer that are not views or "
                     r"aliases; profiler: [\d.]+x fewer ATen calls, [\d.]+x fewer outermost; host time [\d.]+x "
                     r"faster", out), out
    outermost = [int(n) for n in re.findall(r"ATen calls, (\d+) outermost", out)]
    assert len(outermost) == 2 and min(outermost) > 1000, out
