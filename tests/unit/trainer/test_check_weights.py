"""``trainer.step.check_weights``: what a checkpoint refuses to save, by name (the trainer test covers the
run ending on it; here each kind of tensor it reads, in one process)."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from trainer.step import NonFiniteWeightsError, check_weights


def engines() -> SimpleNamespace:
    generator = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    discriminator = nn.Sequential(nn.Linear(4, 1))
    return SimpleNamespace(generator=SimpleNamespace(module=generator),
                           discriminator=SimpleNamespace(module=discriminator))


def refusal(pair: SimpleNamespace, average: dict[str, torch.Tensor] | None = None) -> str:
    with pytest.raises(NonFiniteWeightsError) as caught:
        check_weights(pair, 7, Path("/ckpt/step-000000006"), average)
    return str(caught.value)


def test_finite_weights_pass() -> None:
    pair = engines()
    check_weights(pair, 7, None, {name: t.float() for name, t in pair.generator.module.state_dict().items()})


def test_a_parameter_a_buffer_or_the_average_that_is_not_finite_is_named() -> None:
    pair = engines()
    with torch.no_grad():
        pair.discriminator.module[0].weight[0, 1] = float("inf")
    message = refusal(pair)
    assert "after step 7 1 of 8 weight tensors are not finite (first: discriminator.0.weight)" in message, message
    assert "the last checkpoint, step-000000006, is left as it was" in message, message

    pair = engines()
    pair.generator.module[1].running_var[2] = float("nan")  # a batch variance that overflowed
    assert "(first: generator.1.running_var)" in refusal(pair)

    pair = engines()
    average = {name: t.float().clone() for name, t in pair.generator.module.state_dict().items()}  # as WeightAverage keeps it
    average["0.bias"][0] = float("nan")
    message = refusal(pair, average)
    assert "1 of 15 weight tensors" in message and "(first: generator average.0.bias)" in message, message


def test_without_a_checkpoint_yet_it_says_so() -> None:
    pair = engines()
    with torch.no_grad():
        pair.generator.module[0].weight.fill_(float("nan"))
    with pytest.raises(NonFiniteWeightsError, match="not saved, no checkpoint was written"):
        check_weights(pair, 1, None)
