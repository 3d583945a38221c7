"""Each loss against a hand computation on small tensors; the VGG network; the aggregator."""
import dataclasses
import math

import pytest
import torch

from models import losses
from models.config import LossConfig
from models.objective import ExtraFrames, FlowInputs, discriminator_losses, generator_losses
from models.vgg import VGG19Features, load_vgg19

REAL = torch.tensor([[0.5, 2.0], [-1.0, 0.0]]).view(1, 1, 2, 2)
FAKE = torch.tensor([[-2.0, 0.5], [1.0, -0.5]]).view(1, 1, 2, 2)


@pytest.fixture(scope="module")
def vgg():
    torch.manual_seed(0)
    return VGG19Features()  # random weights, built explicitly: only tests do this


def as_output(logits):
    """One-scale discriminator output: a feature then the logits."""
    return [[torch.zeros(1, 2, 2, 2), logits]]


def softplus(x):
    return math.log1p(math.exp(x))


@pytest.mark.parametrize("mode,d_real,d_fake,g", [
    # hinge: mean relu(1 - r) = (0.5 + 0 + 2 + 1) / 4; mean relu(1 + f) = (0 + 1.5 + 2 + 0.5) / 4; -mean f
    ("hinge", 0.875, 1.0, 0.25),
    # lsgan: mean (r - 1)^2 = (0.25 + 1 + 4 + 1) / 4; mean f^2 = (4 + .25 + 1 + .25) / 4; mean (f - 1)^2
    ("lsgan", 1.5625, 1.375, 2.875),
    ("nonsaturating",
     sum(softplus(-r) for r in (0.5, 2.0, -1.0, 0.0)) / 4,
     sum(softplus(f) for f in (-2.0, 0.5, 1.0, -0.5)) / 4,
     sum(softplus(-f) for f in (-2.0, 0.5, 1.0, -0.5)) / 4),
])
def test_gan_losses_by_hand(mode, d_real, d_fake, g):
    real_term, fake_term = losses.discriminator_gan_loss(as_output(REAL), as_output(FAKE), mode)
    assert real_term.item() == pytest.approx(d_real, abs=1e-6)
    assert fake_term.item() == pytest.approx(d_fake, abs=1e-6)
    assert losses.generator_gan_loss(as_output(FAKE), mode).item() == pytest.approx(g, abs=1e-6)


def test_gan_loss_sums_spatial_scales_as_the_reference_does():
    two_scales = [[REAL], [torch.full((1, 1, 1, 1), 3.0)]]
    # hinge generator: scale 0 -mean = -0.375, scale 1 -3 -> sum -3.375 (NVIDIA/vid2vid GANLoss sums)
    assert losses.generator_gan_loss(two_scales, "hinge").item() == pytest.approx(-3.375)
    real_term, fake_term = losses.discriminator_gan_loss(two_scales, two_scales, "hinge")
    # relu(1 - r): scale 0 0.875, scale 1 0; relu(1 + f): scale 0 mean(1.5, 3, 0, 1) = 1.375, scale 1 4
    assert (real_term.item(), fake_term.item()) == pytest.approx((0.875, 5.375))
    with pytest.raises(ValueError, match="unknown gan_mode 'wgan'"):
        losses.generator_gan_loss(two_scales, "wgan")


