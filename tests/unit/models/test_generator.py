"""The sequential generator: shapes per scale and clip length, composition, first frame,
the per-frame ablation, scale control."""
import pytest
import torch

from models.config import GeneratorConfig
from models.generator import Generator, Rollout, generate_clip
from models.warp import warp

LABELS = 4


def tiny(**overrides) -> GeneratorConfig:
    # The flow head alone: random label maps have no meaningful label flow (test_label_flow.py has it).
    base = dict(ngf=8, n_downsample=2, n_blocks=2, n_blocks_local=1, spade_hidden=8, flow_prior="none")
    base.update(overrides)
    return GeneratorConfig(**base)


def one_hot_labels(batch, frames, height, width, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, LABELS, (batch, frames, height, width), generator=g)
    return torch.nn.functional.one_hot(ids, LABELS).permute(0, 1, 4, 2, 3).float()


@pytest.mark.parametrize("scales", [1, 2, 3])
@pytest.mark.parametrize("frames", [1, 3])
def test_clip_shapes_for_each_scale_count_and_length(scales, frames):
    torch.manual_seed(0)
    gen = Generator(tiny(num_scales=scales), LABELS)
    height, width = 8 * 2 ** (scales - 1), 16 * 2 ** (scales - 1)
    clip = generate_clip(gen, one_hot_labels(2, frames, height, width))
    assert clip.images.shape == (2, frames, 3, height, width)
    assert clip.hallucinated.shape == (2, frames, 3, height, width)
    assert clip.flow.shape == (2, frames, 2, height, width)
    assert clip.mask.shape == (2, frames, 1, height, width)
    assert clip.warped.shape == (2, frames, 3, height, width)
    assert clip.has_flow.tolist() == [False] + [True] * (frames - 1)
    assert clip.images.abs().max() <= 1.0
    assert ((clip.mask >= 0) & (clip.mask <= 1)).all()
    # The first frame comes from labels alone: no flow, m = 1, image = hallucinated.
    assert torch.equal(clip.images[:, 0], clip.hallucinated[:, 0])
    assert torch.equal(clip.flow[:, 0], torch.zeros_like(clip.flow[:, 0]))


@pytest.mark.parametrize("norm", ["spade", "instance", "batch"])
def test_norm_kinds_and_spectral_norm_run(norm):
    gen = Generator(tiny(norm=norm, spectral_norm=True), LABELS)
    out = gen(one_hot_labels(2, 3, 8, 8), torch.rand(2, 2, 3, 8, 8) * 2 - 1)
    assert out.image.shape == (2, 3, 8, 8)
    names = [n for n, _ in gen.named_parameters()]
    assert any("parametrizations.weight.original" in n for n in names)
    assert any(".gamma." in n for n in names) == (norm == "spade")


def test_first_frame_has_no_flow_and_needs_no_real_frame():
    gen = Generator(tiny(), LABELS)
    out = gen(one_hot_labels(1, 1, 16, 16), None)
    assert out.flow is None and out.mask is None and out.warped is None
    assert out.image is out.hallucinated


@pytest.mark.parametrize("spectral", [False, True])
def test_an_untrained_generator_warps_by_the_identity_and_its_flow_head_learns(spectral):
    """The flow head starts at zero at every scale: frame t copies the previous output where m < 1,
    instead of sampling it pixels away; its weights still get a gradient."""
    torch.manual_seed(0)
    gen = Generator(tiny(num_scales=2, spectral_norm=spectral), LABELS)
    prev = torch.rand(2, 2, 3, 16, 16) * 2 - 1
    out = gen(one_hot_labels(2, 3, 16, 16), prev)
    assert torch.equal(out.flow, torch.zeros_like(out.flow))
    assert torch.allclose(out.warped, prev[:, -1], atol=1e-5)
    out.flow.sum().backward()
    assert gen.scales[1].flow_head.conv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("first_frame", ["shared", "own"])
