"""The paper model's budget (``configs/paper.yaml``), counted without running it.

    .venv/bin/python benchmarks/paper_budget.py [--frames 4] [--gpus 8] [--gpu-gib 80] [--merge-passes true]
                                                [key=value ...]

Everything is counted on PyTorch's meta device (shapes and operators, no memory, no arithmetic), so the
2048x1024 model is counted on a laptop in about a minute. For each scale the progressive schedule
trains (scale s at the full width over 2**(scales-1-s): 512x256, 1024x512, 2048x1024 for paper.yaml),
with every active scale trainable (the joint phase, the largest), one sample per GPU:

  params       trainable parameters: the generator (and of them, the first-frame generator's), the image
               and temporal discriminators
  GFLOP        the generator making one frame (forward); one training step of the trainer
               (``trainer.step.train_batch``: D and G updates per chunk, VGG perceptual terms included,
               the discriminators' passes merged where the trainer merges them, ``train.merge_passes``)
               per frame of the clip. Convolutions and matrix products (``torch.utils.flop_counter``).
  act GiB      activations of one chunk of ``--frames-per-step`` frames (the graph vid2vid keeps before
               a backward): the bytes autograd saves for backward in the chunk's D and G updates, at
               bf16, summed over both. An upper bound: a tensor saved by two operators counts twice,
               and the D graph is freed before the G update builds its own.
  ZeRO 0/1/2   model state per GPU over ``--gpus`` data-parallel GPUs with DeepSpeed's bf16 accounting
               (the ZeRO paper's): bf16 weights 2 bytes per parameter, bf16 gradients 2, fp32 master
               weights and Adam moments 12; stage 1 partitions the 12, stage 2 the gradients too. Frozen
               weights cost their 2 bytes only.
  fits         model state + activations + 10% for buffers and fragmentation within ``--gpu-gib``.

Nothing here is measured on a GPU: the CUDA allocator, cuDNN workspaces and DeepSpeed's buckets add to
these numbers, and ``benchmarks/gpu_check.sh`` is where they are measured.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dataio.config import DataConfig  # noqa: E402
from dataio.batch import ClipBatch  # noqa: E402
from models.build import build, count_parameters, label_channels  # noqa: E402
from models.config import ModelConfig  # noqa: E402
from models.vgg import VGG19Features  # noqa: E402
from trainer.config_tree import load_config  # noqa: E402
from trainer.engines import Engines  # noqa: E402
from trainer.step import Discriminators, StepSettings, merged_passes, train_batch  # noqa: E402

GIB = 2 ** 30
BF16 = 2
HEADROOM = 1.1


class PlainEngine:
    """What ``train_batch`` asks of a DeepSpeed engine, on a plain module: forward, backward, step (no
    optimizer: the counts here are of the step's graph, not of Adam)."""

    def __init__(self, module: nn.Module, on_backward=lambda: None) -> None:
        self.module, self.on_backward = module, on_backward

    def __call__(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()
        self.on_backward()

    def step(self) -> None:
        self.module.zero_grad(set_to_none=True)


@dataclass
class Budget:
    scale: int
    height: int
    width: int
    g_params: int
    first_frame_params: int
    d_params: int
    frozen_params: int
    frame_gflop: float
    step_gflop_per_frame: float
    chunk_act_gib: float

    def state_gib(self, stage: int, gpus: int) -> float:
        trainable = self.g_params + self.d_params
        optimizer = 12 * trainable / (gpus if stage >= 1 else 1)
        grads = BF16 * trainable / (gpus if stage >= 2 else 1)
        return (BF16 * (trainable + self.frozen_params) + grads + optimizer) / GIB


def count(model: ModelConfig, channels: int, scale: int, height: int, width: int, frames: int,
          frames_per_step: int, merge_passes: bool = True) -> Budget:
    """``merge_passes``: ``train.merge_passes``, on where the trainer turns it on for ``model``."""
    with torch.device("meta"):
        nets = build(model, channels)
        gen = nets.generator
        discriminators = Discriminators(nets.image_discriminator, nets.temporal_discriminator)
        vgg = VGG19Features().eval().requires_grad_(False)  # the paper trains with it (weights do not matter here)
        gen.set_active_scales(scale + 1)
        labels = torch.zeros(1, frames, channels, height, width)
        batch = ClipBatch(rgb=torch.zeros(1, frames, 3, height, width), labels=labels,
                          flow=torch.zeros(1, frames, 2, height, width),
                          flow_conf=torch.zeros(1, frames, 1, height, width), keys=["meta"], draws=[])
        with FlopCounterMode(display=False) as frame_flops, torch.no_grad():
            gen(labels[:, :3], torch.zeros(1, 2, 3, height, width))
        # Weights saved for backward are the model state, not activations.
        parameters = {id(p) for module in (gen, discriminators, vgg) for p in module.parameters()}
        saved = {"now": 0, "chunks": []}

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            if id(tensor) not in parameters:
                saved["now"] += tensor.numel() * BF16
            return tensor

        backwards = {"count": 0}

        def after_backward() -> None:
            backwards["count"] += 1
            if backwards["count"] % 2 == 0:  # D then G per chunk: the chunk's graphs are both gone now
                saved["chunks"].append(saved["now"])
                saved["now"] = 0
        engines = Engines(PlainEngine(gen, after_backward), PlainEngine(discriminators, after_backward))
        settings = StepSettings(loss=model.loss, frames_per_step=frames_per_step,
                                temporal_frames=model.discriminator.temporal_frames,
                                temporal_scales=model.discriminator.temporal_scales, vgg=vgg,
                                **merged_passes(model, merge_passes))
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
                FlopCounterMode(display=False) as step_flops:
            train_batch(engines, batch, settings)
    first = sum(count_parameters(s.first_frame, trainable_only=True) for s in gen.scales if s.first_frame is not None)
    trainable_g = count_parameters(gen, trainable_only=True)
    return Budget(scale, height, width, g_params=trainable_g, first_frame_params=first,
                  d_params=count_parameters(discriminators), frozen_params=count_parameters(gen) - trainable_g,
                  frame_gflop=frame_flops.get_total_flops() / 1e9,
                  step_gflop_per_frame=step_flops.get_total_flops() / 1e9 / frames,
                  chunk_act_gib=max(saved["chunks"]) / GIB)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "paper.yaml"))
    parser.add_argument("--width", type=int, default=2048, help="the finest scale's width (height: half)")
    parser.add_argument("--frames", type=int, default=4, help="frames of the counted clip")
    parser.add_argument("--frames-per-step", type=int, default=2, help="train.frames_per_step")
    parser.add_argument("--gpus", type=int, default=8, help="data-parallel GPUs ZeRO 1/2 partition over")
    parser.add_argument("--gpu-gib", type=float, default=80.0, help="memory of one GPU")
    parser.add_argument("--merge-passes", choices=["true", "false"], default="true",
                        help="train.merge_passes (the trainer's default: true)")
    parser.add_argument("overrides", nargs="*", metavar="model.key=value")
    args = parser.parse_args()
    tree = load_config(_Root, args.config, args.overrides)
    model, channels = tree.model, label_channels(tree.data.num_classes, has_edges=True)
    scales = model.generator.num_scales
    print(f"{Path(args.config).name}: {scales} scale(s), {channels} label channels, clip of {args.frames} frames, "
          f"chunks of {args.frames_per_step}, merged passes {args.merge_passes}, one sample per GPU, "
          f"counted on the meta device")
    print(f"{'scale':>5} {'size':>10} {'G params':>12} {'of which 1st':>12} {'D+D_T':>11} {'G GFLOP/frame':>14} "
          f"{'step GFLOP/frame':>17} {'act GiB/chunk':>14} " + " ".join(
              f"{f'ZeRO{s} GiB':>10}" for s in (0, 1, 2)) + f"  fits in {args.gpu_gib:.0f} GiB (ZeRO 0/1/2)")
    for scale in range(scales):
        width = args.width // 2 ** (scales - 1 - scale)
        b = count(model, channels, scale, width // 2, width, args.frames, args.frames_per_step,
                  args.merge_passes == "true")
        states = [b.state_gib(stage, args.gpus) for stage in (0, 1, 2)]
        fits = ["yes" if (state + b.chunk_act_gib) * HEADROOM <= args.gpu_gib else "no" for state in states]
        print(f"{scale:>5} {f'{b.width}x{b.height}':>10} {b.g_params:>12,} {b.first_frame_params:>12,} "
              f"{b.d_params:>11,} {b.frame_gflop:>14,.0f} {b.step_gflop_per_frame:>17,.0f} {b.chunk_act_gib:>14.1f} "
              + " ".join(f"{s:>10.1f}" for s in states) + "  " + "/".join(fits), flush=True)


@dataclass
class _Root:
    """The sections of a config file this script reads."""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)


if __name__ == "__main__":
    main()
