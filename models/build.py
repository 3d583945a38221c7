"""Builders: the ``model`` config plus the data's label channels -> networks."""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from models.config import ModelConfig
from models.discriminators import ImageDiscriminator, TemporalDiscriminator
from models.generator import Generator
from models.vgg import VGG19Features, load_vgg19


def label_channels(num_classes: int, has_edges: bool) -> int:
    """Channels of the label input: one-hot classes, plus the instance-edge map when present."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    return num_classes + int(has_edges)


@dataclass
class Networks:
    generator: Generator
    image_discriminator: ImageDiscriminator
    temporal_discriminator: TemporalDiscriminator | None
    """None when ``discriminator.temporal_scales`` is 0."""
    vgg: VGG19Features | None
    """None unless ``loss.vgg_weights`` names a file (and a VGG term has a weight > 0)."""


def build_generator(cfg: ModelConfig, label_channels: int) -> Generator:
    return Generator(cfg.generator, label_channels)


def build_discriminators(cfg: ModelConfig, label_channels: int
                         ) -> tuple[ImageDiscriminator, TemporalDiscriminator | None]:
    image = ImageDiscriminator(cfg.discriminator, label_channels)
    temporal = TemporalDiscriminator(cfg.discriminator) if cfg.discriminator.temporal_scales else None
    return image, temporal


def build_vgg(cfg: ModelConfig) -> VGG19Features | None:
    """The perceptual-loss network from ``loss.vgg_weights``; None when no VGG term is configured."""
    return load_vgg19(cfg.loss.vgg_weights) if cfg.loss.uses_vgg else None


def build(cfg: ModelConfig, label_channels: int) -> Networks:
    image, temporal = build_discriminators(cfg, label_channels)
    return Networks(build_generator(cfg, label_channels), image, temporal, build_vgg(cfg))


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
