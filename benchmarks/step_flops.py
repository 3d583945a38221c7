"""FLOPs and achieved FLOP/s of one vid2vid GAN step (generator + discriminators, forward and backward).

One step, as the trainer runs it, over a clip of T frames:
  1. the generator makes the clip frame by frame (previous outputs detached),
  2. discriminator update: image D on every frame, temporal D on every window, real and detached fake,
  3. generator update: D frozen, GAN + feature-matching + flow + warp + mask terms (and VGG with --vgg).
FLOPs are counted with ``torch.utils.flop_counter`` (convolutions and matrix products, forward and
backward; elementwise work such as norms, activations and grid_sample is not counted). The step is
then timed without the counter, and the FLOP/s compared with this machine's peak, measured in the
same run as the best of a large matmul and a large convolution.

    .venv/bin/python benchmarks/step_flops.py              # demo and large configs, one thread, ~2 min
    .venv/bin/python benchmarks/step_flops.py --profile    # plus where the time goes, by op
    .venv/bin/python benchmarks/step_flops.py --threads 0  # torch's default thread count

One thread by default: on a machine shared with other jobs, two OpenMP threads wait for each other
whenever one is descheduled. A demo step measured 2.2 s on an idle 2-core machine and 36-86 s with
other jobs at load 5-8 (its CPU time inflated too, by spinning); with one thread it took 3.1-4.2 s
at the same load. Both a wall-clock and a CPU-time rate are printed; the CPU-time fraction is the
one that does not depend on the neighbours.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.build import build, count_parameters  # noqa: E402
from models.config import DiscriminatorConfig, GeneratorConfig, ModelConfig  # noqa: E402
from models.generator import generate_clip  # noqa: E402
from models.objective import FlowInputs, discriminator_losses, generator_losses  # noqa: E402
from models.vgg import VGG19Features  # noqa: E402


@dataclasses.dataclass
class Case:
    name: str
    model: ModelConfig
    classes: int
    height: int
    width: int
    frames: int
    batch: int = 1


def cases(frames: int) -> list[Case]:
    demo = ModelConfig()  # the config defaults are the demo model
    # Two spatial scales, twice the demo's width and 1.5x its depth, 35 classes + edges, 320x160:
    # as large as keeps the default run within ~2 minutes on one core.
    large = ModelConfig(
        generator=GeneratorConfig(num_scales=2, ngf=32, n_blocks=6, n_blocks_local=3, spade_hidden=64),
        discriminator=DiscriminatorConfig(ndf=64, num_D=3),
    )
    return [Case("demo", demo, classes=8, height=128, width=256, frames=frames),
            Case("large", large, classes=35, height=160, width=320, frames=frames)]


def make_step(case: Case, with_vgg: bool):
    torch.manual_seed(0)
    cfg = case.model
    channels = case.classes + 1  # with instance edges
    nets = build(cfg, channels)
    gen, disc, temporal = nets.generator, nets.image_discriminator, nets.temporal_discriminator
    vgg = VGG19Features() if with_vgg else None  # random weights: only the cost matters here
    loss_cfg = cfg.loss if with_vgg else dataclasses.replace(cfg.loss, perceptual=0.0, style=0.0)
    b, t, h, w = case.batch, case.frames, case.height, case.width
    ids = torch.randint(0, case.classes, (b, t, h, w))
    labels = torch.cat([F.one_hot(ids, case.classes).permute(0, 1, 4, 2, 3).float(),
                        torch.zeros(b, t, 1, h, w)], dim=2)
    real = torch.rand(b, t, 3, h, w) * 2 - 1
    flow_ref = torch.randn(b, t, 2, h, w)
    confidence = torch.rand(b, t, 1, h, w)
    d_params = list(disc.parameters()) + (list(temporal.parameters()) if temporal else [])

    def step() -> None:
        clip = generate_clip(gen, labels)
        fake = clip.images
        # -- discriminator update
        for p in d_params:
            p.requires_grad_(True)
        d_real = disc(labels, real)
        d_fake = disc(labels, fake.detach())
        t_real = temporal(real, flow_ref) if temporal else []
        t_fake = temporal(fake.detach(), flow_ref) if temporal else []
        discriminator_losses(loss_cfg, d_real=d_real, d_fake=d_fake, t_real=t_real, t_fake=t_fake
                             )["total"].backward()
        # -- generator update, D frozen
        for p in d_params:
            p.requires_grad_(False)
        terms = generator_losses(
            loss_cfg, fake=fake, real=real, d_fake=disc(labels, fake), d_real=d_real,
            t_fake=temporal(fake, flow_ref) if temporal else [], t_real=t_real, vgg=vgg,
            flow=FlowInputs(clip.flow[:, 1:], real=real[:, 1:], real_prev=real[:, :-1],
                            target=flow_ref[:, 1:], confidence=confidence[:, 1:], mask=clip.mask[:, 1:]))
        terms["total"].backward()
        for module in (gen, disc) + ((temporal,) if temporal else ()):
            module.zero_grad(set_to_none=True)

    params = {"G": count_parameters(gen), "D": count_parameters(disc),
              "D_T": count_parameters(temporal) if temporal else 0}
    return step, params


def measure_peak(repeats: int = 10) -> dict[str, tuple[float, float]]:
    """(wall, CPU-time) FLOP/s of a 2048^3 fp32 matmul and a 3x3 256->256 conv on 64x128 (forward).

    Best of ``repeats``: on a shared machine the slower runs measure the neighbours, not the CPU.
    """
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    x, wt = torch.randn(1, 256, 64, 128), torch.randn(256, 256, 3, 3)
    work = {"matmul 2048^3": (lambda: a @ b, 2 * 2048 ** 3),
            "conv3x3 256ch 64x128": (lambda: F.conv2d(x, wt, padding=1), 2 * 256 * 256 * 9 * 64 * 128)}
    peaks = {}
    for name, (fn, flops) in work.items():
        fn()
        runs = [_timed(fn) for _ in range(repeats)]
        peaks[name] = (flops / min(r[0] for r in runs), flops / min(r[1] for r in runs))
    return peaks


def _timed(fn) -> tuple[float, float]:
    """(wall seconds, process CPU seconds per thread) of one call. CPU time does not count the
    time this process waited while neighbours ran; OpenMP spin-waiting does count (pessimistic)."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, (time.process_time() - cpu) / torch.get_num_threads()


