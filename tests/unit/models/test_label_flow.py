"""The flow prior from label maps: a moving region's flow, wide maps, and the generator adding it."""
import pytest
import torch

from models import label_flow as lf
from models.config import GeneratorConfig
from models.generator import Generator
from models.warp import warp

CLASSES = 4


def scene(shift: int, zoom: int = 1) -> torch.Tensor:
    """One-hot [1, C, 64 * zoom, 128 * zoom]: class 1 background, a class-2 box and a class-3 box, the
    second moved ``shift`` pixels to the right."""
    z = zoom
    ids = torch.ones(64 * z, 128 * z, dtype=torch.long)
    ids[8 * z:24 * z, 10 * z:30 * z] = 2
    ids[30 * z:54 * z, 40 * z + shift:80 * z + shift] = 3
    return torch.nn.functional.one_hot(ids, CLASSES).permute(2, 0, 1).float().unsqueeze(0)


def test_a_region_that_moves_gets_its_motion_and_the_rest_none() -> None:
    previous, current = scene(0), scene(3)
    flow = lf.label_flow(current, previous)
    assert flow.shape == (1, 2, 64, 128)
    # current(p) ~ previous(p + flow(p)): the box moved right, so its pixels came from 3 px to the left.
    box = flow[0, :, 34:50, 48:78]
    assert box[0].median().item() == pytest.approx(-3.0, abs=0.5) and box[1].abs().median() < 0.5
    assert flow[0, :, 10:22, 12:28].abs().max() < 0.5  # the box that stayed
    assert torch.allclose(warp(previous, flow)[0, 3, 34:50, 50:76], current[0, 3, 34:50, 50:76], atol=0.1)


def test_wide_maps_are_estimated_smaller_and_the_flow_scaled_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lf, "MAX_WIDTH", 128)  # 256 wide: estimated at half size, 3 px there, 6 px here
    flow = lf.label_flow(scene(6, zoom=2), scene(0, zoom=2))
    assert flow.shape == (1, 2, 128, 256)
    assert flow[0, 0, 68:100, 96:156].median().item() == pytest.approx(-6.0, abs=1.0)


def test_the_generator_warps_with_the_label_flow_plus_its_head() -> None:
    torch.manual_seed(0)
    cfg = GeneratorConfig(ngf=8, n_downsample=2, n_blocks=2, n_blocks_local=1, spade_hidden=8)
    assert cfg.flow_prior == "labels"
    gen = Generator(cfg, CLASSES).eval()
    labels = torch.stack([scene(0), scene(0), scene(3)], dim=1)  # frames t-2, t-1, t
    prev = torch.rand(1, 2, 3, 64, 128) * 2 - 1
    with torch.no_grad():
        out = gen(labels, prev)
        prior = lf.label_flow(labels[:, -1], labels[:, -2])
    assert prior.abs().max() > 2  # something moved, and a fresh head adds exactly nothing to it
    assert torch.equal(out.flow, prior) and torch.allclose(out.warped, warp(prev[:, -1], prior))
    with torch.no_grad():
        gen.scales[0].flow_head.conv.bias.copy_(torch.tensor([0.05, 0.0]))  # x20 -> +1 px in x
        assert torch.allclose(gen(labels, prev).flow, prior + torch.tensor([1.0, 0.0]).view(1, 2, 1, 1))
    with torch.no_grad():
        still = gen(torch.stack([scene(0)] * 3, dim=1), prev)
    assert torch.equal(still.flow, torch.full_like(still.flow, 1.0) * torch.tensor([1.0, 0.0]).view(1, 2, 1, 1))


def test_the_same_pair_gives_the_same_flow_whatever_came_before() -> None:
    """A resumed run must repeat the uninterrupted one: no estimator state carries across calls (a
    reused DIS object that had seen another size gave a different flow for the same pair)."""
    g = torch.Generator().manual_seed(0)

    def noise(height: int, width: int) -> torch.Tensor:
        ids = torch.randint(0, CLASSES, (height, width), generator=g)
        return torch.nn.functional.one_hot(ids, CLASSES).permute(2, 0, 1).float().unsqueeze(0)

    current, previous = noise(32, 64), noise(32, 64)
    first = lf.label_flow(current, previous)
    lf.label_flow(noise(16, 32), noise(16, 32))  # an earlier stage's size
    assert torch.equal(lf.label_flow(current, previous), first)


def test_the_label_flow_error_benchmark_runs_as_documented():
    """benchmarks/label_flow_error.py on one short sequence: every flow it compares, and the real
    frames' DIS flow well below zero motion (the truth it is measured against is exact)."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[3] / "benchmarks" / "label_flow_error.py"
    out = subprocess.run([sys.executable, str(script), "--sequences", "1", "--frames", "4"],
                         capture_output=True, text=True, check=True, timeout=120).stdout
    assert out.startswith("1 sequences x 3 frame pairs, 64x128")
    ratios = dict(re.findall(r"^  (\w+(?: DIS)?) +end-point error [\d.]+ px  \(([\d.]+)x zero", out, re.M))
    assert set(ratios) == {"zero", "nearest", "area", "packed", "real DIS"}
    assert float(ratios["zero"]) == 1.0 and float(ratios["real DIS"]) < 0.6


@pytest.mark.parametrize("max_width", [512, 64])
def test_a_clips_label_flows_are_those_of_its_frame_pairs(monkeypatch: pytest.MonkeyPatch, max_width: int) -> None:
    """``clip_label_flows``: every frame's flow to the one before it in one call (one copy to the host
    and back), exactly what ``label_flow`` gives pair by pair; 64 wide: estimated at half size."""
    monkeypatch.setattr(lf, "MAX_WIDTH", max_width)
    clip = torch.stack([torch.cat([scene(2 * t), scene(5 - t)]) for t in range(4)], dim=1)  # [2, 4, C, 64, 128]
    flows = lf.clip_label_flows(clip)
    assert flows.shape == (2, 3, 2, 64, 128) and flows.abs().max() > 1
    for t in range(1, 4):
        assert torch.equal(flows[:, t - 1], lf.label_flow(clip[:, t], clip[:, t - 1]))
    assert lf.clip_label_flows(clip[:, :1]).shape == (2, 0, 2, 64, 128)


def test_a_clip_is_generated_with_its_label_flows_computed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """``generate_clip`` and the trainer's step ask for the clip's label flows once, not once per frame,
    and make what a flow per frame makes."""
    import models.generator as generator_module
    from models.generator import generate_clip

    torch.manual_seed(0)
    gen = Generator(GeneratorConfig(ngf=8, n_downsample=2, n_blocks=2, n_blocks_local=1, spade_hidden=8),
                    CLASSES).eval()
    labels = torch.stack([scene(2 * t) for t in range(4)], dim=1)
    with torch.no_grad():
        ahead = generate_clip(gen, labels)
        calls = []
        monkeypatch.setattr(generator_module, "clip_label_flows", lambda x: calls.append(x) or None)
        monkeypatch.setattr(generator_module.Rollout, "label_priors", lambda self, x: None)
        per_frame = generate_clip(gen, labels)
    assert ahead.flow.abs().max() > 1 and not calls
    assert torch.equal(ahead.images, per_frame.images) and torch.equal(ahead.flow, per_frame.flow)