def test_feature_matching_by_hand():
    fake = [[torch.full((1, 1, 2, 2), 3.0), torch.zeros(1, 2, 1, 1), torch.full((1, 1, 1, 1), 9.0)],
            [torch.full((1, 1, 2, 2), 0.5), torch.zeros(1, 1, 1, 1), torch.zeros(1, 1, 1, 1)]]
    real = [[torch.ones(1, 1, 2, 2), torch.tensor([1.0, -3.0]).view(1, 2, 1, 1), torch.zeros(1, 1, 1, 1)],
            [torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 1, 1), torch.full((1, 1, 1, 1), 7.0)]]
    for r in real[0] + real[1]:
        r.requires_grad_(True)
    # Layer L1s: scale 0 |3-1| = 2 and mean(|0-1|, |0+3|) = 2; scale 1 0.5 and 0; logits ignored.
    # The reference: sum over scales and layers of 4 / (n_layers + 1) / num_D with n_layers + 1 = 2
    # intermediate layers and num_D = 2: (2 + 2 + 0.5 + 0) * 4 / 2 / 2 = 4.5.
    loss = losses.feature_matching_loss(fake, real)
    assert loss.item() == pytest.approx(4.5)
    assert not loss.requires_grad  # real features are detached; fake ones here need no grad


def test_masked_l1_and_flow_loss_by_hand():
    pred = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 2, 1, 2)
    conf = torch.tensor([1.0, 0.0]).view(1, 1, 1, 2)
    # |pred - 0| * conf over [1, 2, 1, 2] = [1, 0, 3, 0] -> mean 1
    assert losses.flow_loss(pred, torch.zeros_like(pred), conf).item() == pytest.approx(1.0)
    assert losses.masked_l1(pred, torch.zeros_like(pred)).item() == pytest.approx(2.5)


def test_warp_loss_is_zero_for_the_true_shift_and_counts_errors_otherwise():
    torch.manual_seed(0)
    prev = torch.rand(1, 3, 6, 8)
    real = torch.roll(prev, shifts=-2, dims=-1)  # real(x) = prev(x + 2): flow dx = +2
    conf = torch.ones(1, 1, 6, 8)
    conf[..., -2:] = 0  # the wrapped-around columns are not a shift
    flow = torch.zeros(1, 2, 6, 8)
    flow[:, 0] = 2.0
    assert losses.warp_loss(prev, real, flow, conf).item() == pytest.approx(0.0, abs=1e-6)
    expected = ((prev - real).abs() * conf).mean().item()
    assert losses.warp_loss(prev, real, torch.zeros_like(flow), conf).item() == pytest.approx(expected, rel=1e-6)


def test_output_warp_is_zero_for_a_clip_that_is_an_exact_warp_of_itself():
    torch.manual_seed(0)
    prev = torch.rand(1, 3, 6, 8)
    output = torch.roll(prev, shifts=-2, dims=-1).requires_grad_(True)  # output(x) = prev(x + 2)
    flow = torch.zeros(1, 2, 6, 8)
    flow[:, 0] = 2.0
    conf = torch.ones(1, 1, 6, 8)
    conf[..., -2:] = 0  # the wrapped-around columns are not a shift
    assert losses.output_warp_loss(output, prev, flow, conf).item() == pytest.approx(0.0, abs=1e-6)
    # Flicker is penalised: the same output against a still previous frame is not a warp of it.
    flicker = losses.output_warp_loss(output, prev, torch.zeros_like(flow), conf)
    assert flicker.item() == pytest.approx(((output - prev).abs() * conf).mean().item(), rel=1e-6)
    # Only the current output learns: the previous one is a fixed target (detached).
    prev_leaf = prev.clone().requires_grad_(True)
    losses.output_warp_loss(output, prev_leaf, torch.zeros_like(flow), conf).backward()
    assert prev_leaf.grad is None and output.grad.abs().sum() > 0


