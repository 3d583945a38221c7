"""``train.channels_last``: inductor lays the compiled graphs out channels-last, and they compute what
the eager networks do.

On the CPU inductor makes every graph with a convolution channels-last by its own rule (oneDNN's), so
oneDNN is switched off here: inductor then takes the rule it takes on a GPU, which declines every
graph of these models (a convolution narrowing the channels by 2x or more with a kernel over 1x1), and
only the forced layout makes them channels-last. Inductor generates and compiles the graphs' C++ for
real: about 40 s on a 2-core machine.
"""
from __future__ import annotations

import copy
import re

import pytest
import torch
import torch._dynamo
from tiny_training import CHANNELS, TINY
from torch._inductor.utils import fresh_cache, run_and_get_code

from models.build import build
from models.compiling import compile_each
from models.discriminators import compile_discriminators


def one_frame_and_judgement(nets, labels: torch.Tensor, prev: torch.Tensor) -> tuple[list[torch.Tensor], dict]:
    """A later frame of the generator (every scale's networks: reflection pads, SPADE, group norms, the
    narrowing decoder) judged by the image discriminator, and the gradients of both."""
    out = nets.generator(labels, prev)
    judged = nets.image_discriminator(labels[:, -1], out.image)
    loss = out.image.square().mean() + sum(features[-1].mean() for features in judged)
    loss.backward()
    grads = {name: p.grad for name, p in [*nets.generator.named_parameters(prefix="g"),
                                          *nets.image_discriminator.named_parameters(prefix="d")]
             if p.grad is not None}
    return [out.image, *(features[-1] for features in judged)], grads


def channels_last_buffers(codes: list[str]) -> tuple[int, int]:
    """4-D buffers that the generated code asserts the strides of (what the convolutions, forward and
    backward, return), and how many of them are channels-last: channel stride 1 with more than one
    channel and more than one pixel (a 1x1 map has channel stride 1 in NCHW too)."""
    shapes = re.findall(r"assert_size_stride\(buf\d+, \(([^)]*)\), \(([^)]*)\)", "\n".join(codes))
    four_d = [([int(n) for n in size.split(",")], [int(n) for n in stride.split(",")])
              for size, stride in shapes if size.count(",") == 3]
    return len(four_d), sum(size[1] > 1 and size[2] * size[3] > 1 and stride[1] == 1 for size, stride in four_d)


def test_compiled_channels_last_matches_eager() -> None:
    torch._dynamo.reset()
    torch.manual_seed(0)
    nets = build(TINY, CHANNELS)
    compiled = copy.deepcopy(nets)
    compiled.generator.compile_frame_step(channels_last=True)
    compile_discriminators(compiled.image_discriminator, channels_last=True)
    labels = torch.rand(2, 2, CHANNELS, 16, 32)
    prev = torch.rand(2, 2, 3, 16, 32) * 2 - 1
    eager_out, eager_grads = one_frame_and_judgement(nets, labels, prev)
    # Compiled at the first call, here: oneDNN off, and no cached graph (its key does not hold that).
    with torch.backends.mkldnn.flags(enabled=False), fresh_cache():
        (out, grads), codes = run_and_get_code(lambda: one_frame_and_judgement(compiled, labels, prev))
    buffers, laid_out = channels_last_buffers(codes)
    # Most convolutions, forward and backward, return channels-last maps: not a stray copy.
    assert buffers > 20 and laid_out > buffers // 2, (laid_out, buffers)
    for got, want in zip(out, eager_out, strict=True):
        assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
    assert grads.keys() == eager_grads.keys()
    for name, grad in grads.items():
        assert torch.allclose(grad, eager_grads[name], atol=1e-5, rtol=1e-4), (name, (grad - eager_grads[name]).abs().max())
        # The parameters keep their layout, and their gradients with them (what ZeRO's buffers take).
        assert grad.stride() == eager_grads[name].stride(), name


def test_inductors_own_rule_declines_these_graphs() -> None:
    """Why the layout is forced: inductor's rule for a GPU (oneDNN off) keeps every training graph of
    the generator and the PatchGANs NCHW. Asked of the graphs AOT autograd captures, without generating code."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd
    from torch._inductor.decomposition import select_decomp_table
    from torch._inductor.graph import GraphLowering

    decisions: list[bool] = []

    def forward_graph(graph: torch.fx.GraphModule, example_inputs):
        with torch.backends.mkldnn.flags(enabled=False):
            decisions.append(GraphLowering.decide_layout_opt(graph, is_inference=False))
        return make_boxed_func(graph.forward)

    backend = aot_autograd(fw_compiler=forward_graph, bw_compiler=lambda graph, _: make_boxed_func(graph.forward),
                           decompositions=select_decomp_table())
    torch._dynamo.reset()
    torch.manual_seed(0)
    nets = build(TINY, CHANNELS)
    nets.generator.compile_frame_step(backend=backend)
    compile_discriminators(nets.image_discriminator, backend=backend)
    one_frame_and_judgement(nets, torch.rand(2, 2, CHANNELS, 16, 32), torch.rand(2, 2, 3, 16, 32))
    assert len(decisions) >= 2 and not any(decisions), decisions


def test_channels_last_is_refused_where_inductor_does_not_lay_out_the_graphs() -> None:
    with pytest.raises(ValueError, match="channels_last needs the inductor backend"):
        compile_each([torch.nn.Conv2d(3, 3, 3)], backend="aot_eager", channels_last=True)