def test_label_only_frame_is_exactly_what_the_first_frame_path_gives(first_frame):
    """The frame generated beside a sequential one from the same labels alone (trained on every frame)
    is the first frame's path: the same computation as a call without previous frames."""
    torch.manual_seed(0)
    gen = Generator(tiny(num_scales=2, first_frame=first_frame), LABELS).eval()
    labels = one_hot_labels(2, 3, 16, 16)
    out = gen(labels, torch.rand(2, 2, 3, 16, 16) * 2 - 1, label_only=True)
    assert torch.allclose(out.label_only, gen(labels, None).image, atol=1e-6)
    assert gen(labels, torch.rand(2, 2, 3, 16, 16)).label_only is None  # only when asked
    assert gen(labels, None, label_only=True).label_only is None  # the first frame is label-only itself


def test_an_own_first_frame_generator_is_apart_from_the_sequential_decoder():
    """``first_frame: own``: the first frame reads the current label map only, through networks of its
    own; the hallucinated frame h of later frames comes from the image decoder, which the first frame
    no longer uses. With both in the loss every trainable parameter gets a gradient (ZeRO needs it)."""
    torch.manual_seed(0)
    gen = Generator(tiny(num_scales=2, first_frame="own"), LABELS)
    labels, prev = one_hot_labels(2, 3, 16, 16), torch.rand(2, 2, 3, 16, 16) * 2 - 1
    first, later = gen(labels, None).image, gen(labels, prev).hallucinated
    with torch.no_grad():
        for scale in gen.scales:
            for param in scale.image_decoder.parameters():
                param.add_(0.5)
    assert torch.equal(gen(labels, None).image, first)
    assert not torch.allclose(gen(labels, prev).hallucinated, later)
    other_past = labels.clone()
    other_past[:, :-1] = one_hot_labels(2, 2, 16, 16, seed=1)
    assert torch.equal(gen(other_past, None).image, first)  # the current label map alone
    out = gen(labels, prev, label_only=True)
    (out.image.mean() + out.label_only.mean()).backward()
    assert [n for n, p in gen.named_parameters() if p.requires_grad and p.grad is None] == []
    assert sum(p.numel() for p in Generator(tiny(first_frame="own"), LABELS).parameters()) > \
        sum(p.numel() for p in Generator(tiny(first_frame="shared"), LABELS).parameters())


def test_an_own_first_frame_generator_needs_the_label_only_term():
    from models.config import LossConfig, ModelConfig

    with pytest.raises(ValueError, match="first_frame: own .*label_only, which is 0"):
        ModelConfig(generator=tiny(first_frame="own"), loss=LossConfig(label_only=0))
    ModelConfig(generator=tiny(first_frame="own", per_frame=True), loss=LossConfig(label_only=0))
    with pytest.raises(ValueError, match="first_frame must be"):
        tiny(first_frame="single")


def test_a_given_flow_replaces_the_predicted_one():
    torch.manual_seed(0)
    gen = Generator(tiny(), LABELS).eval()
    prev = torch.rand(1, 2, 3, 16, 16) * 2 - 1
    flow = torch.zeros(1, 2, 16, 16)
    flow[:, 0] = 1.0
    out = gen(one_hot_labels(1, 3, 16, 16), prev, flow=flow)
    assert torch.equal(out.flow, flow) and torch.allclose(out.warped, warp(prev[:, -1], flow))
    clip = generate_clip(gen, one_hot_labels(1, 3, 16, 16), flow=flow.unsqueeze(1).expand(1, 3, 2, 16, 16))
    assert torch.equal(clip.flow[:, 1:], flow.unsqueeze(1).expand(1, 2, 2, 16, 16))


