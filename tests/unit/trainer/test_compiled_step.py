"""``train.compile``: the compiled step (the generator's scales, the discriminators) trains as the eager
one does.

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
from models.discriminators import compile_discriminators
from trainer.engines import Engines
from trainer.step import Discriminators, StepSettings, train_batch

class Recording:
    """``aot_eager``, keeping the names of every captured graph's inputs (the parameters it reads)."""

    def __init__(self) -> None:
        self.inputs: list[str] = []

    def __call__(self, graph: torch.fx.GraphModule, example_inputs):
        self.inputs += [node.name for node in graph.graph.nodes if node.op == "placeholder"]
        return torch._dynamo.lookup_backend("aot_eager")(graph, example_inputs)


def losses_of_two_steps(backend: Recording | None) -> list[dict[str, float]]:
    torch.manual_seed(0)
    nets = build(TINY, CHANNELS)
    discriminators = Discriminators(nets.image_discriminator, nets.temporal_discriminator)
    if backend is not None:  # as the trainer does with train.compile
        nets.generator.compile_frame_step(backend=backend)
        compile_discriminators(discriminators, backend=backend)
    engines = Engines(AdamEngine(nets.generator), AdamEngine(discriminators))
    settings = StepSettings(loss=dataclasses.replace(TINY.loss, perceptual=0.0), frames_per_step=2,
                            temporal_frames=TINY.discriminator.temporal_frames, temporal_scales=1)
    batch = clips(frames=4, height=16, width=32)
    return [result.losses for _ in range(2) for result in train_batch(engines, batch, settings)]


def test_compiled_frame_step_matches_eager() -> None:
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    eager = losses_of_two_steps(None)
    assert not torch._dynamo.utils.counters["frames"]["ok"]
    backend = Recording()
    compiled = losses_of_two_steps(backend)
    # Compiled, not run eagerly: the scales (the first frame and the later ones) and the PatchGANs (the
    # D update's and the G update's, frozen), each with graphs of their own.
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 4
    read = " ".join(backend.inputs)
    assert "label_encoder" in read and "prev_encoder" in read, read[:2000]
    assert "modules_layers_modules_0" in read, read[:2000]  # a PatchGAN's first layer
    assert [sorted(step) for step in compiled] == [sorted(step) for step in eager]
    assert any(name.startswith("g/label_only") for name in eager[-1]) and "g/mask" in eager[-1]
    for index, (c, e) in enumerate(zip(compiled, eager)):
        for name in e:
            # The captured graph runs the same kernels, but AOT autograd may order and rewrite them
            # (in-place into out-of-place): float32 rounding, compounded by one Adam update.
            assert abs(c[name] - e[name]) <= 1e-4 * max(1.0, abs(e[name])), (index, name, c[name], e[name])
