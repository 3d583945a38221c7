"""The terms of the vid2vid objective as plain functions of tensors (unweighted).

Discriminator outputs are ``list[list[Tensor]]`` (per spatial scale, features with logits last).
GAN terms are summed over the discriminator's spatial scales and feature matching is weighted as in
the reference code (NVIDIA/vid2vid ``GANLoss`` and ``GAN_and_FM_loss``), so the reference's loss
weights mean the same here.
"""
from __future__ import annotations

import functools
import operator
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from models.warp import warp

DOutput = Sequence[Sequence[Tensor]]
GAN_MODES = ("hinge", "lsgan", "nonsaturating")


def add_up(terms: Iterable[Tensor]) -> Tensor:
    """The sum of scalar terms as a chain of additions: n - 1 operators and nothing in the backward pass,
    where ``torch.stack(terms).sum()`` takes two and n more (the stack's backward selects each term)."""
    return functools.reduce(operator.add, terms)


def _mean(terms: Sequence[Tensor]) -> Tensor:
    return add_up(terms) / len(terms)


def _logits(outputs: DOutput | Tensor) -> list[Tensor]:
    if isinstance(outputs, Tensor):
        return [outputs]
    return [scale[-1] for scale in outputs]


def _check_mode(mode: str) -> None:
    if mode not in GAN_MODES:
        raise ValueError(f"unknown gan_mode {mode!r}: expected one of {', '.join(GAN_MODES)}")


def discriminator_gan_loss(real: DOutput | Tensor, fake: DOutput | Tensor, mode: str
                           ) -> tuple[Tensor, Tensor]:
    """The discriminator's (real term, fake term); pass ``fake`` computed on detached frames.

    hinge: relu(1 - D(x)), relu(1 + D(G)); lsgan: (D(x) - 1)^2, D(G)^2;
    nonsaturating: softplus(-D(x)), softplus(D(G)) (binary cross-entropy on logits).
    """
    _check_mode(mode)
    real_terms, fake_terms = [], []
    for r, f in zip(_logits(real), _logits(fake), strict=True):
        if mode == "hinge":
            real_terms.append(F.relu(1 - r).mean())
            fake_terms.append(F.relu(1 + f).mean())
        elif mode == "lsgan":
            real_terms.append((r - 1).pow(2).mean())
            fake_terms.append(f.pow(2).mean())
        else:
            real_terms.append(F.softplus(-r).mean())
            fake_terms.append(F.softplus(f).mean())
    return add_up(real_terms), add_up(fake_terms)


def generator_gan_loss(fake: DOutput | Tensor, mode: str) -> Tensor:
    """The generator's adversarial term, summed over scales: hinge -D(G), lsgan (D(G) - 1)^2,
    nonsaturating softplus(-D(G))."""
    _check_mode(mode)
    terms = []
    for f in _logits(fake):
        if mode == "hinge":
            terms.append(-f.mean())
        elif mode == "lsgan":
            terms.append((f - 1).pow(2).mean())
        else:
            terms.append(F.softplus(-f).mean())
    return add_up(terms)


def feature_matching_loss(fake: DOutput, real: DOutput) -> Tensor:
    """L1 between intermediate features (logits excluded) on fake and real input; real features are
    detached. ``4 x`` the mean over scales and layers: the reference's ``sum over scales and layers of
    4 / (n_layers + 1) / num_D`` (an n_layers PatchGAN has n_layers + 1 intermediate outputs)."""
    per_scale = []
    for f_scale, r_scale in zip(fake, real, strict=True):
        layers = [F.l1_loss(f, r.detach()) for f, r in zip(f_scale[:-1], r_scale[:-1], strict=True)]
        per_scale.append(_mean(layers))
    return 4 * _mean(per_scale)


