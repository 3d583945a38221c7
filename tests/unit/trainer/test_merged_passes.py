"""``train.merge_passes``: one discriminator pass over every set of frames an update judges, one VGG
pass over the fake frames, one generator pass over a chunk's label-only frames; the same losses as a
pass per set, with fewer passes."""
from __future__ import annotations

import dataclasses

import torch
from tiny_training import CHANNELS, TINY, AdamEngine, clips

from models.build import build
from models.config import DiscriminatorConfig, ModelConfig, per_sample
from models.vgg import VGG19Features
from trainer.engines import Engines
from trainer.step import Discriminators, StepSettings, _judge, merged_passes, train_batch


class SGDEngine(AdamEngine):
    """Plain gradient descent: each update in proportion to its gradient. Adam's first step moves a weight
    by about its learning rate whatever the size of its gradient, so a gradient that is 0 but for
    rounding (the temporal discriminator's last bias, when every real and fake output is inside the hinge
    loss's margin: the -1 and +1 per output cancel) moves by +-lr on rounding alone, and two exact paths
    part by that much."""

    def __init__(self, module: torch.nn.Module, lr: float) -> None:
        super().__init__(module)
        self.optimizer = torch.optim.SGD(module.parameters(), lr=lr)
        self.grads: list[dict[str, torch.Tensor]] = []
        """Every update's gradients, by parameter name."""

    def step(self) -> None:
        self.grads.append({n: p.grad.clone() for n, p in self.module.named_parameters() if p.grad is not None})
        super().step()


def two_steps(merge: bool, lr: float = 1e-3, model: ModelConfig = TINY
              ) -> tuple[list[dict[str, float]], dict[str, int], list[dict[str, torch.Tensor]]]:
    torch.manual_seed(0)
    nets = build(model, CHANNELS)
    passes = {"image": 0, "temporal": 0, "vgg": 0, "labels alone": 0, "label encoder": 0, "generator": 0}
    nets.generator.register_forward_hook(lambda *_: passes.__setitem__("generator", passes["generator"] + 1))
    vgg = VGG19Features().eval().requires_grad_(False)  # random weights: the terms' values are what counts
    nets.image_discriminator.register_forward_hook(lambda *_: passes.__setitem__("image", passes["image"] + 1))
    nets.temporal_discriminator.register_forward_hook(
        lambda *_: passes.__setitem__("temporal", passes["temporal"] + 1))
    vgg.register_forward_hook(lambda *_: passes.__setitem__("vgg", passes["vgg"] + 1))
    if not model.generator.per_frame:  # which makes every frame with the label encoder and image decoder
        nets.generator.scales[0].first_frame["encoder"].register_forward_hook(
            lambda *_: passes.__setitem__("labels alone", passes["labels alone"] + 1))
        nets.generator.scales[0].label_encoder.register_forward_hook(
            lambda *_: passes.__setitem__("label encoder", passes["label encoder"] + 1))
    engines = Engines(SGDEngine(nets.generator, lr),
                      SGDEngine(Discriminators(nets.image_discriminator, nets.temporal_discriminator), lr))
    settings = StepSettings(loss=model.loss, frames_per_step=2, temporal_frames=model.discriminator.temporal_frames,
                            temporal_scales=1, vgg=vgg, **merged_passes(model, merge))
    batch = clips(frames=4, height=16, width=32)
    losses = [result.losses for _ in range(2) for result in train_batch(engines, batch, settings)]
    return losses, passes, engines.discriminator.grads + engines.generator.grads


