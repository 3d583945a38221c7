"""Inference in row stripes (models/stripes.py): the same outputs as the plain modules, from float or
compact uint8 label planes, with the stripes forced small enough that every border case occurs."""
import pytest
import torch
from torch import nn

import models.stripes as stripes
from models.config import GeneratorConfig
from models.generator import Generator, Rollout
from models.layers import ConvBlock, OutputConv, ResBlock
from models.spade import SPADE

LABELS = 5


@pytest.fixture
def small_stripes(monkeypatch):
    """A few hundred bytes a stripe: 1-3 output rows, so stripes start and end at the borders and inside."""
    monkeypatch.setattr(stripes, "STRIPE_BYTES", 600)


def label_planes(batch, frames, height, width, seed=0):
    """One-hot class planes plus a sparse 0/1 edge plane, float [B, T, C+1, H, W]."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, LABELS, (batch, frames, height, width), generator=g)
    planes = torch.nn.functional.one_hot(ids, LABELS).permute(0, 1, 4, 2, 3).float()
    edges = (torch.rand(batch, frames, 1, height, width, generator=g) > 0.8).float()
    return torch.cat([planes, edges], dim=2)


@pytest.mark.parametrize("upsample", [False, True])
@pytest.mark.parametrize("norm", ["spade", "instance"])
def test_a_conv_block_striped_gives_the_plain_output(small_stripes, upsample, norm):
    torch.manual_seed(0)
    block = ConvBlock(6, 4, 7 if not upsample else 3, norm, upsample=upsample, cond_channels=LABELS + 1,
                      hidden=5).eval()
    x = torch.randn(2, 6, 5, 7)
    cond = label_planes(2, 1, 10 if upsample else 5, 14 if upsample else 7)[:, 0]
    with torch.enable_grad():  # the plain path: autograd on and float inputs
        plain = block(x, cond).detach()
    with torch.no_grad():
        assert stripes.striped(x, torch.float32, upsample)
        out = block(x, cond.to(torch.uint8))
    assert out.shape == plain.shape
    torch.testing.assert_close(out, plain, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", ["reflect", "zeros"])
def test_a_residual_block_and_the_output_conv_striped(small_stripes, mode):
    torch.manual_seed(0)
    res, head = ResBlock(4, "spade", LABELS + 1, hidden=3).eval(), OutputConv(4, 3).eval()
    for conv in (res.conv1, res.conv2):
        conv.padding_mode = mode
    x, cond = torch.randn(1, 4, 9, 6), label_planes(1, 1, 9, 6)[:, 0]
    plain = head(res(x, cond)).detach()
    with torch.no_grad():
        striped = head(res(x, cond.to(torch.uint8)))
    torch.testing.assert_close(striped, plain, atol=1e-5, rtol=1e-5)


def test_spade_in_place_writes_into_its_input(small_stripes):
    torch.manual_seed(0)
    spade = SPADE(3, LABELS + 1, 4).eval()
    x, cond = torch.randn(1, 3, 8, 5), label_planes(1, 1, 8, 5)[:, 0]
    plain = spade(x, cond).detach()
    with torch.no_grad():
        mine = x.clone()
        out = spade(mine, cond.to(torch.uint8), inplace=True)
    assert out.data_ptr() == mine.data_ptr()
    torch.testing.assert_close(out, plain, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("scales", [1, 2])
@pytest.mark.parametrize("first_frame", ["own", "shared"])
def test_a_generated_clip_from_compact_planes_in_stripes_is_the_plain_one(monkeypatch, scales, first_frame):
    torch.manual_seed(0)
    cfg = GeneratorConfig(ngf=8, n_downsample=2, n_blocks=2, n_blocks_local=1, spade_hidden=8,
                          num_scales=scales, first_frame=first_frame)
    gen = Generator(cfg, LABELS + 1).eval()
    labels = label_planes(1, 4, 16, 32)

    def clip(planes):
        rollout = Rollout(gen)
        with torch.no_grad():
            return torch.stack([rollout.step(planes[:, t]).image for t in range(planes.shape[1])], dim=1)
    plain = clip(labels)  # 16x32 inputs are far under the default stripe size: the plain modules
    monkeypatch.setattr(stripes, "STRIPE_BYTES", 2000)
    compact = clip(labels.to(torch.uint8))
    torch.testing.assert_close(compact, plain, atol=1e-5, rtol=1e-5)


def test_training_takes_the_plain_path():
    x = torch.randn(1, 4, 512, 512)  # 4 MiB: above a tiny stripe size, but autograd is on
    assert not stripes.striped(x, torch.float32)
    assert stripes.striped(x.to(torch.uint8), torch.float32)  # compact planes are converted either way
    with torch.no_grad():
        assert not stripes.striped(x, torch.float32)  # under STRIPE_BYTES
        assert stripes.striped(torch.empty(1, 36, 1024, 2048), torch.float32)


def test_stripes_cover_every_row_once():
    spans = stripes.stripes(1000, stripes.STRIPE_BYTES // 7)
    assert spans[0][0] == 0 and spans[-1][1] == 1000 and len(spans) == 143
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    assert stripes.stripes(3, 10 * stripes.STRIPE_BYTES) == [(0, 1), (1, 2), (2, 3)]


def test_an_unknown_padding_mode_is_refused():
    with pytest.raises(ValueError, match="padding mode 'circular'"):
        stripes.conv_rows(nn.Conv2d(1, 1, 3), torch.zeros(1, 1, 4, 4), 1, "circular")
