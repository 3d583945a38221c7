"""benchmarks/op_count.py: operators of a frame and of a step, the trainer's own step among them."""
from __future__ import annotations

import importlib.util
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
    # A pass per set of frames: more discriminator passes, more operators.
    apart, apart_ops = op_count.trainer_step_ops(TINY, 4, 16, 32, frames=4, merge_passes=False)
    assert apart > small and apart_ops.ops["aten.convolution"] > ops.ops["aten.convolution"]
    per_frame, _ = op_count.ops_per_frame(TINY, 4, 16, 32, frames=3)
    assert 0 < per_frame < small / 4
