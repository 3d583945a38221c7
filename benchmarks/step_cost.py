"""The trainer's step on plain modules: operators dispatched (and the views and aliases among them) and
the median step time, as one JSON line. ``benchmarks/op_count.py --against REV`` runs this file on the
working tree and on a copy of commit REV, each in a process of its own, so that a change is measured
against the code it replaced in one invocation. It reads only what every tree since 2026-12-04 has
(``train.merge_passes`` where the tree has it, at its default).

The step is ``trainer.step.train_batch`` over chunks of 2 frames, VGG terms off, one clip, one thread,
on plain modules (``paper_budget.PlainEngine``: DeepSpeed's hooks and the optimizer come on top), or with
``--engines deepspeed`` on the trainer's own engines (``trainer.engines.build``: DeepSpeed, ZeRO 0, fp32,
a one-process group, Adam as the tree builds it; ``--engine key=value ...`` for other engine settings):
the whole step as the trainer runs it.

    .venv/bin/python benchmarks/step_cost.py --height 16 --width 32      # the demo model, tiny size
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import yaml
from torch.utils._python_dispatch import TorchDispatchMode

TREE = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(TREE), str(TREE / "benchmarks")]

from gpu_step import random_clips  # noqa: E402
from models.build import build  # noqa: E402
from models.config import ModelConfig  # noqa: E402
from paper_budget import PlainEngine  # noqa: E402
from trainer import step as trainer_step_module  # noqa: E402
from trainer.engines import Engines  # noqa: E402


class OpCounter(TorchDispatchMode):
    """Counts every operator that reaches a kernel, by name, and apart the views and aliases among them
    (``view``, ``detach``, ``select``...: a dispatch on the host, but no kernel on a GPU)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: collections.Counter[str] = collections.Counter()
        self.views = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func.overloadpacket)] += 1
        self.views += func.is_view
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.ops.values())

    @property
    def computing(self) -> int:
        """Operators that are not views or aliases."""
        return self.total - self.views


def trainer_step(model: ModelConfig, classes: int, height: int, width: int, frames: int,
                 merge_passes: bool = True, frames_per_step: int = 2, engines: str = "plain",
                 engine: dict | None = None, deepspeeds_overflow_check: bool = False) -> Callable[[], object]:
    """The trainer's step as a callable (``merge_passes``: ``train.merge_passes``), on plain modules or
    (``engines="deepspeed"``) on the trainer's DeepSpeed engines, ZeRO 0 in fp32 unless ``engine`` (an
    ``EngineConfig``'s fields) says otherwise; ``deepspeeds_overflow_check``: DeepSpeed's per-tensor gradient
    overflow check under ZeRO 1/2, not the trainer's one-pass one."""
    S = trainer_step_module
    torch.manual_seed(0)
    channels = classes + 1  # with instance edges
    nets = build(model, channels)
    nets.generator.set_active_scales(model.generator.num_scales)
    discriminators = S.Discriminators(nets.image_discriminator, nets.temporal_discriminator)
    if engines == "deepspeed":
        from trainer import distributed as dist
        from trainer import engines as engine_module
        from trainer.config import EngineConfig
        from trainer.config_tree import from_dict

        dist.init()
        # Typed as a config file's keys are (YAML reads `lr=1e-3` as a string; the config tree takes it).
        config = from_dict(EngineConfig, {"zero_stage": 0, "precision": "fp32", **(engine or {})}, "--engine")
        pair = Engines(engine_module.build(nets.generator, config, 1), engine_module.build(discriminators, config, 1))
        if deepspeeds_overflow_check:  # DeepSpeed's own check (per tensor) where the trainer's is one pass
            for built in (pair.generator, pair.discriminator):
                vars(built.optimizer).pop("has_overflow_partitioned_grads_serial", None)
    else:
        pair = Engines(PlainEngine(nets.generator), PlainEngine(discriminators))
    batch = random_clips(torch.device("cpu"), 1, frames, channels, height, width)
    bf16 = {"dtype": torch.bfloat16} if (engine or {}).get("precision") == "bf16" else {}
    merged = S.merged_passes(model, merge_passes) if hasattr(S, "merged_passes") else {}
    settings = S.StepSettings(loss=dataclasses.replace(model.loss, perceptual=0.0, style=0.0),
                              frames_per_step=frames_per_step,
                              temporal_frames=model.discriminator.temporal_frames if nets.temporal_discriminator else 0,
                              temporal_scales=model.discriminator.temporal_scales, **merged, **bf16)
    return lambda: S.train_batch(pair, batch, settings)


def profiled(step: Callable[[], object]) -> tuple[int, int]:
    """ATen operator calls of one ``step`` as the torch profiler sees them without a dispatch mode:
    every call, nested ones included (``aten::conv2d`` and the convolution it calls), and the
    outermost ones only (called by Python or the autograd engine, not by another operator)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    calls = [e for e in prof.events() if e.name.startswith("aten::")]

    def nested(event) -> bool:
        parent = event.cpu_parent
        while parent is not None:
            if parent.name.startswith("aten::"):
                return True
            parent = parent.cpu_parent
        return False
    return len(calls), sum(not nested(e) for e in calls)


def timed(step: Callable[[], object], repeats: int) -> float:
    step()  # warm-up: allocator, lazy inits
    runs = []
    for _ in range(repeats):
        started = time.perf_counter()
        step()
        runs.append(time.perf_counter() - started)
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(TREE / "configs" / "demo.yaml"))
    parser.add_argument("--classes", type=int, default=8)
    parser.add_argument("--height", type=int, default=16)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--engines", choices=["plain", "deepspeed"], default="plain")
    parser.add_argument("--engine", nargs="*", default=[], metavar="KEY=VALUE",
                        help="--engines deepspeed: EngineConfig fields, e.g. zero_stage=2 precision=bf16 "
                             "check_grad_overflow=true (default: ZeRO 0, fp32)")
    parser.add_argument("--deepspeeds-overflow-check", action="store_true",
                        help="--engines deepspeed, ZeRO 1/2: DeepSpeed's per-tensor gradient overflow check")
    args = parser.parse_args()
    from cluster.config import load

    torch.set_num_threads(1)
    step = trainer_step(load(args.config).model, args.classes, args.height, args.width, args.frames,
                        engines=args.engines, deepspeeds_overflow_check=args.deepspeeds_overflow_check,
                        engine={key: yaml.safe_load(value) for key, value in (item.split("=", 1) for item in args.engine)})
    step()
    with OpCounter() as counter:
        step()
    calls, outermost = profiled(step)
    print(json.dumps({"operators": counter.total, "computing": counter.computing, "profiled": calls,
                      "outermost": outermost, "seconds": timed(step, args.repeats)}), flush=True)
    if args.engines == "deepspeed":
        from trainer import distributed as dist

        dist.exit_process(0)  # DeepSpeed's process group: leave as the trainer does


if __name__ == "__main__":
    main()
