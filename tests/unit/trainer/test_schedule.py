"""The progressive curriculum against a hand-written table, and its config checks."""
from __future__ import annotations

import pytest

from trainer.config import ScheduleConfig, load
from trainer.config_tree import ConfigError
from trainer.schedule import Stage, stage_at

CFG = ScheduleConfig(epochs_per_scale=4, fix_coarse_epochs=1, start_frames=2, frames_double_every=1,
                     max_frames=6)

# epoch -> (scale, height, width, frames, train_coarse): 3 scales at 64x128 full size.
TABLE = {
    0: (0, 16, 32, 2, True),    # coarsest scale first, at 1/4 size; it has nothing coarser to freeze
    1: (0, 16, 32, 4, True),    # frames double every epoch ...
    2: (0, 16, 32, 6, True),    # ... capped at max_frames
    3: (0, 16, 32, 6, True),
    4: (1, 32, 64, 2, False),   # scale 1 added: trains alone, clip length restarts
    5: (1, 32, 64, 4, True),    # then jointly
    7: (1, 32, 64, 6, True),
    8: (2, 64, 128, 2, False),  # finest scale
    9: (2, 64, 128, 4, True),
    30: (2, 64, 128, 6, True),  # the finest scale keeps training to the end
}


@pytest.mark.parametrize("epoch", sorted(TABLE))
def test_stage_table(epoch: int) -> None:
    scale, height, width, frames, coarse = TABLE[epoch]
    assert stage_at(CFG, epoch, scales=3, height=64, width=128) == Stage(scale, height, width, frames, coarse)


def test_trainable_scales() -> None:
    assert stage_at(CFG, 4, scales=3, height=64, width=128).trainable_scales == (1,)
    assert stage_at(CFG, 5, scales=3, height=64, width=128).trainable_scales == (0, 1)
    assert stage_at(CFG, 0, scales=1, height=64, width=128).trainable_scales == (0,)


def test_single_scale_is_full_size_and_never_frozen() -> None:
    for epoch in range(12):
        stage = stage_at(CFG, epoch, scales=1, height=64, width=128)
        assert (stage.scale, stage.height, stage.width, stage.train_coarse) == (0, 64, 128, True)


def test_no_fixed_epochs_trains_jointly_at_once() -> None:
    cfg = ScheduleConfig(epochs_per_scale=2, fix_coarse_epochs=0, start_frames=4, max_frames=4)
    assert stage_at(cfg, 2, scales=2, height=32, width=32) == Stage(1, 32, 32, 4, True)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="epoch must be >= 0"):
        stage_at(CFG, -1, scales=1, height=64, width=64)
    with pytest.raises(ValueError, match="not divisible"):
        stage_at(CFG, 0, scales=3, height=66, width=64)
    with pytest.raises(ValueError, match="fix_coarse_epochs"):
        ScheduleConfig(epochs_per_scale=2, fix_coarse_epochs=3)


def test_cross_section_limits_name_the_keys() -> None:
    with pytest.raises(ConfigError, match=r"train\.schedule\.max_frames \(32\) exceeds data\.clip_frames"):
        load(None, ["train.schedule.max_frames=32", "data.clip_frames=16"])
    with pytest.raises(ConfigError, match=r"multiples of 2\*\*\(model\.generator\.n_downsample \+ num_scales - 1\) "
                                          r"= 32: the coarsest stage trains at 16x64"):
        load(None, ["model.generator.num_scales=3", "model.generator.ngf=32", "train.height=66"])
    # Every stage must fit, not only the full size: 36 halves to 18, which 2 downsamplings cannot take.
    with pytest.raises(ConfigError, match=r"\(36x128\) must be multiples of .* = 8: the coarsest stage trains at 18x64"):
        load(None, ["model.generator.num_scales=2", "model.generator.n_downsample=2", "train.height=36",
                    "train.width=128"])


def test_lr_constant_then_linear_decay() -> None:
    from trainer.schedule import lr_factor
    got = [round(lr_factor(e, epochs=6, decay_epochs=3), 6) for e in range(6)]
    assert got == [1.0, 1.0, 1.0, 0.75, 0.5, 0.25]
    assert [lr_factor(e, epochs=3, decay_epochs=0) for e in range(3)] == [1.0, 1.0, 1.0]
