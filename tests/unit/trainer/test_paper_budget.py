"""benchmarks/paper_budget.py: the trainer's step counted on the meta device, as documented."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from models.build import build
from models.config import DiscriminatorConfig, GeneratorConfig, ModelConfig

REPO = Path(__file__).resolve().parents[3]
SCRIPT = REPO / "benchmarks" / "paper_budget.py"
TINY = ModelConfig(generator=GeneratorConfig(num_scales=2, ngf=8, n_downsample=2, n_blocks=2, n_blocks_local=1,
                                             spade_hidden=8),
                   discriminator=DiscriminatorConfig(ndf=8, n_layers=2, num_D=2, temporal_scales=1))


@pytest.fixture(scope="module")
def budget():
    spec = importlib.util.spec_from_file_location("paper_budget", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses resolve their annotations there
    spec.loader.exec_module(module)
    return module


def test_meta_counts_are_the_real_counts_and_activations_grow_with_the_frame(budget) -> None:
    small = budget.count(TINY, 5, scale=1, height=32, width=64, frames=2, frames_per_step=2)
    torch.manual_seed(0)
    gen = build(TINY, 5).generator
    with FlopCounterMode(display=False) as real, torch.no_grad():
        gen(torch.rand(1, 3, 5, 32, 64), torch.rand(1, 2, 3, 32, 64))
    assert small.frame_gflop == pytest.approx(real.get_total_flops() / 1e9)
    # Both scales train; the coarse scale's output heads do not reach the frame, so they stay frozen.
    heads = sum(p.numel() for head in gen.scales[0].heads() for p in head.parameters())
    assert (small.g_params, small.frozen_params) == (sum(p.numel() for p in gen.parameters()) - heads, heads)
    assert small.first_frame_params == sum(p.numel() for s in gen.scales for p in s.first_frame.parameters()) \
        - sum(p.numel() for p in gen.scales[0].first_frame["head"].parameters())
    assert small.step_gflop_per_frame > 2 * small.frame_gflop
    # As the trainer runs it (train.merge_passes): the same arithmetic but for the merged passes' share.
    apart = budget.count(TINY, 5, scale=1, height=32, width=64, frames=2, frames_per_step=2, merge_passes=False)
    assert apart.frame_gflop == small.frame_gflop and apart.step_gflop_per_frame != small.step_gflop_per_frame
    larger = budget.count(TINY, 5, scale=1, height=64, width=128, frames=2, frames_per_step=2)
    assert 3.5 < larger.chunk_act_gib / small.chunk_act_gib < 4.5  # 4x the pixels
    # ZeRO: stage 1 partitions the optimizer state, stage 2 the gradients as well.
    assert small.state_gib(0, 8) > small.state_gib(1, 8) > small.state_gib(2, 8) > small.state_gib(2, 16)


def test_the_script_prints_one_row_per_scale() -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--width", "128", "--gpus", "4", "--frames", "2",
                           "model.generator.ngf=8", "model.generator.n_blocks=2", "model.generator.n_blocks_local=1",
                           "model.generator.num_scales=2", "model.discriminator.ndf=8", "model.discriminator.num_D=2",
                           "model.discriminator.temporal_scales=1"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("paper.yaml: 2 scale(s), 36 label channels")
    rows = [line.split() for line in lines[2:]]
    assert [(row[0], row[1]) for row in rows] == [("0", "64x32"), ("1", "128x64")]
    g_params = [int(row[2].replace(",", "")) for row in rows]
    assert g_params[0] < g_params[1]  # while the coarse scale trains, the finer one waits frozen
    assert all(row[-1] == "yes/yes/yes" for row in rows)
