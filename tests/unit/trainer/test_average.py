"""The running average of the generator's weights: its warm-up, restart, swap-in and checkpoint file."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from trainer.average import AVERAGE_FILE, WeightAverage, averaged_state


def net(value: float) -> nn.Module:
    module = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    with torch.no_grad():
        for p in module.parameters():
            p.fill_(value)
    return module


def test_the_average_warms_up_then_decays_at_its_rate() -> None:
    module, average = net(0.0), WeightAverage(0.5)
    average.update(module)  # first update: starts from these weights; beta = 1/10
    weight = module[0].weight
    with torch.no_grad():
        weight.fill_(10.0)
    average.update(module)  # beta = min(0.5, 2/11)
    expected = (2 / 11) * 0.0 + (9 / 11) * 10.0
    assert average.shadow["0.weight"][0, 0].item() == pytest.approx(expected)
    for _ in range(50):
        average.update(module)  # beta is capped at the decay: converges to the weights
    assert average.shadow["0.weight"][0, 0].item() == pytest.approx(10.0, abs=1e-6)
    assert average.updates == 52
    module[1].num_batches_tracked.fill_(7)
    average.update(module)
    assert average.shadow["1.num_batches_tracked"].item() == 7  # integer buffers are copied, not averaged


def test_applied_swaps_the_average_in_and_restores_the_weights() -> None:
    module, average = net(1.0), WeightAverage(0.9)
    average.reset(module)
    with torch.no_grad():
        module[0].weight.fill_(5.0)
    with average.applied(module) as inside:
        assert inside is module and module[0].weight[0, 0].item() == 1.0
    assert module[0].weight[0, 0].item() == 5.0
    off = WeightAverage(0.0)
    off.update(module)
    with off.applied(module):
        assert module[0].weight[0, 0].item() == 5.0  # off: the weights themselves
    assert not off.shadow


def test_save_and_load_continue_exactly(tmp_path: Path) -> None:
    module, average = net(1.0), WeightAverage(0.99)
    for value in (1.0, 2.0, 3.0):
        with torch.no_grad():
            module[0].weight.fill_(value)
        average.update(module)
    average.save(tmp_path)
    assert torch.equal(averaged_state(tmp_path)["0.weight"], average.shadow["0.weight"])
    resumed = WeightAverage(0.99)
    resumed.load(tmp_path, net(0.0))
    assert resumed.updates == 3 and all(torch.equal(resumed.shadow[k], v) for k, v in average.shadow.items())
    torch.load(tmp_path / AVERAGE_FILE, weights_only=True)  # plain tensors and numbers
    fresh = WeightAverage(0.99)
    fresh.load(tmp_path / "none", net(4.0))  # an older checkpoint without an average: start from the weights
    assert fresh.updates == 0 and fresh.shadow["0.weight"][0, 0].item() == 4.0
    assert averaged_state(tmp_path / "none") is None


def test_a_loaded_average_lives_where_the_module_does(tmp_path: Path) -> None:
    """The file is read onto the CPU; a generator on a GPU folds its weights into the average in place, so
    the average must be moved there (the meta device stands in for the GPU this machine lacks)."""
    average = WeightAverage(0.99)
    average.update(net(1.0))
    average.save(tmp_path)
    elsewhere = net(2.0).to("meta")
    resumed = WeightAverage(0.99)
    resumed.load(tmp_path, elsewhere)
    assert {value.device.type for value in resumed.shadow.values()} == {"meta"}
    resumed.update(elsewhere)  # on the CPU's copy: "Expected all tensors to be on the same device"