def test_occlusion_mask_target_is_hallucinate_where_the_labels_or_the_flow_say_the_content_is_new():
    """A 2x4 strip (both rows alike), still (target flow 0): column 0 keeps its class and is trusted
    (warp), column 1 keeps its class but its flow is not trusted (hallucinate), column 2 was class 1
    and is class 0 now: a surface uncovered (hallucinate), column 3 half trusted (no push either way)."""
    mask = torch.full((1, 1, 1, 2, 4), 0.5, requires_grad=True)
    before = torch.tensor([0, 0, 1, 0])
    now = torch.tensor([0, 0, 0, 0])

    def one_hot(ids):
        return torch.nn.functional.one_hot(ids, 2).T.float().view(1, 1, 2, 1, 4).expand(1, 1, 2, 2, 4)
    conf = torch.tensor([1.0, 0.0, 1.0, 0.5]).view(1, 1, 1, 1, 4).expand(1, 1, 1, 2, 4)
    real = torch.zeros(1, 1, 3, 2, 4)
    cfg = LossConfig(gan=0, feature_matching=0, flow=0, warp=0, output_warp=0, mask=1.0, mask_target="occlusion")
    terms = generator_losses(cfg, fake=real, real=real, d_fake=_tiny_outputs(0.0), d_real=_tiny_outputs(0.0),
                             flow=FlowInputs(torch.zeros(1, 1, 2, 2, 4), real=real, real_prev=real,
                                             target=torch.zeros(1, 1, 2, 2, 4), confidence=conf, mask=mask,
                                             warped=real + 1, labels=one_hot(now), labels_prev=one_hot(before)))
    terms["total"].backward()
    grad = mask.grad[0, 0, 0, 0].tolist()
    assert grad[0] > 0 and grad[1] < 0 and grad[2] < 0 and grad[3] == pytest.approx(0.0)
    # The rule reads neither the output nor the real frames: the warped output above is wrong everywhere.
    agreement = losses.label_agreement(one_hot(now), one_hot(before), torch.zeros(1, 1, 2, 2, 4))
    assert agreement[0, 0, 0, 0].tolist() == [1.0, 1.0, 0.0, 1.0]


def test_output_mask_target_is_hallucinate_exactly_where_the_warped_previous_output_is_wrong():
    """mask_target=output (imaginaire's rule): the target comes from the composited frame (the previous
    output warped), not from the real previous frame, whatever that one says."""
    real = torch.zeros(1, 1, 3, 1, 4)
    warped = real.clone()
    warped[..., 2:] = 0.9  # a trail: the warped previous output is wrong on the right half
    real_prev = real.clone()  # warping the real previous frame would be right everywhere
    mask = torch.full((1, 1, 1, 1, 4), 0.5, requires_grad=True)
    cfg = LossConfig(gan=0, feature_matching=0, flow=0, warp=0, output_warp=0, mask=1.0, mask_target="output")
    terms = generator_losses(cfg, fake=real, real=real, d_fake=_tiny_outputs(0.0), d_real=_tiny_outputs(0.0),
                             flow=FlowInputs(torch.zeros(1, 1, 2, 1, 4), real=real, real_prev=real_prev,
                                             mask=mask, warped=warped))
    assert set(terms) == {"mask", "total"}
    terms["total"].backward()
    # Gradient descent lowers m where the warp is right (positive gradient) and raises it where wrong.
    assert (mask.grad[..., :2] > 0).all() and (mask.grad[..., 2:] < 0).all()


def test_mask_loss_by_hand():
    real = torch.zeros(1, 3, 1, 2)
    warped = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.0, 0.75]]).view(1, 3, 1, 2)
    mask = torch.tensor([0.2, 0.6]).view(1, 1, 1, 2).requires_grad_(True)
    # conf = clamp(1 - sum_c |warped - real|) = [1, 0.25]
    # mean(conf * m) + mean((1 - conf) * (1 - m)) = (0.2 + 0.15) / 2 + (0 + 0.75 * 0.4) / 2 = 0.325
    loss = losses.mask_loss(mask, losses.warp_agreement(warped, real), "l1")
    assert loss.item() == pytest.approx(0.325)
    loss.backward()
    assert mask.grad[0, 0, 0].tolist() == pytest.approx([0.5, (0.25 - 0.75) / 2])