def test_merged_passes_give_the_losses_of_a_pass_per_set() -> None:
    apart, apart_counts, _ = two_steps(merge=False)
    merged, merged_counts, _ = two_steps(merge=True)
    assert [sorted(step) for step in merged] == [sorted(step) for step in apart]
    last = apart[-1]  # every kind of term is there: extra frames' GAN, feature matching and VGG terms too
    assert {"g/hallucinated_perceptual", "g/label_only_feature_matching", "d/d_fake_label_only",
            "g/temporal_gan", "g/perceptual"} <= set(last)
    for index, (m, a) in enumerate(zip(merged, apart)):
        for name in a:
            # The same kernels on larger batches: float32 rounding, carried through the SGD updates.
            assert abs(m[name] - a[name]) <= 1e-4 * max(1.0, abs(a[name])), (index, name, m[name], a[name])
    # Per chunk with extra frames: 4 image-D passes in the D update and 4 in the G update (real, output,
    # hallucinated, label-only) against 1 + 1 merged; VGG: 3 fake and 3 real passes against 1 + 1.
    # Two steps of two chunks, the first chunk of each clip with one frame that has a flow.
    assert (apart_counts["image"], merged_counts["image"]) == (2 * 2 * 8, 2 * 2 * 2)
    # Temporal windows in the second chunk only (K=3 frames): real and fake in one pass in each update
    # (apart, the G update's real windows are judged without a graph).
    assert (apart_counts["temporal"], merged_counts["temporal"]) == (2 * 4, 2 * 2)
    assert (apart_counts["vgg"], merged_counts["vgg"]) == (2 * 2 * 6, 2 * 2 * 2)
    # The first-frame networks: the clip's first frame, then a label-only frame per later frame (4) against
    # one pass per chunk, the first frame in the first chunk's pass (2).
    assert (apart_counts["labels alone"], merged_counts["labels alone"]) == (2 * 4, 2 * 2)
    # The label encoder of frames with a previous frame (1, 2, 3): a pass per frame against one per chunk.
    assert (apart_counts["label encoder"], merged_counts["label encoder"]) == (2 * 3, 2 * 2)


def test_merged_passes_give_the_gradients_of_a_pass_per_set() -> None:
    """Every update's gradients with the weights held (learning rate 0): after updates, rounding-sized
    differences in the weights move outputs across the kinks of the hinge loss and leaky ReLUs, and a
    gradient element of a 4x8 patch output jumps by a share of the whole (1% seen)."""
    apart, _, apart_grads = two_steps(merge=False, lr=0.0)
    merged, _, merged_grads = two_steps(merge=True, lr=0.0)
    assert_same_updates(merged, apart, merged_grads, apart_grads)


Grads = list[dict[str, torch.Tensor]]


def assert_same_updates(merged: list[dict[str, float]], apart: list[dict[str, float]], merged_grads: Grads,
                        apart_grads: Grads) -> None:
    """Two steps' losses within 1e-5, and their 4 D and 4 G updates' gradients within 1e-4 of each
    update's largest: biases before an instance norm, or the last one under the hinge loss with every
    output inside its margin, have an exact gradient of 0, and their values are rounding noise."""
    for m, a in zip(merged, apart):
        assert m.keys() == a.keys()
        for name in a:
            assert abs(m[name] - a[name]) <= 1e-5 * max(1.0, abs(a[name])), (name, m[name], a[name])
    assert len(merged_grads) == len(apart_grads) == 8
    for index, (m, a) in enumerate(zip(merged_grads, apart_grads)):
        assert m.keys() == a.keys()
        scale = max(float(g.abs().max()) for g in a.values())
        for name, grad in a.items():
            torch.testing.assert_close(m[name], grad, atol=1e-4 * scale, rtol=1e-4, msg=f"update {index}: {name}")


def test_passes_merge_only_where_samples_are_judged_alone() -> None:
    assert per_sample(DiscriminatorConfig(norm="instance")) and per_sample(DiscriminatorConfig(norm="none"))
    assert not per_sample(DiscriminatorConfig(norm="batch"))
    assert not per_sample(DiscriminatorConfig(norm="instance", spectral_norm=True))


PER_FRAME = dataclasses.replace(TINY, generator=dataclasses.replace(TINY.generator, per_frame=True))


