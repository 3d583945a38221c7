"""Operators dispatched per generated frame and per training step, and the host's share of a step.

On a GPU every ATen operator is at least one kernel launch, and launching is host work: a step made of
many small operators waits on Python and the dispatcher, not on the GPU. The count does not depend on
the device or the frame size, so it is measured here on the CPU, at a small size, for the demo model
(the config defaults) and the paper model (``configs/paper.yaml``):

  per frame   the generator alone, no autograd, frames after the first (which has no previous frame)
  per step    one GAN step as ``benchmarks/step_flops.py`` runs it (generator over the clip, D update,
              G update; plain PyTorch: DeepSpeed's engine hooks add host work on top)
  trainer     the step the trainer runs (``trainer.step.train_batch``: chunks of 2 frames, each with a D
              and a G update; the raw hallucinated and label-only frames judged too; the flow terms),
              on plain modules: DeepSpeed's hooks and the optimizer come on top. VGG terms off in both.

Operators are counted below autograd (``TorchDispatchMode``): what reaches a backend kernel, backward
included; views and aliases (``view``, ``detach``, ``select``...) are counted apart too, as they launch
no kernel on a GPU. Then the demo step is timed at a tiny size, where compute is negligible (host
overhead), and at the demo size, in the same invocation: their ratio is the share of the demo step the
host alone would take. ``--against REV`` measures the demo trainer's step (operators and host time at
the tiny size, ``benchmarks/step_cost.py``) on a copy of commit REV and on this tree, each in a process
of its own, and prints the ratios: a change measured against the code it replaced; once on plain
modules, once on the trainer's DeepSpeed engines (ZeRO 0, fp32, one process: their hooks and Adam's
step too). It also counts with the torch profiler, without a dispatch mode: a dispatch mode adds
``detach`` calls of its own (1587 counted in one step against the profiler's 737, 2026-12-04), so the
profiler's count is what a step dispatches when nothing watches it, nested calls included or the
outermost only. And it counts the demo step on bf16 ZeRO 2 engines with the gradient overflow check in one pass (the
trainer's), per tensor (DeepSpeed's) and without it (``check_grad_overflow``), and on bf16 ZeRO 0 ones.

    .venv/bin/python benchmarks/op_count.py                # both models, ~1-3 minutes on one core
    .venv/bin/python benchmarks/op_count.py --only demo --against 7a1daf7 [--rounds 3]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from commits import export  # noqa: E402
from models.build import build  # noqa: E402
from models.config import ModelConfig  # noqa: E402
from models.generator import generate_clip  # noqa: E402
from step_cost import OpCounter, timed, trainer_step  # noqa: E402
from step_flops import Case, make_step  # noqa: E402


def models(only: str | None) -> list[tuple[str, ModelConfig, int]]:
    """(name, model config, classes) of the demo and paper models."""
    from cluster.config import load

    found = [("demo", load(REPO / "configs" / "demo.yaml").model, 8),
             ("paper", load(REPO / "configs" / "paper.yaml").model, 35)]
    return [m for m in found if only in (None, m[0])]


def ops_per_frame(model: ModelConfig, classes: int, height: int, width: int, frames: int) -> tuple[float, OpCounter]:
    torch.manual_seed(0)
    nets = build(model, classes + 1)
    generator = nets.generator.eval()
    generator.set_active_scales(model.generator.num_scales)
    ids = torch.randint(0, classes, (1, frames, height, width))
    labels = torch.cat([F.one_hot(ids, classes).permute(0, 1, 4, 2, 3).float(),
                        torch.zeros(1, frames, 1, height, width)], dim=2)
    with torch.no_grad():
        with OpCounter() as first:
            generate_clip(generator, labels[:, :1])
        with OpCounter() as clip:
            generate_clip(generator, labels)
    return (clip.total - first.total) / (frames - 1), clip


def step_ops(case: Case) -> tuple[int, OpCounter]:
    step, _ = make_step(case, with_vgg=False)
    with OpCounter() as counter:
        step()
    return counter.total, counter


def trainer_step_ops(model: ModelConfig, classes: int, height: int, width: int, frames: int,
                     merge_passes: bool = True) -> tuple[int, OpCounter]:
    step = trainer_step(model, classes, height, width, frames, merge_passes)
    with OpCounter() as counter:
        step()
    return counter.total, counter


def step_cost(tree: Path, height: int, width: int, frames: int, repeats: int, *options: str) -> dict:
    """``benchmarks/step_cost.py`` of ``tree`` in a process of its own (CUDA hidden: a CPU measure)."""
    done = subprocess.run([sys.executable, str(tree / "benchmarks" / "step_cost.py"), "--height", str(height),
                           "--width", str(width), "--frames", str(frames), "--repeats", str(repeats), *options],
                          cwd=tree, capture_output=True, text=True, check=True,
                          env=dict(os.environ, CUDA_VISIBLE_DEVICES=""))
    return json.loads(done.stdout.strip().splitlines()[-1])


def bf16_engine_costs(height: int, width: int, frames: int) -> None:
    """The trainer's step on bf16 DeepSpeed engines (a GPU's precision), operators only, as bf16 on the CPU
    says nothing of a GPU's time: under ZeRO 2 (the GPU checks' setting) with the gradient overflow check
    (``train.<engine>.check_grad_overflow``, on by default) in one pass, the trainer's, and per tensor,
    DeepSpeed's, and without it; then under ZeRO 0, where DeepSpeed's bf16 wrapper steps tensor by tensor."""
    bf16 = ("--engines", "deepspeed", "--engine", "precision=bf16")
    one_pass, theirs, off, zero0 = (step_cost(REPO, height, width, frames, 1, *bf16, *extra) for extra in (
        ("zero_stage=2", "check_grad_overflow=true"),
        ("zero_stage=2", "check_grad_overflow=true", "--deepspeeds-overflow-check"),
        ("zero_stage=2", "check_grad_overflow=false"), ("zero_stage=0",)))
    print(f"  trainer's step at {width}x{height} on DeepSpeed engines (ZeRO 2, bf16, one rank), operators not views "
          f"or aliases: {one_pass['computing']} with the gradient overflow check in one pass (the default), "
          f"{theirs['computing']} with DeepSpeed's per-tensor check ({theirs['computing'] / one_pass['computing']:.2f}x "
          f"the one-pass count), {off['computing']} without a check (check_grad_overflow: false)", flush=True)
    print(f"  the same under ZeRO 0 (bf16, one rank): {zero0['computing']} operators not views or aliases, "
          f"{zero0['computing'] / one_pass['computing']:.2f}x ZeRO 2's (DeepSpeed's FP16_UnfusedOptimizer: a check, a "
          "norm and copies per tensor)", flush=True)


ENGINES = {"plain": "plain modules", "deepspeed": "DeepSpeed engines (ZeRO 0, fp32, one rank) with Adam"}


def against(rev: str, height: int, width: int, frames: int, repeats: int, rounds: int = 1) -> None:
    """``step_cost.py`` on a copy of commit ``rev`` and on this tree, each in a process of its own: the
    step on plain modules, then on the trainer's DeepSpeed engines (their hooks and Adam included).
    ``rounds``: the two trees' processes alternate that many times; the host time is each tree's median."""
    with tempfile.TemporaryDirectory(prefix="op-count-") as scratch:
        old = export(rev, Path(scratch))
        shutil.copy(REPO / "benchmarks" / "step_cost.py", old / "benchmarks" / "step_cost.py")
        for engines in ("plain", "deepspeed"):
            costs: dict[str, list[dict]] = {rev: [], "this tree": []}
            for _ in range(rounds):
                for name, tree in ((rev, old), ("this tree", REPO)):
                    costs[name].append(cost := step_cost(tree, height, width, frames, repeats, "--engines", engines))
                    print(f"  trainer's step at {width}x{height} on {ENGINES[engines]}, {name}: {cost['operators']} "
                          f"operators ({cost['computing']} not views or aliases); profiler: {cost['profiled']} ATen "
                          f"calls, {cost['outermost']} outermost; {cost['seconds']:.3f} s", flush=True)
            then, now = costs[rev][0], costs["this tree"][0]
            seconds = {name: statistics.median(c["seconds"] for c in runs) for name, runs in costs.items()}
            print(f"  this tree against {rev} on {ENGINES[engines]}: {then['operators'] / now['operators']:.2f}x "
                  f"fewer operators, {then['computing'] / now['computing']:.2f}x fewer that are not views or "
                  f"aliases; profiler: {then['profiled'] / now['profiled']:.2f}x fewer ATen calls, "
                  f"{then['outermost'] / now['outermost']:.2f}x fewer outermost; host time "
                  f"{seconds[rev] / seconds['this tree']:.2f}x faster (medians of {rounds} process(es) each, "
                  f"{seconds[rev]:.3f} s against {seconds['this tree']:.3f} s)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["demo", "paper"])
    parser.add_argument("--frames", type=int, default=4, help="clip length of the step")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps (median)")
    parser.add_argument("--top", type=int, default=8, help="most frequent operators listed")
    parser.add_argument("--against", metavar="REV", help="also measure the demo trainer's step on commit REV "
                                                          "and on this tree, each in a process of its own")
    parser.add_argument("--rounds", type=int, default=1, help="--against: processes per tree, alternating "
                                                              "(the host time is each tree's median)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # see step_flops.py: one thread is the stable measurement on a shared host
    print(f"torch {torch.__version__}, 1 thread; counts do not depend on the device or the size")
    for name, model, classes in models(args.only):
        g = model.generator
        side = 2 ** (g.n_downsample + g.num_scales - 1)  # the smallest size every scale takes
        height, width = 2 * side, 4 * side
        per_frame, clip = ops_per_frame(model, classes, height, width, args.frames)
        total, step = step_ops(Case(name, model, classes, height, width, args.frames))
        print(f"{name}: {g.num_scales} scale(s), ngf {g.ngf}, prev_frames {g.prev_frames}, "
              f"counted at {width}x{height}, T={args.frames}")
        print(f"  generator: {per_frame:.0f} operators per frame (no autograd)")
        print(f"  GAN step:  {total} operators ({total / args.frames:.0f} per frame of the clip)")
        print("  most frequent in the step: " + ", ".join(
            f"{op.removeprefix('aten.')} {n}" for op, n in step.ops.most_common(args.top)))
        for merge in (False, True):
            total, counter = trainer_step_ops(model, classes, height, width, args.frames, merge)
            print(f"  trainer's step (train_batch, chunks of 2), train.merge_passes={str(merge).lower()}: {total} "
                  f"operators ({total / args.frames:.0f} per frame of the clip), {counter.computing} not views "
                  f"or aliases")
            print("  most frequent in it: " + ", ".join(
                f"{op.removeprefix('aten.')} {n}" for op, n in counter.ops.most_common(args.top)))
        if name == "demo":
            tiny, _ = make_step(Case("tiny", model, classes, height, width, args.frames), with_vgg=False)
            full, _ = make_step(Case("demo", model, classes, 128, 256, args.frames), with_vgg=False)
            host, demo = timed(tiny, args.repeats), timed(full, args.repeats)
            print(f"  step time: {width}x{height} (host overhead) {host:.3f} s, 256x128 (demo size) {demo:.3f} s: "
                  f"the host alone is {host / demo:.2f}x of the demo step on one CPU thread")
            bf16_engine_costs(height, width, args.frames)
            if args.against:
                against(args.against, height, width, args.frames, args.repeats, args.rounds)


if __name__ == "__main__":
    main()