def test_composition_formula_with_known_flow_and_mask():
    """Set the heads so that w is an exact integer shift and m is 0 or 1, and check
    image = (1 - m) * warp(previous frame, w) + m * h against a rolled previous frame."""
    torch.manual_seed(0)
    gen = Generator(tiny(flow_multiplier=4.0), LABELS).eval()
    scale = gen.scales[0]
    with torch.no_grad():
        scale.flow_head.conv.weight.zero_()
        scale.flow_head.conv.bias.copy_(torch.tensor([0.5, -0.25]))  # x4 -> (dx, dy) = (2, -1)
        scale.mask_head.conv.weight.zero_()
    labels = one_hot_labels(1, 3, 16, 16)
    prev = torch.rand(1, 2, 3, 16, 16) * 2 - 1
    for bias, expect_warp in ((-40.0, True), (40.0, False)):
        with torch.no_grad():
            scale.mask_head.conv.bias.fill_(bias)
            out = gen(labels, prev)
        assert torch.equal(out.flow, torch.tensor([2.0, -1.0]).view(1, 2, 1, 1).expand(1, 2, 16, 16))
        if expect_warp:  # m ~ 0: the previous frame (the LAST of the two) moved along w
            shifted = torch.roll(prev[:, -1], shifts=(1, -2), dims=(-2, -1))
            assert torch.allclose(out.image[..., 1:, :-2], shifted[..., 1:, :-2], atol=1e-5)
        else:  # m ~ 1: the hallucinated image
            assert torch.allclose(out.image, out.hallucinated, atol=1e-6)
        mixed = (1 - out.mask) * warp(prev[:, -1], out.flow) + out.mask * out.hallucinated
        assert torch.allclose(out.image, mixed, atol=1e-6)
        assert torch.allclose(out.warped, warp(prev[:, -1], out.flow), atol=1e-6)


def test_short_history_is_padded_with_the_earliest_frame():
    torch.manual_seed(0)
    gen = Generator(tiny(), LABELS).eval()
    labels = one_hot_labels(1, 2, 16, 16)
    prev = torch.rand(1, 1, 3, 16, 16)
    with torch.no_grad():
        short = gen(labels, prev)
        padded = gen(torch.cat([labels[:, :1], labels], 1), torch.cat([prev, prev], 1))
    assert torch.allclose(short.image, padded.image, atol=1e-6)


def test_per_frame_switch_removes_flow_mask_and_previous_frames():
    torch.manual_seed(0)
    temporal = Generator(tiny(), LABELS)
    per_frame = Generator(tiny(per_frame=True), LABELS).eval()
    names = [n for n, _ in per_frame.named_parameters()]
    for part in ("prev_encoder", "flow_decoder", "flow_head", "mask_head"):
        assert not any(part in n for n in names), part
        assert any(part in n for n, _ in temporal.named_parameters()), part
    assert sum(p.numel() for p in per_frame.parameters()) < sum(p.numel() for p in temporal.parameters())
    labels = one_hot_labels(1, 3, 16, 16)
    with torch.no_grad():
        a = per_frame(labels, torch.rand(1, 2, 3, 16, 16))
        b = per_frame(labels[:, -1:], None)
        other_past = torch.cat([one_hot_labels(1, 2, 16, 16, seed=5), labels[:, -1:]], 1)
        c = per_frame(other_past, torch.zeros(1, 2, 3, 16, 16))
    assert a.flow is None and a.mask is None and a.warped is None
    assert torch.allclose(a.image, b.image, atol=1e-6) and torch.allclose(a.image, c.image, atol=1e-6)
    clip = generate_clip(per_frame, one_hot_labels(1, 3, 16, 16))
    assert clip.has_flow.tolist() == [False, False, False]
    assert torch.equal(clip.mask, torch.ones_like(clip.mask))


