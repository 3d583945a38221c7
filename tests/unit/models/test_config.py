"""The model config section, and the paper-scale config built without allocating it."""
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from dataio.config import DataConfig
from models.build import build, count_parameters, label_channels
from models.config import GeneratorConfig, LossConfig, ModelConfig
from trainer.config_tree import ConfigError, from_dict, load_config

ROOT = Path(__file__).resolve().parents[3]
PAPER = ROOT / "configs" / "paper.yaml"


@dataclasses.dataclass
class _Tree:  # the shape of the root config the paper file is merged into
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)


def _official_generator_params(label_in, prev_in, ngf=128, n_down=3, n_blocks=9, n_local=3, scales=3):
    """Parameter count of NVIDIA/vid2vid's CompositeGenerator + CompositeLocalGenerators with
    batch norm (models/networks.py), written out layer by layer, independently of our modules."""
    def conv(i, o, k):
        return i * o * k * k + o

    def res(c):
        return 2 * (conv(c, c, 3) + 2 * c)

    widths = [ngf * 2 ** i for i in range(n_down + 1)]

    def down(c_in):
        strided = sum(conv(widths[i], widths[i + 1], 3) + 2 * widths[i + 1] for i in range(n_down))
        return conv(c_in, ngf, 7) + 2 * ngf + strided + (n_blocks - n_blocks // 2) * res(widths[-1])
    up = sum(conv(widths[i + 1], widths[i], 3) + 2 * widths[i] for i in range(n_down))
    heads = conv(ngf, 3, 7) + conv(ngf, 2, 7) + conv(ngf, 1, 7)
    total = down(label_in) + down(prev_in) + 2 * (n_blocks // 2) * res(widths[-1]) + 2 * up + heads
    for s in range(1, scales):
        c = ngf // 2 ** s
        local_down = conv(label_in, c, 7) + 2 * c + conv(c, 2 * c, 3) + 4 * c
        local_down += conv(prev_in, c, 7) + 2 * c + conv(c, 2 * c, 3) + 4 * c
        local_up = n_local * res(2 * c) + conv(2 * c, c, 3) + 2 * c
        total += local_down + 2 * local_up + conv(c, 3, 7) + conv(c, 2, 7) + conv(c, 1, 7)
    return total


def _official_patch_gan_params(c_in, ndf=64, n_layers=3):
    widths = [ndf * 2 ** i for i in range(n_layers + 1)]
    total = c_in * ndf * 16 + ndf
    total += sum(widths[i] * widths[i + 1] * 16 + widths[i + 1] for i in range(n_layers))
    return total + widths[-1] * 16 + 1


def test_paper_config_builds_at_paper_scale_with_the_official_parameter_counts():
    raw = yaml.safe_load(PAPER.read_text())
    tree = from_dict(_Tree, raw, str(PAPER))
    cfg = tree.model
    channels = label_channels(tree.data.num_classes, has_edges=True)
    assert (channels, cfg.generator.num_scales, cfg.generator.ngf) == (36, 3, 128)
    with torch.device("meta"):  # parameters and activations without memory
        nets = build(cfg, channels)
        gen = nets.generator
        labels = torch.zeros(1, 3, channels, 1024, 2048)
        out = gen(labels, torch.zeros(1, 2, 3, 1024, 2048))
        d_out = nets.image_discriminator(labels[:, -1], out.image)
        t_out = nets.temporal_discriminator(torch.zeros(1, 7, 3, 1024, 2048), torch.zeros(1, 7, 2, 1024, 2048))
    assert out.image.shape == (1, 3, 1024, 2048) and out.flow.shape == (1, 2, 1024, 2048)
    assert len(d_out) == 4 and len(t_out) == 2 and len(t_out[0]) == 4

    first_frame = sum(count_parameters(s.first_frame) for s in gen.scales)
    counts = {"generator": count_parameters(gen) - first_frame, "first_frame_generator": first_frame,
              **{f"generator.scale{i}": count_parameters(s) for i, s in enumerate(gen.scales)},
              "image_discriminator": count_parameters(nets.image_discriminator),
              "temporal_discriminator": count_parameters(nets.temporal_discriminator)}
    for name, value in counts.items():
        print(f"paper-scale {name}: {value:,} parameters")
    # Stated ranges: G ~369M (global ~365M at 1024 channels x 18 residual blocks), D ~11M, D_T ~33M;
    # the first frame's generator about pix2pixHD's size (the reference's single-image generator).
    assert 360e6 < counts["generator"] < 375e6
    assert 170e6 < counts["first_frame_generator"] < 190e6
    assert 10e6 < counts["image_discriminator"] < 12e6
    assert 32e6 < counts["temporal_discriminator"] < 35e6
    # And exactly the official architecture's counts.
    assert counts["generator"] == _official_generator_params(label_in=3 * 36, prev_in=2 * 3) == 368_545_554
    assert counts["image_discriminator"] == 4 * _official_patch_gan_params(36 + 3)
    assert counts["temporal_discriminator"] == 3 * 4 * _official_patch_gan_params(3 * 3 + 2 * 2)


def test_defaults_are_valid_and_bad_values_name_their_key():
    cfg = load_config(ModelConfig)
    assert cfg.loss.gan_mode == "hinge" and cfg.loss.perceptual_layers == [1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0]
    with pytest.raises(ConfigError, match="generator"):
        load_config(ModelConfig, None, ["generator.ngf=3", "generator.num_scales=2"])
    with pytest.raises(ConfigError, match="loss.gan_mode"):
        load_config(ModelConfig, None, ["loss.gan_mode=wgan"])
    with pytest.raises(ValueError, match="perceptual_layers"):
        LossConfig(perceptual_layers=[1.0, 1.0])
    with pytest.raises(ValueError, match="per_frame"):
        GeneratorConfig(prev_frames=0)
    assert not LossConfig().uses_vgg and LossConfig(vgg_weights="x.pth").uses_vgg


def test_config_module_does_not_import_torch():
    code = "import sys; import models.config; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
