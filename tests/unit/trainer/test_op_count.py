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
    process of its own, on plain modules and on the trainer's DeepSpeed engines (whose hooks and Adam
    dispatch operators of their own)."""
    op_count.against("HEAD", 16, 32, frames=2, repeats=1)
    out = capsys.readouterr().out
    counts = {engines: [int(n) for n in re.findall(
        rf"trainer's step at 32x16 on {re.escape(label)}, (?:HEAD|this tree): (\d+) operators", out)]
        for engines, label in op_count.ENGINES.items()}
    assert all(len(found) == 2 for found in counts.values()) and min(counts["plain"]) > 1000, out
    assert min(counts["deepspeed"]) > max(counts["plain"]), out
    for label in op_count.ENGINES.values():
        assert re.search(rf"this tree against HEAD on {re.escape(label)}: [\d.]+x fewer operators, [\d.]+x fewer "
                         r"that are not views or aliases; profiler: [\d.]+x fewer ATen calls, [\d.]+x fewer "
                         r"outermost; host time [\d.]+x faster", out), out
    outermost = [int(n) for n in re.findall(r"ATen calls, (\d+) outermost", out)]
    assert len(outermost) == 4 and min(outermost) > 1000, out


def test_the_overflow_checks_and_bf16_zero0_are_counted(op_count, capsys) -> None:
    """bf16 ZeRO 2 engines: DeepSpeed's per-tensor overflow check dispatches operators of its own for every
    gradient tensor; the trainer's one-pass check a handful for all of them. bf16 ZeRO 0: more than both."""
    op_count.bf16_engine_costs(16, 32, frames=2)
    out = capsys.readouterr().out
    found = re.search(r"(\d+) with the gradient overflow check in one pass \(the default\), (\d+) with DeepSpeed's "
                      r"per-tensor check \([\d.]+x the one-pass count\), (\d+) without a check", out)
    assert found, out
    one_pass, theirs, off = map(int, found.groups())
    assert theirs > 2 * off > 1000, out
    # Per chunk: a few operators per update, not per tensor (2 chunks of 2 updates here).
    assert off < one_pass < off + 100, out
    zero0 = re.search(r"the same under ZeRO 0 \(bf16, one rank\): (\d+) operators not views or aliases, [\d.]+x "
                      r"ZeRO 2's", out)
    assert zero0 and int(zero0[1]) > theirs, out
