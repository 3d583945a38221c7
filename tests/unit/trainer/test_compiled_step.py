"""``train.compile``: the compiled frame step trains as the eager one does.

The graphs are captured and differentiated as ``train.compile`` does (dynamo, AOT autograd, which
rewrites the blocks' in-place norms and activations), then run by ``aot_eager`` rather than compiled
to C++ by inductor: the capture is ours to get right, inductor's code generation is torch's, and
compiling its C++ kernels took 117 s of a 2-core CI machine (benchmarks/gpu_step.py --compile times
the real thing).
"""
from __future__ import annotations

import dataclasses

import torch
import torch._dynamo
from tiny_training import CHANNELS, TINY, AdamEngine, clips

from models.build import build
from trainer.engines import Engines
from trainer.step import Discriminators, StepSettings, train_batch

def losses_of_two_steps(compiled: bool) -> list[dict[str, float]]:
    torch.manual_seed(0)
    nets = build(TINY, CHANNELS)
    if compiled:
        nets.generator.compile_frame_step(backend="aot_eager")
    engines = Engines(AdamEngine(nets.generator),
                      AdamEngine(Discriminators(nets.image_discriminator, nets.temporal_discriminator)))
    settings = StepSettings(loss=dataclasses.replace(TINY.loss, perceptual=0.0), frames_per_step=2,
                            temporal_frames=TINY.discriminator.temporal_frames, temporal_scales=1)
    batch = clips(frames=4, height=16, width=32)
    return [result.losses for _ in range(2) for result in train_batch(engines, batch, settings)]


def test_compiled_frame_step_matches_eager() -> None:
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    eager = losses_of_two_steps(compiled=False)
    assert not torch._dynamo.utils.counters["frames"]["ok"]
    compiled = losses_of_two_steps(compiled=True)
    # The scales were compiled (the first frame and the later ones: two graphs at least), not run eagerly.
    assert torch._dynamo.utils.counters["frames"]["ok"] >= 2
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 2
    assert [sorted(step) for step in compiled] == [sorted(step) for step in eager]
    assert any(name.startswith("g/label_only") for name in eager[-1]) and "g/mask" in eager[-1]
    for index, (c, e) in enumerate(zip(compiled, eager)):
        for name in e:
            # The captured graph runs the same kernels, but AOT autograd may order and rewrite them
            # (in-place into out-of-place): float32 rounding, compounded by one Adam update.
            assert abs(c[name] - e[name]) <= 1e-4 * max(1.0, abs(e[name])), (index, name, c[name], e[name])
