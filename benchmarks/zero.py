"""ZeRO 0 vs 1 vs 2 at 2 ranks: GAN step time and per-rank optimizer-state bytes, relative to stage 0.

    .venv/bin/python benchmarks/zero.py [--steps 7] [--height 32 --width 64] [--large-ngf 58]

Launches itself under ``torchrun --nproc_per_node 2`` (gloo on CPU, NCCL on GPUs). For the demo model
(the defaults of ``models/config.py``, which configs/demo.yaml uses) and a larger one (generator and
discriminator widths raised; the parameter ratio is printed), each stage gets its own engines over the
same initial weights, all built up front, and runs the real GAN step (``trainer.step.train_batch``: D
then G per chunk) on the same random clips of T frames, the stages taking turns step by step (load that
drifts on a shared machine then hits every stage alike); the median step time over ``--steps`` timed
steps (after one warm-up) is reported. Optimizer state per rank: Adam's moments (and step counters)
held by the rank, and also the fp32 master partition ZeRO 1/2 keep beside the module's weights
(stage 0 updates the weights in place).

Goal at 2 ranks (issue 4): stage 2 at most 0.6 of stage 0's optimizer memory per rank and at most
1.15x its step time.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=7, help="timed steps per stage (after 1 warm-up)")
    parser.add_argument("--height", type=int, default=32)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--frames", type=int, default=2)
    parser.add_argument("--large-ngf", type=int, default=58,
                        help="generator width of the large model (~10x the demo parameters)")
    parser.add_argument("--large-ndf", type=int, default=116, help="discriminator width of the large model")
    parser.add_argument("--stages", default="0,1,2")
    parser.add_argument("--models", default="demo,large")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main() -> None:
    args = parse()
    if args.worker:
        worker(args)
        return
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), PYTHONWARNINGS="ignore::FutureWarning")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    cmd = [str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc_per_node", "2",
           __file__, "--worker", *sys.argv[1:]]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    rows = [json.loads(line[5:]) for line in proc.stdout.splitlines() if line.startswith("ROW: ")]
    if proc.returncode or not rows:
        sys.stderr.write(proc.stderr[-6000:])
        sys.exit(proc.returncode or 1)
    report(rows, args)


def report(rows: list[dict], args: argparse.Namespace) -> None:
    print(f"2 ranks, {args.height}x{args.width}, T={args.frames}, batch 1 per rank, median of {args.steps} steps, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '1')}")
    print(f"{'model':6} {'params':>8} {'stage':>5} {'step s':>8} {'time/st0':>8} "
          f"{'Adam MB':>8} {'Adam/st0':>8} {'+master MB':>10} {'+master/st0':>11}")
    base = {r["model"]: r for r in rows if r["stage"] == 0}
    for r in rows:
        b = base.get(r["model"])
        ratio = lambda key: f"{r[key] / b[key]:.2f}" if b and b[key] else "-"  # noqa: E731
        print(f"{r['model']:6} {r['params'] / 1e6:7.1f}M {r['stage']:>5} {r['step_s']:8.2f} {ratio('step_s'):>8} "
              f"{r['adam'] / 2**20:8.1f} {ratio('adam'):>8} {r['total'] / 2**20:10.1f} {ratio('total'):>11}")
    for model, b in base.items():
        two = next((r for r in rows if r["model"] == model and r["stage"] == 2), None)
        if two:
            print(f"goal {model}: stage 2 optimizer memory {two['adam'] / b['adam']:.2f} (Adam) / "
                  f"{two['total'] / b['total']:.2f} (with master) of stage 0 (goal <= 0.6), "
                  f"step time {two['step_s'] / b['step_s']:.2f}x (goal <= 1.15)")


def worker(args: argparse.Namespace) -> None:
    warnings.filterwarnings("ignore", category=FutureWarning)
    import torch

    from models.build import build as build_networks, count_parameters
    from models.config import DiscriminatorConfig, GeneratorConfig, ModelConfig
    from trainer import distributed as dist, engines
    from trainer.config import EngineConfig
    from trainer.step import Discriminators, StepSettings, train_batch

    dist.init()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    device = dist.device()
    models = {"demo": ModelConfig(),
              "large": ModelConfig(generator=GeneratorConfig(ngf=args.large_ngf),
                                   discriminator=DiscriminatorConfig(ndf=args.large_ndf))}
    channels = 9  # 8 classes + instance edges, as the demo data
    for name in args.models.split(","):
        cfg = models[name]
        stages = list(map(int, args.stages.split(",")))
        runs = {}
        for stage in stages:  # every stage's engines at once, over the same initial weights
            torch.manual_seed(0)
            nets = build_networks(cfg, channels)
            dis = Discriminators(nets.image_discriminator, nets.temporal_discriminator)
            ecfg = EngineConfig(zero_stage=stage)
            runs[stage] = {"pair": engines.Engines(engines.build(nets.generator, ecfg, 1), engines.build(dis, ecfg, 1)),
                           "params": count_parameters(nets.generator) + count_parameters(dis), "times": []}
        settings = StepSettings(loss=cfg.loss,
                                frames_per_step=args.frames, temporal_frames=cfg.discriminator.temporal_frames,
                                temporal_scales=cfg.discriminator.temporal_scales,
                                dtype=torch.bfloat16 if engines.precision(EngineConfig()) == "bf16" else torch.float32)
        # Rounds interleave the stages (0, 1, 2, 0, 1, 2, ...): on a shared machine the load drifts over
        # minutes, and timing one stage after the other would charge that drift to a stage.
        for step in range(args.steps + 1):
            batch = random_batch(step, channels, args, device)
            for stage in stages:
                dist.barrier()
                started = time.perf_counter()
                train_batch(runs[stage]["pair"], batch, settings)
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                dist.barrier()
                if step:  # the first step pays for lazy state creation
                    runs[stage]["times"].append(time.perf_counter() - started)
        for stage in stages:
            pair = runs[stage]["pair"]
            adam, master = optimizer_bytes(pair.generator)
            adam_d, master_d = optimizer_bytes(pair.discriminator)
            row = {"model": name, "stage": stage, "params": runs[stage]["params"],
                   "step_s": statistics.median(runs[stage]["times"]),
                   "adam": adam + adam_d, "total": adam + adam_d + master + master_d}
            rows = [None] * dist.world_size()
            torch.distributed.all_gather_object(rows, row)
            if dist.is_main():
                # Per rank: report the larger of the ranks (partitions can differ by a few elements).
                worst = max(rows, key=lambda r: r["total"])
                print("ROW: " + json.dumps({**row, "adam": worst["adam"], "total": worst["total"]}), flush=True)
        for run in runs.values():
            run["pair"].destroy()
        del runs
    dist.exit_process(0)


def random_batch(step: int, channels: int, args: argparse.Namespace, device):
    """Random clips of the loader's layout (one-hot labels, rgb in [-1, 1], small flows)."""
    import torch

    from dataio.batch import ClipBatch

    gen = torch.Generator().manual_seed(step * 100 + int(os.environ.get("RANK", "0")))
    shape = (1, args.frames)
    ids = torch.randint(0, channels, (*shape, args.height, args.width), generator=gen)
    labels = torch.nn.functional.one_hot(ids, channels).permute(0, 1, 4, 2, 3).float()
    return ClipBatch(
        rgb=(torch.rand(*shape, 3, args.height, args.width, generator=gen) * 2 - 1).to(device),
        labels=labels.to(device),
        flow=(torch.randn(*shape, 2, args.height, args.width, generator=gen) * 2).to(device),
        flow_conf=torch.rand(*shape, 1, args.height, args.width, generator=gen).to(device), keys=[], draws=[])


def optimizer_bytes(engine) -> tuple[int, int]:
    """(Adam state bytes, fp32 master-partition bytes) this rank holds for ``engine``."""
    import torch

    from trainer.engines import inner_optimizer

    inner = inner_optimizer(engine)
    adam = sum(t.numel() * t.element_size() for state in inner.state.values()
               for t in state.values() if torch.is_tensor(t))
    master = sum(t.numel() * t.element_size() for t in getattr(engine.optimizer, "single_partition_of_fp32_groups", []))
    return adam, master


if __name__ == "__main__":
    main()