def test_scale_control_resolution_freezing_and_full_gradients():
    torch.manual_seed(0)
    # The shared first-frame path: a frame with previous frames reaches every parameter (with a
    # first-frame generator of its own, the label-only frame does: the test above).
    gen = Generator(tiny(num_scales=2, first_frame="shared"), LABELS)
    gen.set_active_scales(1)
    coarse = gen(one_hot_labels(1, 3, 8, 16), torch.rand(1, 2, 3, 8, 16))
    assert coarse.image.shape == (1, 3, 8, 16)
    assert not any(p.requires_grad for p in gen.scales[1].parameters())

    gen.set_active_scales(2)
    gen.set_trainable_scales([1])  # warm up the new finer scale alone
    assert not any(p.requires_grad for p in gen.scales[0].parameters())
    assert all(p.requires_grad for p in gen.scales[1].parameters())

    gen.set_trainable_scales([0, 1])
    # Coarse heads do not reach the output once a finer scale is active: frozen, so every
    # parameter that requires grad actually receives one (what DeepSpeed/DDP expect).
    assert not any(p.requires_grad for p in gen.scales[0].image_head.parameters())
    out = gen(one_hot_labels(1, 3, 16, 32), torch.rand(1, 2, 3, 16, 32))
    (out.image.mean() + out.flow.mean() + out.mask.mean()).backward()
    missing = [n for n, p in gen.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
    with pytest.raises(ValueError, match="subset of the active scales"):
        gen.set_trainable_scales([2])


@pytest.mark.parametrize("first_frame", ["own", "shared"])
def test_only_the_finest_scale_runs_output_heads_and_the_flow_and_mask_heads_run_as_one(first_frame):
    """A coarser scale's image, flow and mask would be replaced by the finer scale's: it runs no head.
    The flow and mask heads read the same features in one convolution: what each gives alone."""
    torch.manual_seed(0)
    gen = Generator(tiny(num_scales=2, first_frame=first_frame), LABELS)
    called = []
    hooks = [head.register_forward_hook(lambda m, a, out: called.append(m))
             for scale in gen.scales for head in scale.heads()]
    labels, prev = one_hot_labels(1, 3, 16, 32), torch.rand(1, 2, 3, 16, 32)
    for active in (1, 2):
        gen.set_active_scales(active)
        called.clear()
        gen(labels[..., :8 * active, :16 * active], prev[..., :8 * active, :16 * active], label_only=True)
        finest = gen.scales[active - 1]
        # The image heads as modules; the flow and mask heads' weights go to one convolution, no module call.
        assert {id(m) for m in called} == {id(finest.image_head)} | (
            {id(finest.first_frame["head"])} if first_frame == "own" else set())
    for hook in hooks:
        hook.remove()
    features = {}
    finest.flow_decoder.register_forward_hook(lambda m, a, out: features.setdefault("flow", out))
    out = gen(labels, prev)
    with torch.no_grad():
        flow = finest.flow_head(features["flow"]) * finest.flow_multiplier
        mask = torch.sigmoid(finest.mask_head(features["flow"]))
    assert torch.allclose(out.mask, mask, atol=1e-6)
    finest.flow_head.conv.bias.data.fill_(0.3)  # away from its zero start, so the comparison means something
    features.clear()
    out = gen(labels, prev)
    with torch.no_grad():
        flow = finest.flow_head(features["flow"]) * finest.flow_multiplier
    assert flow.abs().min() > 1 and torch.allclose(out.flow, flow, atol=1e-5)


def test_frame_size_must_match_downsampling():
    gen = Generator(tiny(num_scales=2), LABELS)
    with pytest.raises(ValueError, match="multiple of 8"):
        gen(one_hot_labels(1, 1, 20, 32))


def test_detached_history_keeps_per_frame_graphs():
    gen = Generator(tiny(), LABELS)
    clip = generate_clip(gen, one_hot_labels(1, 3, 8, 8))
    assert clip.images.requires_grad
    clip.images[:, -1].mean().backward()
    assert gen.scales[0].flow_head.conv.weight.grad is not None


def test_rollout_takes_a_first_frame_made_with_later_label_only_frames() -> None:
    """Rollout.labels_alone makes the first frame and later label-only frames in one pass;
    Rollout.take keeps the first as ``step`` would have made and kept it."""
    torch.manual_seed(0)
    gen = Generator(GeneratorConfig(ngf=8, n_downsample=1, n_blocks=2, spade_hidden=8), 4).eval()
    labels = torch.nn.functional.one_hot(torch.randint(0, 4, (2, 3, 16, 32)), 4).permute(0, 1, 4, 2, 3).float()
    stepped = Rollout(gen)
    made = [stepped.step(labels[:, 0])] + [stepped.step(labels[:, t], label_only=True) for t in (1, 2)]
    given = Rollout(gen)
    alone = given.labels_alone(labels, range(3))
    first = given.take(labels[:, 0], alone[:, 0])
    later = [given.step(labels[:, t]) for t in (1, 2)]
    torch.testing.assert_close(first.image, made[0].image, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(alone[:, 1:], torch.stack([o.label_only for o in made[1:]], dim=1), atol=1e-5, rtol=1e-5)
    for a, b in zip(later, made[1:]):
        torch.testing.assert_close(a.image, b.image, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="first frame"):
        given.take(labels[:, 0], alone[:, 0])


@pytest.mark.parametrize("scales", [1, 2])
def test_a_chunk_shares_what_the_labels_alone_decide(scales) -> None:
    """``step(..., chunk=...)``: each scale's label encoder and SPADE modulations run once for a chunk's
    frames, and the frames and gradients are those of a pass per frame."""
    torch.manual_seed(0)
    gen = Generator(tiny(num_scales=scales), LABELS)
    height, width = 8 * 2 ** (scales - 1), 16 * 2 ** (scales - 1)
    labels = one_hot_labels(2, 4, height, width)
    encoder_calls = []
    gen.scales[-1].label_encoder.register_forward_hook(lambda module, args, out: encoder_calls.append(args[0].shape[0]))

    def frames_and_grads(shared: bool):
        rollout = Rollout(gen)
        rollout.step(labels[:, 0])
        chunk = rollout.chunk(labels, [1, 2, 3])
        outs = [rollout.step(labels[:, t], **({"chunk": chunk.frame(t - 1)} if shared else {})) for t in (1, 2, 3)]
        images = torch.stack([o.image for o in outs], dim=1)
        gen.zero_grad()
        (images * torch.linspace(-1, 1, images.numel()).view_as(images)).sum().backward()
        return images.detach(), {n: p.grad.clone() for n, p in gen.named_parameters() if p.grad is not None}

    encoder_calls.clear()
    apart, apart_grads = frames_and_grads(False)
    assert encoder_calls == [2, 2, 2]  # a pass per frame of batch 2 (the first frame has networks of its own)
    encoder_calls.clear()
    shared, shared_grads = frames_and_grads(True)
    assert encoder_calls == [6]  # one pass over the chunk's 3 frames
    torch.testing.assert_close(shared, apart, atol=1e-5, rtol=1e-5)
    assert shared_grads.keys() == apart_grads.keys() and any(".gamma." in n for n in shared_grads)
    # float32 rounding of sums over larger batches, against gradients up to the hundreds (and biases
    # before an instance norm, whose exact gradient is 0: their values are rounding noise)
    scale = max(float(grad.abs().max()) for grad in apart_grads.values())
    for name, grad in apart_grads.items():
        torch.testing.assert_close(shared_grads[name], grad, atol=1e-5 * scale, rtol=1e-4, msg=name)
    with pytest.raises(IndexError, match="chunk of 3"):
        Rollout(gen).chunk(labels, [1, 2, 3]).frame(3)
    one_clip = Rollout(gen)
    one_clip.step(labels[:1, 0])
    with pytest.raises(ValueError, match="chunk of 2 clips for labels of 1"):
        one_clip.step(labels[:1, 1], chunk=Rollout(gen).chunk(labels, [1]).frame(0))