def masked_l1(prediction: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
    """mean(weight * |prediction - target|); ``weight`` broadcasts over channels (e.g. [N, 1, H, W])."""
    diff = (prediction - target).abs()
    if weight is None:
        return diff.mean()
    return (diff * weight.expand_as(diff)).mean()


def flow_loss(flow: Tensor, target: Tensor, confidence: Tensor | None = None) -> Tensor:
    """L1 to the flow target (pixels), where the target is trusted (``confidence`` in [0, 1])."""
    return masked_l1(flow, target, confidence)


def warp_loss(real_prev: Tensor, real: Tensor, flow: Tensor, confidence: Tensor | None = None) -> Tensor:
    """L1 between the previous real frame warped by the predicted flow and the real frame."""
    return masked_l1(warp(real_prev, flow), real, confidence)


def mask_loss(mask: Tensor, keep: Tensor, criterion: str) -> Tensor:
    """Push the occlusion mask m to 0 (warp) where ``keep`` is 1 and to 1 (hallucinate) where it is 0;
    ``keep`` [..., 1, H, W] in [0, 1] is detached by the caller's choice of rule. ``l1``:
    mean(keep * m) + mean((1 - keep) * (1 - m)) (imaginaire's form); ``bce``: the binary cross-entropy
    of m against 1 - keep (in float32: it takes logarithms)."""
    keep = keep.detach()
    if criterion == "bce":
        return F.binary_cross_entropy(mask.float(), (1 - keep).float().expand_as(mask))
    return masked_l1(mask, torch.zeros_like(mask), keep) + masked_l1(mask, torch.ones_like(mask), 1 - keep)


def label_agreement(labels: Tensor, labels_prev: Tensor, flow: Tensor) -> Tensor:
    """Where the previous label map carried along ``flow`` is the current one [..., 1, H, W] in [0, 1]:
    ``clamp(1 - sum_c |labels - warp(labels_prev, flow)| / 2, 0, 1)`` (1 - the total-variation
    distance for one-hot maps), detached. Content a moving object uncovers changes class there."""
    with torch.no_grad():
        carried = warp(labels_prev, flow)
        return (1 - (labels - carried).abs().sum(dim=-3, keepdim=True) / 2).clamp(0, 1)


def warp_agreement(warped: Tensor, real: Tensor) -> Tensor:
    """imaginaire's "the warp is right here": ``clamp(1 - sum_c |warped - real|, 0, 1)`` [..., 1, H, W]
    (frames in [-1, 1]), detached."""
    with torch.no_grad():
        return (1 - (warped - real).abs().sum(dim=-3, keepdim=True)).clamp(0, 1)


def output_warp_loss(output: Tensor, output_prev: Tensor, reference_flow: Tensor,
                     confidence: Tensor | None = None) -> Tensor:
    """L1 between output frame t and the previous output frame carried to t along the *reference*
    flow (detached), where the flow is trusted: penalises the output's own flicker (the reference
    code's ``G_Warp`` term). Zero for a clip that is an exact warp of itself."""
    with torch.no_grad():
        carried = warp(output_prev, reference_flow)
    return masked_l1(output, carried, confidence)


def perceptual_loss(fake_features: Sequence[Tensor], real_features: Sequence[Tensor],
                    layer_weights: Sequence[float]) -> Tensor:
    """sum_i w_i * L1(phi_i(fake), phi_i(real)) over VGG layers; real features detached."""
    terms = [w * F.l1_loss(f, r.detach())
             for w, f, r in zip(layer_weights, fake_features, real_features, strict=True)]
    return add_up(terms)


def gram_matrix(features: Tensor) -> Tensor:
    """[N, C, H, W] -> [N, C, C] normalised by C*H*W."""
    n, c, h, w = features.shape
    flat = features.reshape(n, c, h * w)
    return flat @ flat.transpose(1, 2) / (c * h * w)


def style_loss(fake_features: Sequence[Tensor], real_features: Sequence[Tensor]) -> Tensor:
    """sum over layers of the mean squared difference of Gram matrices; real features detached."""
    terms = [F.mse_loss(gram_matrix(f), gram_matrix(r.detach()))
             for f, r in zip(fake_features, real_features, strict=True)]
    return add_up(terms)