@pytest.mark.parametrize("criterion, learned", [("l1", 0.0), ("bce", 0.3)])
def test_mask_criterion_learns_the_median_or_the_probability(criterion, learned):
    """One mask value for 10 pixels, 3 of them new (keep = 0): L1's minimum is the median (warp
    everywhere), cross-entropy's the share of new pixels."""
    keep = torch.tensor([0.0] * 3 + [1.0] * 7).view(1, 1, 1, 10)
    logit = torch.zeros((), requires_grad=True)
    optimizer = torch.optim.Adam([logit], lr=0.05)
    for _ in range(1500):
        optimizer.zero_grad()
        losses.mask_loss(torch.sigmoid(logit).expand(1, 1, 1, 10), keep, criterion).backward()
        optimizer.step()
    assert torch.sigmoid(logit).item() == pytest.approx(learned, abs=0.02)


def test_mask_bce_by_hand():
    mask = torch.tensor([0.2, 0.6]).view(1, 1, 1, 2)
    keep = torch.tensor([1.0, 0.25]).view(1, 1, 1, 2)
    expected = -(math.log(0.8) + 0.75 * math.log(0.6) + 0.25 * math.log(0.4)) / 2
    assert losses.mask_loss(mask, keep, "bce").item() == pytest.approx(expected)


def test_perceptual_and_style_by_hand():
    fake = [torch.full((1, 1, 2, 2), float(d)) for d in (1, 2, 3, 4, 5)]
    real = [torch.zeros(1, 1, 2, 2) for _ in range(5)]
    weights = [1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0]
    assert losses.perceptual_loss(fake, real, weights).item() == pytest.approx(
        1 / 32 + 2 / 16 + 3 / 8 + 4 / 4 + 5.0)
    features = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 2, 1, 2)
    # F F^T = [[5, 11], [11, 25]] / (C * H * W = 4)
    assert torch.allclose(losses.gram_matrix(features), torch.tensor([[[1.25, 2.75], [2.75, 6.25]]]))
    # mse against a zero Gram: (1.25^2 + 2 * 2.75^2 + 6.25^2) / 4
    assert losses.style_loss([features], [torch.zeros_like(features)]).item() == pytest.approx(13.9375)


def test_random_vgg_has_the_paper_layers_and_zero_loss_on_identical_images(vgg):
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    feats = vgg(images)
    assert [f.shape[1:] for f in feats] == [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4), (512, 2, 2)]
    assert not any(p.requires_grad for p in vgg.parameters())
    assert losses.perceptual_loss(feats, vgg(images), LossConfig().perceptual_layers).item() == 0.0
    vgg.train()
    assert not vgg.training


def test_vgg_loads_a_torchvision_layout_state_dict(tmp_path, vgg):
    source = vgg
    state = {f"features.{k}": v for k, v in source.features.state_dict().items()}
    state["features.30.weight"] = torch.zeros(1)  # later layers and the classifier are ignored
    state["classifier.0.weight"] = torch.zeros(2, 2)
    path = tmp_path / "vgg19.pth"
    torch.save(state, path)
    loaded = load_vgg19(path)
    images = torch.rand(1, 3, 16, 16)
    assert all(torch.equal(a, b) for a, b in zip(loaded(images), source(images)))
    del state["features.28.weight"]
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"vgg19\.pth: missing 'features\.28\.weight'"):
        load_vgg19(path)
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_vgg19(tmp_path / "nope.pth")


def _tiny_outputs(value):
    return [[torch.full((1, 2, 2, 2), value), torch.full((1, 1, 2, 2), value)]]