def test_the_per_frame_ablation_makes_a_chunk_in_one_pass() -> None:
    """Its frames are made from labels alone and read no other frame: a chunk's in one generator pass,
    with the losses and every update's gradients of a pass per frame (the temporal discriminator on, as in
    the per_frame_td variant of the quality benchmark)."""
    apart, apart_counts, apart_grads = two_steps(merge=False, lr=0.0, model=PER_FRAME)
    merged, merged_counts, merged_grads = two_steps(merge=True, lr=0.0, model=PER_FRAME)
    assert {"g/temporal_gan", "g/perceptual"} <= set(apart[-1]) and "g/label_only_gan" not in apart[-1]
    assert_same_updates(merged, apart, merged_grads, apart_grads)
    # Two steps of two chunks of two frames: a pass per frame against one per chunk.
    assert (apart_counts["generator"], merged_counts["generator"]) == (2 * 4, 2 * 2)


def test_the_per_frame_ablation_shares_no_label_work() -> None:
    assert merged_passes(TINY) == {"merge_passes": True, "label_only_per_chunk": True, "labels_per_chunk": True}
    assert merged_passes(PER_FRAME) == {"merge_passes": True, "label_only_per_chunk": True,
                                        "labels_per_chunk": False}
    # Compiled scales take one frame's inputs: no chunk's shared label work there.
    assert merged_passes(TINY, compiled=True)["labels_per_chunk"] is False
    assert not any(merged_passes(TINY, enabled=False).values())


def test_one_temporal_pass_gives_each_windows_outputs() -> None:
    """The real and fake windows of two clips in one temporal pass, split back per window: each output
    element for element as a pass per window gives it (windows from three starts at stride 1, one at
    stride 3: an order mixed up between starts, windows or clips would show)."""
    torch.manual_seed(0)
    model = dataclasses.replace(TINY, discriminator=dataclasses.replace(TINY.discriminator, temporal_scales=2))
    nets = build(model, CHANNELS)
    discriminators = Discriminators(nets.image_discriminator, nets.temporal_discriminator)
    real, fake = torch.rand(2, 2, 7, 3, 16, 32).unbind(0)
    flow, labels = torch.randn(2, 7, 2, 16, 32), torch.rand(2, 7, CHANNELS, 16, 32)
    _, merged = _judge(discriminators, [(labels, real), (labels, fake)], [real, fake], flow, merge=True)
    apart = [discriminators(labels[:, :1], real[:, :1], [window], flow)[1][0] for window in (real, fake)]
    assert len(merged) == len(apart) == 2
    for window_merged, window_apart in zip(merged, apart):
        assert len(window_merged) == len(window_apart) == 2  # temporal scales
        for scale_merged, scale_apart in zip(window_merged, window_apart):
            for d_merged, d_apart in zip(scale_merged, scale_apart):  # spatial scales
                for x_merged, x_apart in zip(d_merged, d_apart):  # features, logits last
                    torch.testing.assert_close(x_merged.flatten(0, 1), x_apart, atol=1e-5, rtol=1e-5)


def test_the_step_computes_a_batchs_label_flows_once(monkeypatch) -> None:
    """The flow prior of every frame in one call per batch (a GPU step waits on the host once, not at
    every frame), with the losses of a flow per frame."""
    import models.generator as generator_module
    import models.label_flow as label_flow_module

    calls = []

    def counted(name):
        def call(*labels):
            calls.append(name)
            return getattr(label_flow_module, name)(*labels)
        return call
    for name in ("clip_label_flows", "label_flow"):
        monkeypatch.setattr(generator_module, name, counted(name))
    ahead, _, _ = two_steps(merge=True, lr=0.0)
    assert calls == ["clip_label_flows"] * 2  # two steps: one call each, none per frame
    calls.clear()
    monkeypatch.setattr(generator_module.Rollout, "label_priors", lambda self, labels: None)
    per_frame, _, _ = two_steps(merge=True, lr=0.0)
    assert calls == ["label_flow"] * 2 * 3  # frames 1, 2 and 3 of each step, one by one
    assert ahead == per_frame
