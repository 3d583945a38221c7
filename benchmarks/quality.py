"""The paper's central claim, on this machine: the sequential generator against per-frame synthesis.

    .venv/bin/python benchmarks/quality.py [--budget-s 300] [--out bench/quality] [key=value ...]

1. Synthesizes street scenes and packs them with a held-out split (``configs/quality.yaml``; the data
   is kept under ``--out`` and reused by later runs).
2. Trains each variant from scratch for the same wall-clock budget (``train.time_budget_s``, one
   ``python -m trainer`` process each, one after the other):
   - **full**: the vid2vid generator (flow, occlusion mask, previous frames) with its temporal
     discriminator;
   - **per_frame**: the image-to-image ablation (``model.generator.per_frame``: no flow, no mask, no
     previous frames) without a temporal discriminator: the frame-by-frame baseline of the paper's
     comparison. It is cheaper per step, so the same budget buys it more steps.
3. Scores both on the held-out clips with the code of ``vid2vid eval`` (``cluster.evaluate``): PSNR,
   SSIM, the flow-warping error and its ratio to the real video's (1.0: as coherent as real video).
4. Prints a table and whether the claim holds here: the full model's warping-error ratio is lower
   than the per-frame model's, at a PSNR no more than ``--psnr-tolerance`` dB below it.

Extra ``key=value`` overrides go to both trainings and the evaluation (e.g. a GPU run:
``data.loader.device=mixed train.generator.precision=bf16 ...``; see docs/performance.md).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
CONFIG = REPO / "configs" / "quality.yaml"

VARIANTS = {
    "full": [],
    "per_frame": ["model.generator.per_frame=true", "model.discriminator.temporal_scales=0"],
}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-s", type=float, default=300.0, help="training wall-clock seconds per variant")
    parser.add_argument("--out", default="bench/quality", help="data, checkpoints and reports (reused data)")
    parser.add_argument("--config", default=str(CONFIG))
    parser.add_argument("--psnr-tolerance", type=float, default=0.5,
                        help="dB the full model's PSNR may fall below the per-frame model's for the claim to hold")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    return parser.parse_args(argv)


def main() -> None:
    args = parse()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    config = str(Path(args.config).resolve())
    os.chdir(out)  # the config's paths are relative to --out
    prepare_data(config, args.overrides)
    rows = []
    for name in args.variants.split(","):
        steps, seconds = train(name, config, args.budget_s, VARIANTS[name] + args.overrides)
        report = evaluate(name, config, VARIANTS[name] + args.overrides)
        rows.append({"variant": name, "steps": steps, "train_s": seconds, **report})
        print(f"{name}: {steps} steps in {seconds:.0f} s; PSNR {report['psnr']:.2f}, "
              f"warping-error ratio {report['warp_ratio']:.3f}", flush=True)
    (out / "quality.json").write_text(json.dumps({"budget_s": args.budget_s, "rows": rows}, indent=2) + "\n")
    print_table(rows, args)


def prepare_data(config: str, overrides: list[str]) -> None:
    from dataio import pack, synth
    from dataio.manifest import read_manifest
    from trainer.config import load
    from trainer.config_tree import to_dict

    cfg = load(config, overrides)
    settings = json.dumps({"synth": to_dict(cfg.data.synth), "pack": to_dict(cfg.data.pack)}, sort_keys=True)
    stamp = Path("data-settings.json")
    if Path(cfg.data.shards, "manifest.parquet").is_file():
        if stamp.is_file() and stamp.read_text() != settings:
            sys.exit(f"{Path.cwd()} holds data made with other data.synth/data.pack settings: use a new --out")
        return
    started = time.perf_counter()
    synth.generate(cfg.data.synth)
    pack.pack(cfg.data, progress=False)
    stamp.write_text(settings)
    manifest = read_manifest(cfg.data.shards)
    print(f"data: {manifest.samples('train')} train / {manifest.samples('val')} val clips of "
          f"{manifest.clip_frames} frames ({time.perf_counter() - started:.0f} s)", flush=True)


def train(name: str, config: str, budget_s: float, overrides: list[str]) -> tuple[int, float]:
    """Train variant ``name`` from scratch for ``budget_s``; returns (optimizer steps, wall seconds)."""
    shutil.rmtree(name, ignore_errors=True)
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONWARNINGS="ignore::FutureWarning",
               OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", str(os.cpu_count() or 1)))
    cmd = [sys.executable, "-m", "trainer", "--config", config, f"checkpoint.dir={name}",
           f"train.time_budget_s={budget_s}", "checkpoint.resume=false", *overrides]
    started = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    done = re.search(r"done: epochs=\d+ steps=(\d+)", proc.stdout)
    if proc.returncode or not done:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-6000:])
        sys.exit(f"training {name} failed (exit {proc.returncode})")
    return int(done.group(1)), seconds


def evaluate(name: str, config: str, overrides: list[str]) -> dict:
    from cluster.evaluate import run_eval
    from trainer.config import load

    cfg = load(config, overrides)
    result = run_eval(cfg, name, f"{name}.json", video=f"{name}.mp4", progress=False)
    return json.loads(result.report_path.read_text())


def print_table(rows: list[dict], args: argparse.Namespace) -> None:
    print(f"\nequal wall-clock training: {args.budget_s:.0f} s per variant; held-out clips scored from labels alone")
    print(f"{'variant':<10} {'steps':>6} {'PSNR dB':>8} {'SSIM':>7} {'warp err':>9} {'real':>9} {'ratio':>7}")
    for row in rows:
        print(f"{row['variant']:<10} {row['steps']:>6} {row['psnr']:>8.2f} {row['ssim']:>7.4f} "
              f"{row['warp_error']:>9.5f} {row['warp_error_real']:>9.5f} {row['warp_ratio']:>7.3f}")
    by_name = {row["variant"]: row for row in rows}
    if {"full", "per_frame"} <= by_name.keys():
        full, single = by_name["full"], by_name["per_frame"]
        coherent = full["warp_ratio"] < single["warp_ratio"]
        fidelity = full["psnr"] >= single["psnr"] - args.psnr_tolerance
        print(f"\nwarping-error ratio per_frame/full: {single['warp_ratio'] / full['warp_ratio']:.2f}x; "
              f"PSNR full - per_frame: {full['psnr'] - single['psnr']:+.2f} dB")
        verdict = "HOLDS" if coherent and fidelity else "DOES NOT HOLD"
        print(f"claim (more temporally coherent at equal or better per-frame quality): {verdict} here "
              f"(coherence {'yes' if coherent else 'no'}, PSNR within {args.psnr_tolerance} dB "
              f"{'yes' if fidelity else 'no'})")


if __name__ == "__main__":
    main()