def test_generator_aggregator_weights_each_term_and_sums_them(vgg):
    torch.manual_seed(0)
    cfg = LossConfig(gan=2.0, feature_matching=3.0, temporal_gan=0.5, temporal_feature_matching=1.0,
                     perceptual=4.0, style=0.0, hallucinated=0.25, label_only=0.5, flow=5.0, warp=6.0,
                     output_warp=8.0, mask=7.0)
    fake, real, prev = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16)
    raw, warped, fake_prev = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16)
    flow, target = torch.rand(1, 2, 16, 16), torch.rand(1, 2, 16, 16)
    conf, mask = torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 16)
    d_fake, d_real, d_raw, d_alone = _tiny_outputs(0.3), _tiny_outputs(1.0), _tiny_outputs(-0.5), _tiny_outputs(0.0)
    alone = torch.rand(1, 3, 16, 16)
    labels, labels_prev = torch.rand(1, 4, 16, 16), torch.rand(1, 4, 16, 16)
    t_fake, t_real = [_tiny_outputs(0.1), _tiny_outputs(-0.2)], [_tiny_outputs(0.0), _tiny_outputs(0.0)]
    terms = generator_losses(cfg, fake=fake, real=real, d_fake=d_fake, d_real=d_real,
                             t_fake=t_fake, t_real=t_real, vgg=vgg,
                             extra=[ExtraFrames("hallucinated", raw, real, d_fake=d_raw, d_real=d_real),
                                    ExtraFrames("label_only", alone, real, d_fake=d_alone, d_real=d_real)],
                             flow=FlowInputs(flow, real=real, real_prev=prev, target=target, confidence=conf,
                                             mask=mask, warped=warped, output=fake, output_prev=fake_prev,
                                             labels=labels, labels_prev=labels_prev))
    assert set(terms) == {"gan", "feature_matching", "temporal_gan", "temporal_feature_matching", "perceptual",
                          "hallucinated_gan", "hallucinated_feature_matching", "hallucinated_perceptual",
                          "label_only_gan", "label_only_feature_matching", "label_only_perceptual",
                          "flow", "warp", "output_warp", "mask", "total"}
    # _tiny_outputs: one intermediate layer, so feature matching is 4x its L1.
    assert terms["gan"].item() == pytest.approx(2.0 * -0.3)
    assert terms["feature_matching"].item() == pytest.approx(3.0 * 4 * 0.7)
    assert terms["hallucinated_gan"].item() == pytest.approx(0.25 * 2.0 * 0.5)
    assert terms["hallucinated_feature_matching"].item() == pytest.approx(0.25 * 3.0 * 4 * 1.5)
    assert terms["label_only_gan"].item() == pytest.approx(0.0)
    assert terms["label_only_feature_matching"].item() == pytest.approx(0.5 * 3.0 * 4 * 1.0)
    assert terms["temporal_gan"].item() == pytest.approx(0.5 * (-0.1 + 0.2))
    assert terms["temporal_feature_matching"].item() == pytest.approx(1.0 * 4 * (0.1 + 0.2))
    assert terms["flow"].item() == pytest.approx(5.0 * losses.flow_loss(flow, target, conf).item())
    assert terms["warp"].item() == pytest.approx(6.0 * losses.warp_loss(prev, real, flow, conf).item())
    keep = losses.label_agreement(labels, labels_prev, target) * conf
    assert terms["mask"].item() == pytest.approx(7.0 * losses.mask_loss(mask, keep, "bce").item())
    by_output = generator_losses(dataclasses.replace(cfg, mask_target="output"), fake=fake, real=real, d_fake=d_fake,
                                 d_real=d_real, flow=FlowInputs(flow, real=real, real_prev=prev, confidence=conf,
                                                                mask=mask, warped=warped))
    assert by_output["mask"].item() == pytest.approx(
        7.0 * losses.mask_loss(mask, losses.warp_agreement(warped, real), "bce").item())
    by_l1 = generator_losses(dataclasses.replace(cfg, mask_criterion="l1"), fake=fake, real=real, d_fake=d_fake,
                             d_real=d_real, flow=FlowInputs(flow, real=real, real_prev=prev, target=target,
                                                            confidence=conf, mask=mask, labels=labels,
                                                            labels_prev=labels_prev))
    assert by_l1["mask"].item() == pytest.approx(7.0 * losses.mask_loss(mask, keep, "l1").item())
    assert terms["output_warp"].item() == pytest.approx(
        8.0 * losses.output_warp_loss(fake, fake_prev, target, conf).item())
    feats = vgg(fake), vgg(real)
    assert terms["perceptual"].item() == pytest.approx(
        4.0 * losses.perceptual_loss(*feats, cfg.perceptual_layers).item(), rel=1e-5)
    assert terms["hallucinated_perceptual"].item() == pytest.approx(
        0.25 * 4.0 * losses.perceptual_loss(vgg(raw), feats[1], cfg.perceptual_layers).item(), rel=1e-5)
    assert terms["total"].item() == pytest.approx(sum(v.item() for k, v in terms.items() if k != "total"))
    # A weight of 0 drops that frame's terms.
    off = generator_losses(LossConfig(hallucinated=0.0), fake=fake, real=real, d_fake=d_fake, d_real=d_real,
                           extra=[ExtraFrames("hallucinated", raw, real, d_fake=d_raw, d_real=d_real)])
    assert set(off) == {"gan", "feature_matching", "total"}


