"""Engine files are checked before DeepSpeed unpickles them (it loads with weights_only=False)."""
from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from trainer.engines import UnsafeCheckpointError, check_pickled_classes


def optim_file(folder: Path, extra: object) -> Path:
    """A ZeRO optimizer file as DeepSpeed writes one (its loss scaler pickled), plus ``extra``."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum

    path = folder / "generator" / "ds" / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    path.parent.mkdir(parents=True)
    torch.save({"optimizer_state_dict": {"loss_scaler": LossScaler(1.0), "zero_stage": ZeroStageEnum.gradients,
                                         "state": {0: {"exp_avg": torch.zeros(3)}}, "extra": extra}}, path)
    return path


def test_what_deepspeed_pickles_passes(tmp_path: Path) -> None:
    optim_file(tmp_path, None)
    torch.save({"module": {"w": torch.ones(2)}}, tmp_path / "generator" / "ds" / "mp_rank_00_model_states.pt")
    check_pickled_classes(tmp_path / "generator")


def test_any_other_class_is_refused_before_it_is_unpickled(tmp_path: Path) -> None:
    path = optim_file(tmp_path, argparse.Namespace(lr=1.0))
    with pytest.raises(UnsafeCheckpointError, match=rf"{path}: would unpickle argparse.Namespace, which no checkpoint"):
        check_pickled_classes(tmp_path)
