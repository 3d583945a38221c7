"""The configured, weighted objective: every term separately (for logging) plus ``total``.

A term is present in the returned dict only when its weight is > 0 and its inputs were given:
no flow before the second frame, no perceptual term without a VGG network. Values are weighted.

The terms follow the reference code (NVIDIA/vid2vid ``Vid2VidModelD.forward``, imaginaire's
``FlowLoss``): image GAN and feature matching on each output frame, and again on the raw hallucinated
frame h; temporal GAN and feature matching on windows of frames; flow to its target; the real previous
frame warped by the predicted flow to the real frame; the occlusion mask to where the warped previous
*output* is wrong; the output to its own previous frame carried along the target flow.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Mapping, Sequence

import torch
from torch import Tensor, nn

from models import losses
from models.config import LossConfig

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
    """Real frames t-1 (warped by ``flow`` for the warp term)."""
    target: Tensor | None = None
    """Flow target from the data (``flow[t]`` of the shard)."""
    confidence: Tensor | None = None
    """Confidence of the target [..., 1, H, W] in [0, 1]; weights the flow and warp terms."""
    mask: Tensor | None = None
    """Predicted occlusion mask m [..., 1, H, W]."""
    warped: Tensor | None = None
    """The previous output warped by ``flow``: what the composite shows where m = 0 (mask target)."""
    output: Tensor | None = None
    """Output frames t (in the generator's graph), for the output-warp term."""
    output_prev: Tensor | None = None
    """Output frames t-1 (detached), carried to t along ``target`` by the output-warp term."""
    labels: Tensor | None = None
    """Label maps of frames t and t-1 [..., C, H, W]: where ``target`` does not carry the one onto the
    other, the content is new (the ``occlusion`` mask target)."""
    labels_prev: Tensor | None = None


@dataclass
class ExtraFrames:
    """Frames besides the output that the image terms judge as well, for the frames that have a flow:
    ``hallucinated`` (the raw h) or ``label_only`` (what the labels alone give: the first frame's
    path). Their terms are weighted by the config field of that name and logged as ``<name>_gan`` ...
    [..., 3, H, W], aligned with ``real`` and the image discriminator's outputs on both."""
    name: Literal["hallucinated", "label_only"]
    images: Tensor
    real: Tensor
    d_fake: DOutput
    d_real: DOutput
    frames: Sequence[int] | None = None
    """Which frames of the outputs these are (indices on the time axis, dim -4, of ``real`` in
    ``generator_losses``), so that the VGG features of the real frames serve them too; None: the real
    frames' features are computed anew."""


def generator_losses(cfg: LossConfig, *, fake: Tensor, real: Tensor,
                     d_fake: DOutput, d_real: DOutput,
                     t_fake: Sequence[DOutput] = (), t_real: Sequence[DOutput] = (),
                     flow: FlowInputs | None = None, extra: Sequence[ExtraFrames] = (),
                     vgg: nn.Module | None = None, merge: bool = False) -> dict[str, Tensor]:
    """Generator-side terms.

    ``fake``/``real`` [..., 3, H, W]; ``d_fake``/``d_real`` the image discriminator on them;
    ``t_fake``/``t_real`` one temporal-discriminator output per temporal scale (summed over scales);
    ``flow`` the flow-related tensors of the frames that have a flow; ``extra`` more frames for the
    image terms (``hallucinated_*``, ``label_only_*``, at that fraction of their weights). ``merge``: one
    VGG pass over the outputs and the extra frames together, and the real frames' features shared with
    the extra frames that name their ``frames`` (the same values as a pass per set: VGG normalizes
    nothing across a batch).
    """
    if vgg is None and cfg.uses_vgg:
        raise ValueError(f"loss.vgg_weights is set ({cfg.vgg_weights}) but no VGG network was passed")
    extra = [frames for frames in extra if getattr(cfg, frames.name) > 0]
    features = _vgg_features(cfg, vgg, fake, real, extra, merge)
    terms = _image_terms(cfg, 1.0, d_fake, d_real, features[0])
    for frames, feats in zip(extra, features[1:]):
        more = _image_terms(cfg, getattr(cfg, frames.name), frames.d_fake, frames.d_real, feats)
        terms.update({f"{frames.name}_{term}": value for term, value in more.items()})
    if len(t_fake) != len(t_real):
        raise ValueError(f"t_fake has {len(t_fake)} temporal scales, t_real {len(t_real)}")
    if t_fake and cfg.temporal_gan > 0:
        terms["temporal_gan"] = cfg.temporal_gan * _sum(
            losses.generator_gan_loss(out, cfg.gan_mode) for out in t_fake)
    if t_fake and cfg.temporal_feature_matching > 0:
        terms["temporal_feature_matching"] = cfg.temporal_feature_matching * _sum(
            losses.feature_matching_loss(f, r) for f, r in zip(t_fake, t_real))
    if flow is not None:
        terms.update(_flow_terms(cfg, flow))
    if not terms:
        raise ValueError("every generator loss term is off or lacks its inputs")
    terms["total"] = _sum(terms.values())
    return terms


Features = tuple[list[Tensor], list[Tensor]]
"""VGG features of fake frames (with their graph) and of the real frames they are compared with."""


def _vgg_features(cfg: LossConfig, vgg: nn.Module | None, fake: Tensor, real: Tensor,
                  extra: Sequence[ExtraFrames], merge: bool) -> list[Features | None]:
    """The VGG features of the outputs, then of each set of ``extra`` frames (None without VGG terms)."""
    if vgg is None or not (cfg.perceptual > 0 or cfg.style > 0):
        return [None] * (1 + len(extra))
    sets = [(fake, real)] + [(frames.images, frames.real) for frames in extra]
    if not merge:
        out = []
        for images, reals in sets:
            with torch.no_grad():
                real_feats = vgg(flat_frames(reals))
            out.append((vgg(flat_frames(images)), real_feats))
        return out
    sizes = [images.shape[:-3].numel() for images, _ in sets]
    fake_feats = [x.split(sizes) for x in vgg(torch.cat([flat_frames(images) for images, _ in sets]))]
    with torch.no_grad():
        real_feats = vgg(flat_frames(real))
        extra_real = [[x.unflatten(0, real.shape[:-3])[:, list(frames.frames)].flatten(0, 1) for x in real_feats]
                      if frames.frames is not None else vgg(flat_frames(frames.real)) for frames in extra]
    return [([x[k] for x in fake_feats], reals) for k, reals in enumerate([real_feats] + extra_real)]


def flat_frames(frames: Tensor) -> Tensor:
    """[..., C, H, W] -> [N, C, H, W], the leading axes (batch, time) folded b-major, as the networks take them."""
    return frames.reshape(-1, *frames.shape[-3:])


def _image_terms(cfg: LossConfig, scale: float, d_fake: DOutput, d_real: DOutput,
                 features: Features | None) -> dict[str, Tensor]:
    """GAN, feature matching and VGG terms of one set of fake frames, each at ``scale`` x its weight."""
    terms: dict[str, Tensor] = {}
    if cfg.gan > 0:
        terms["gan"] = scale * cfg.gan * losses.generator_gan_loss(d_fake, cfg.gan_mode)
    if cfg.feature_matching > 0:
        terms["feature_matching"] = scale * cfg.feature_matching * losses.feature_matching_loss(d_fake, d_real)
    if features is not None:
        fake_feats, real_feats = features
        if cfg.perceptual > 0:
            terms["perceptual"] = scale * cfg.perceptual * losses.perceptual_loss(
                fake_feats, real_feats, cfg.perceptual_layers)
        if cfg.style > 0:
            terms["style"] = scale * cfg.style * losses.style_loss(fake_feats, real_feats)
    return terms


def _flow_terms(cfg: LossConfig, flow: FlowInputs) -> dict[str, Tensor]:
    terms: dict[str, Tensor] = {}
    if flow.target is not None and cfg.flow > 0:
        terms["flow"] = cfg.flow * losses.flow_loss(flow.flow, flow.target, flow.confidence)
    if cfg.warp > 0:
        terms["warp"] = cfg.warp * losses.warp_loss(flow.real_prev, flow.real, flow.flow, flow.confidence)
    if cfg.mask > 0 and flow.mask is not None:
        keep = _warp_is_right(cfg, flow)
        if keep is not None:
            terms["mask"] = cfg.mask * losses.mask_loss(flow.mask, keep, cfg.mask_criterion)
    if cfg.output_warp > 0 and flow.target is not None and flow.output is not None and flow.output_prev is not None:
        terms["output_warp"] = cfg.output_warp * losses.output_warp_loss(
            flow.output, flow.output_prev, flow.target, flow.confidence)
    return terms


def _warp_is_right(cfg: LossConfig, flow: FlowInputs) -> Tensor | None:
    """Where the mask should warp (1) rather than hallucinate (0), by ``cfg.mask_target``; None when
    the inputs that rule needs are missing."""
    if cfg.mask_target == "output":
        return None if flow.warped is None else losses.warp_agreement(flow.warped, flow.real)
    if flow.target is None or flow.labels is None or flow.labels_prev is None:
        return None
    keep = losses.label_agreement(flow.labels, flow.labels_prev, flow.target)
    return keep if flow.confidence is None else keep * flow.confidence


def discriminator_losses(cfg: LossConfig, *, d_real: DOutput, d_fake: DOutput,
                         t_real: Sequence[DOutput] = (), t_fake: Sequence[DOutput] = (),
                         d_extra: Mapping[str, DOutput] | None = None) -> dict[str, Tensor]:
    """Discriminator-side terms on real and on detached fake frames. Unweighted: the GAN weights
    scale the generator's side only; ``temporal_gan: 0`` drops the temporal terms here too.

    ``d_extra``: the image discriminator on more fake frames by ``ExtraFrames`` name (used when that
    weight is > 0). The fake side is then the average over the output and these (``d_fake`` and
    ``d_fake_<name>`` each logged at that share: with h, the reference's
    ``(D_fake + D_fake_raw + 2 D_real) / 2`` up to a constant), so real and fake keep equal weight.
    """
    terms: dict[str, Tensor] = {}
    terms["d_real"], terms["d_fake"] = losses.discriminator_gan_loss(d_real, d_fake, cfg.gan_mode)
    extra = {name: out for name, out in (d_extra or {}).items() if getattr(cfg, name) > 0}
    for name, out in extra.items():
        terms[f"d_fake_{name}"] = losses.discriminator_gan_loss(d_real, out, cfg.gan_mode)[1] / (1 + len(extra))
    terms["d_fake"] = terms["d_fake"] / (1 + len(extra))
    if len(t_fake) != len(t_real):
        raise ValueError(f"t_fake has {len(t_fake)} temporal scales, t_real {len(t_real)}")
    if t_real and cfg.temporal_gan > 0:
        pairs = [losses.discriminator_gan_loss(r, f, cfg.gan_mode) for r, f in zip(t_real, t_fake)]
        terms["temporal_d_real"] = _sum(p[0] for p in pairs)
        terms["temporal_d_fake"] = _sum(p[1] for p in pairs)
    terms["total"] = _sum(terms.values())
    return terms


def _sum(values) -> Tensor:
    return losses.add_up(values)