def test_generator_aggregator_drops_terms_without_inputs_and_refuses_a_missing_vgg():
    fake, real = torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8)
    terms = generator_losses(LossConfig(), fake=fake, real=real,
                             d_fake=_tiny_outputs(0.0), d_real=_tiny_outputs(0.0))
    assert set(terms) == {"gan", "feature_matching", "total"}  # no flow, no VGG file, no temporal D
    with pytest.raises(ValueError, match="vgg_weights is set"):
        generator_losses(LossConfig(vgg_weights="/models/vgg19.pth"), fake=fake, real=real,
                         d_fake=_tiny_outputs(0.0), d_real=_tiny_outputs(0.0))


def test_discriminator_aggregator():
    cfg = LossConfig(gan_mode="lsgan")
    terms = discriminator_losses(cfg, d_real=as_output(REAL), d_fake=as_output(FAKE),
                                 t_real=[as_output(REAL), as_output(REAL)],
                                 t_fake=[as_output(FAKE), as_output(FAKE)])
    assert terms["d_real"].item() == pytest.approx(1.5625)
    assert terms["d_fake"].item() == pytest.approx(1.375)
    assert terms["temporal_d_real"].item() == pytest.approx(2 * 1.5625)
    assert terms["total"].item() == pytest.approx(3 * (1.5625 + 1.375))


def test_discriminator_rejects_the_extra_frames_sharing_the_fake_weight():
    """With h: the reference's (D_fake + D_fake_raw + 2 D_real) / 2; real and fake keep equal weight."""
    cfg = LossConfig(gan_mode="lsgan")
    zero = as_output(torch.zeros_like(FAKE))  # lsgan fake term: mean f^2 = 0
    terms = discriminator_losses(cfg, d_real=as_output(REAL), d_fake=as_output(FAKE), d_extra={"hallucinated": zero})
    assert set(terms) == {"d_real", "d_fake", "d_fake_hallucinated", "total"}
    assert terms["d_fake"].item() == pytest.approx(1.375 / 2)
    assert terms["d_fake_hallucinated"].item() == pytest.approx(0.0)
    assert terms["total"].item() == pytest.approx(1.5625 + (1.375 + 0.0) / 2)
    both = discriminator_losses(cfg, d_real=as_output(REAL), d_fake=as_output(FAKE),
                                d_extra={"hallucinated": zero, "label_only": as_output(FAKE)})
    assert both["total"].item() == pytest.approx(1.5625 + (1.375 + 0.0 + 1.375) / 3)
    off = discriminator_losses(LossConfig(gan_mode="lsgan", hallucinated=0.0), d_real=as_output(REAL),
                               d_fake=as_output(FAKE), d_extra={"hallucinated": zero})
    assert set(off) == {"d_real", "d_fake", "total"} and off["d_fake"].item() == pytest.approx(1.375)