def profile_breakdown(step, top: int = 12) -> None:
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    groups: dict[str, float] = {}
    for e in events:
        groups[_group(e.key)] = groups.get(_group(e.key), 0.0) + e.self_cpu_time_total
    print("    self CPU time by kind: " + ", ".join(
        f"{k} {v / total:.0%}" for k, v in sorted(groups.items(), key=lambda kv: -kv[1])))
    for e in events[:top]:
        print(f"    {e.self_cpu_time_total / total:6.1%}  {e.key}")


def _group(op: str) -> str:
    if "conv" in op:
        return "conv"
    if any(k in op for k in ("mm", "matmul", "linear")):
        return "matmul"
    if "norm" in op:
        return "norm"
    if "grid_sampler" in op:
        return "grid_sample"
    return "other"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=4, help="clip length T")
    parser.add_argument("--repeats", type=int, default=2, help="timed steps per config (median)")
    parser.add_argument("--only", choices=["demo", "large"], help="run one config")
    parser.add_argument("--vgg", action="store_true", help="include the VGG19 perceptual loss")
    parser.add_argument("--profile", action="store_true", help="print where the step's time goes")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"device cpu, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load average {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    peaks = measure_peak()
    results = []
    for case in cases(args.frames):
        if args.only and case.name != args.only:
            continue
        step, params = make_step(case, args.vgg)
        with FlopCounterMode(display=False) as counter:
            step()
        flops = counter.get_total_flops()
        runs = [_timed(step) for _ in range(args.repeats)]
        wall = statistics.median(r[0] for r in runs)
        cpu = statistics.median(r[1] for r in runs)
        print(f"{case.name}: {case.width}x{case.height}, T={case.frames}, B={case.batch}, "
              f"{case.model.generator.num_scales} scale(s), norm={case.model.generator.norm}, "
              f"params G {params['G'] / 1e6:.1f}M D {params['D'] / 1e6:.1f}M D_T {params['D_T'] / 1e6:.1f}M"
              f"{', with VGG' if args.vgg else ''}")
        print(f"  step FLOPs {flops / 1e9:.1f} G ({flops / 1e9 / case.frames:.1f} G per frame); "
              f"wall {wall:.2f} s (median of {len(runs)}: {', '.join(f'{r[0]:.2f}' for r in runs)}), "
              f"{flops / wall / 1e9:.1f} GFLOP/s; CPU time per thread {cpu:.2f} s, {flops / cpu / 1e9:.1f} GFLOP/s")
        results.append((case.name, flops / wall, flops / cpu))
        if args.profile:
            profile_breakdown(step)
    # Measured again after the steps and the best kept: a neighbour's burst during the first
    # measurement would otherwise inflate every fraction.
    for name, (wall_peak, cpu_peak) in measure_peak().items():
        peaks[name] = (max(peaks[name][0], wall_peak), max(peaks[name][1], cpu_peak))
    for name, (wall_peak, cpu_peak) in peaks.items():
        print(f"peak  {name}: {wall_peak / 1e9:.1f} GFLOP/s wall, {cpu_peak / 1e9:.1f} GFLOP/s per CPU time")
    peak_wall = max(p[0] for p in peaks.values())
    peak_cpu = max(p[1] for p in peaks.values())
    for name, wall_rate, cpu_rate in results:
        print(f"{name}: fraction of peak {wall_rate / peak_wall:.2f} (wall clock), "
              f"{cpu_rate / peak_cpu:.2f} (CPU time)")


if __name__ == "__main__":
    main()
