"""Feature lists of the image and temporal discriminators, and the temporal windows."""
import pytest
import torch

from models.config import DiscriminatorConfig
from models.discriminators import (FLOW_INPUT_SCALE, ImageDiscriminator, TemporalDiscriminator,
                                   temporal_windows)

LABELS = 5


def test_image_discriminator_returns_every_layer_per_scale():
    cfg = DiscriminatorConfig(ndf=8, n_layers=3, num_D=3)
    disc = ImageDiscriminator(cfg, LABELS)
    out = disc(torch.rand(2, LABELS, 32, 64), torch.rand(2, 3, 32, 64))
    assert len(out) == 3
    for index, features in enumerate(out):
        assert len(features) == cfg.n_layers + 2  # every conv layer, logits last
        assert [f.shape[1] for f in features] == [8, 16, 32, 64, 1]
        assert all(f.shape[0] == 2 for f in features)
        # Scale i sees the input pooled i times: pix2pixHD's geometry (k4, pad 2).
        size = 32 // 2 ** index
        for stride in (2, 2, 2):
            size = size // stride + 1
        assert features[2].shape[2] == size
    assert out[0][-1].shape[2] > out[1][-1].shape[2] > out[2][-1].shape[2]


def test_image_discriminator_folds_time_into_batch_and_checks_shapes():
    disc = ImageDiscriminator(DiscriminatorConfig(ndf=4, num_D=1), LABELS)
    out = disc(torch.rand(2, 3, LABELS, 16, 16), torch.rand(2, 3, 3, 16, 16))
    assert out[0][-1].shape[0] == 6
    with pytest.raises(ValueError, match="share leading dims"):
        disc(torch.rand(2, LABELS, 16, 16), torch.rand(3, 3, 16, 16))


def test_temporal_windows_pick_strided_frames_and_compose_flows():
    frames = torch.arange(7, dtype=torch.float32).view(1, 7, 1, 1, 1).expand(1, 7, 3, 6, 6)
    flow = torch.zeros(1, 7, 2, 6, 6)
    flow[:, :, 0] = 1.0  # every frame moved by one pixel in x
    clips, flows = temporal_windows(frames, flow, length=3, stride=1)
    assert clips.shape == (3, 3, 3, 6, 6) and flows.shape == (3, 2, 2, 6, 6)
    assert clips[:, :, 0, 0, 0].tolist() == [[0, 1, 2], [2, 3, 4], [4, 5, 6]]
    clips, flows = temporal_windows(frames, flow, length=3, stride=3)
    assert clips[:, :, 0, 0, 0].tolist() == [[0, 3, 6]]
    assert torch.allclose(flows[:, :, 0], torch.full((1, 2, 6, 6), 3.0), atol=1e-5)
    assert temporal_windows(frames, flow, length=3, stride=9) is None


def test_temporal_discriminator_scales_that_fit_the_clip():
    cfg = DiscriminatorConfig(ndf=4, n_layers=2, num_D=2, temporal_frames=3, temporal_scales=3)
    disc = TemporalDiscriminator(cfg)
    assert [disc.usable_scales(t) for t in (2, 3, 6, 7, 18, 19)] == [0, 1, 1, 2, 2, 3]
    frames, flow = torch.rand(2, 7, 3, 16, 16), torch.rand(2, 7, 2, 16, 16)
    out = disc(frames, flow)
    assert len(out) == 2  # strides 1 and 3; stride 9 needs 19 frames
    for temporal_scale, windows in zip(out, (3, 1)):
        assert len(temporal_scale) == cfg.num_D
        for features in temporal_scale:
            assert len(features) == cfg.n_layers + 2
            assert features[0].shape[0] == 2 * windows
            assert features[-1].shape[1] == 1
    # Input = K frames and K-1 flows (scaled): 3*3 + 2*2 channels.
    assert disc.nets[0].in_channels == 13
    assert FLOW_INPUT_SCALE > 1


def test_temporal_discriminator_reads_the_flow():
    torch.manual_seed(0)
    disc = TemporalDiscriminator(DiscriminatorConfig(ndf=4, n_layers=2, num_D=1, temporal_scales=1))
    frames = torch.rand(1, 3, 3, 16, 16)
    a = disc(frames, torch.zeros(1, 3, 2, 16, 16))[0][0][-1]
    b = disc(frames, torch.full((1, 3, 2, 16, 16), 5.0))[0][0][-1]
    assert not torch.allclose(a, b)


def test_spectral_norm_option():
    disc = ImageDiscriminator(DiscriminatorConfig(ndf=4, num_D=1, spectral_norm=True, norm="none"), LABELS)
    assert any("parametrizations" in n for n, _ in disc.named_parameters())
    assert disc(torch.rand(1, LABELS, 16, 16), torch.rand(1, 3, 16, 16))[0][-1].shape[1] == 1
