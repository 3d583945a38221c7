"""The configured, weighted objective: every term separately (for logging) plus ``total``.

A term is present in the returned dict only when its weight is > 0 and its inputs were given:
no flow before the second frame, no perceptual term without a VGG network. Values are weighted.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor, nn

from models import losses
from models.config import LossConfig
from models.warp import warp

DOutput = Sequence[Sequence[Tensor]]


@dataclass
class FlowInputs:
    """The flow-related tensors of the frames that have a flow (not the first frame of a clip),
    all aligned: [..., C, H, W] with the same leading dims."""
    flow: Tensor
    """Predicted flow (frame t -> t-1, pixels)."""
    real: Tensor
    """Real frames t."""
    real_prev: Tensor
    """Real frames t-1 (warped by ``flow`` for the warp and mask terms)."""
    target: Tensor | None = None
    """Flow target from the data (``flow[t]`` of the shard)."""
    confidence: Tensor | None = None
    """Confidence of the target [..., 1, H, W] in [0, 1]; weights the flow and warp terms."""
    mask: Tensor | None = None
    """Predicted occlusion mask m [..., 1, H, W]."""


def generator_losses(cfg: LossConfig, *, fake: Tensor, real: Tensor,
                     d_fake: DOutput, d_real: DOutput,
                     t_fake: Sequence[DOutput] = (), t_real: Sequence[DOutput] = (),
                     flow: FlowInputs | None = None, vgg: nn.Module | None = None) -> dict[str, Tensor]:
    """Generator-side terms.

    ``fake``/``real`` [..., 3, H, W]; ``d_fake``/``d_real`` the image discriminator on them;
    ``t_fake``/``t_real`` one temporal-discriminator output per temporal scale (summed over scales);
    ``flow`` the flow-related tensors of the frames that have a flow.
    """
    if vgg is None and cfg.uses_vgg:
        raise ValueError(f"loss.vgg_weights is set ({cfg.vgg_weights}) but no VGG network was passed")
    terms: dict[str, Tensor] = {}
    if cfg.gan > 0:
        terms["gan"] = cfg.gan * losses.generator_gan_loss(d_fake, cfg.gan_mode)
    if cfg.feature_matching > 0:
        terms["feature_matching"] = cfg.feature_matching * losses.feature_matching_loss(d_fake, d_real)
    if len(t_fake) != len(t_real):
        raise ValueError(f"t_fake has {len(t_fake)} temporal scales, t_real {len(t_real)}")
    if t_fake and cfg.temporal_gan > 0:
        terms["temporal_gan"] = cfg.temporal_gan * _sum(
            losses.generator_gan_loss(out, cfg.gan_mode) for out in t_fake)
    if t_fake and cfg.temporal_feature_matching > 0:
        terms["temporal_feature_matching"] = cfg.temporal_feature_matching * _sum(
            losses.feature_matching_loss(f, r) for f, r in zip(t_fake, t_real))
    if vgg is not None and (cfg.perceptual > 0 or cfg.style > 0):
        fake_feats = vgg(fake.reshape(-1, *fake.shape[-3:]))
        with torch.no_grad():
            real_feats = vgg(real.reshape(-1, *real.shape[-3:]))
        if cfg.perceptual > 0:
            terms["perceptual"] = cfg.perceptual * losses.perceptual_loss(
                fake_feats, real_feats, cfg.perceptual_layers)
        if cfg.style > 0:
            terms["style"] = cfg.style * losses.style_loss(fake_feats, real_feats)
    if flow is not None:
        if flow.target is not None and cfg.flow > 0:
            terms["flow"] = cfg.flow * losses.flow_loss(flow.flow, flow.target, flow.confidence)
        if cfg.warp > 0 or (cfg.mask > 0 and flow.mask is not None):
            warped_real = warp(flow.real_prev, flow.flow)
            if cfg.warp > 0:
                terms["warp"] = cfg.warp * losses.masked_l1(warped_real, flow.real, flow.confidence)
            if cfg.mask > 0 and flow.mask is not None:
                terms["mask"] = cfg.mask * losses.mask_loss(flow.mask, warped_real, flow.real)
    if not terms:
        raise ValueError("every generator loss term is off or lacks its inputs")
    terms["total"] = _sum(terms.values())
    return terms


def discriminator_losses(cfg: LossConfig, *, d_real: DOutput, d_fake: DOutput,
                         t_real: Sequence[DOutput] = (), t_fake: Sequence[DOutput] = ()
                         ) -> dict[str, Tensor]:
    """Discriminator-side terms on real and on detached fake frames. Unweighted: the GAN weights
    scale the generator's side only; ``temporal_gan: 0`` drops the temporal terms here too."""
    terms: dict[str, Tensor] = {}
    terms["d_real"], terms["d_fake"] = losses.discriminator_gan_loss(d_real, d_fake, cfg.gan_mode)
    if len(t_fake) != len(t_real):
        raise ValueError(f"t_fake has {len(t_fake)} temporal scales, t_real {len(t_real)}")
    if t_real and cfg.temporal_gan > 0:
        pairs = [losses.discriminator_gan_loss(r, f, cfg.gan_mode) for r, f in zip(t_real, t_fake)]
        terms["temporal_d_real"] = _sum(p[0] for p in pairs)
        terms["temporal_d_fake"] = _sum(p[1] for p in pairs)
    terms["total"] = _sum(terms.values())
    return terms


def _sum(values) -> Tensor:
    return torch.stack(list(values)).sum()
