"""The paper's central claim, on this machine: the sequential generator against per-frame synthesis.

    .venv/bin/python benchmarks/quality.py [--budget-s 900] [--seeds 0,1,2] [--jobs 1] [--variants ...]
                                           [--out bench/quality] [key=value ...]

1. Synthesizes street scenes and packs them with a held-out split (``configs/quality.yaml``; the data
   is kept under ``--out`` and reused by later runs). Or packs footage given as ``data.pack.source``
   (relative to ``--out``), e.g. real videos beside their edges:

       .venv/bin/python benchmarks/edge_pairs.py tests/data/*.webm --out bench/quality-edges/edges
       .venv/bin/python benchmarks/quality.py --out bench/quality-edges data.pack.source=edges \
           data.pack.label_kind=rgb

2. Trains every variant with every seed from scratch for the same wall-clock budget
   (``train.time_budget_s``; one ``python -m trainer`` process per run, ``--jobs`` at a time with the
   cores split evenly between them). Every ``--curve-every-s`` seconds of training the trainer scores
   the held-out clips (``eval.every_s``; the scoring time is not counted): the learning curve.
3. Scores each trained model on the held-out clips with the code of ``vid2vid eval`` (PSNR, SSIM,
   the flow-warping error and its ratio to the real video's: 1.0 is as coherent as real video), and
   looks inside it with the synthetic ground truth (``dataio.synth`` knows the exact flow and which
   pixels are newly seen): the mask on disoccluded and on visible pixels, the L1 of the hallucinated
   frame h and of the warped previous output against the real frame, the flow's end-point error, and
   the PSNR of each frame index (frame 0 is generated from labels alone). Footage has no such truth:
   there the PSNR of each frame index only. On both, the same sequential generator warping with the
   packed flow of the real frames, and with the label maps' flow alone, instead of its own flow.
4. Prints every run, the mean and spread over seeds per variant, the learning curves, and whether
   the claim holds: the full model's warping-error ratio at most ``--ratio-goal`` x the per-frame
   model's, at a PSNR at most ``--psnr-tolerance`` dB below it, and not rising over the second half
   of its learning curve. ``quality.json`` under ``--out`` holds all of it.

A finished run is reused when the script runs again with the same settings and the config resolves
the same, defaults included (``--rerun`` trains again), so an interrupted benchmark continues where
it stopped; ``--rescore`` scores finished runs again instead (diagnostics added since they trained).
Extra ``key=value`` overrides go to every training and evaluation (e.g. a GPU run:
``data.loader.device=mixed``; see docs/performance.md).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
CONFIG = REPO / "configs" / "quality.yaml"

VARIANTS: dict[str, list[str]] = {
    # The vid2vid generator (flow, occlusion mask, previous frames) with its temporal discriminator.
    "full": [],
    # The paper's image-to-image baseline: no flow, no mask, no previous frames, no temporal D.
    "per_frame": ["model.generator.per_frame=true", "model.discriminator.temporal_scales=0"],
    # The same generator with the temporal discriminator: what the video GAN loss alone buys.
    "per_frame_td": ["model.generator.per_frame=true"],
    # Ablations: the full model without one new term of the objective each, and with imaginaire's
    # mask target in place of the occlusion target.
    "full_no_hallucinated": ["model.loss.hallucinated=0"],
    "full_no_output_warp": ["model.loss.output_warp=0"],
    "full_no_label_only": ["model.loss.label_only=0", "model.generator.first_frame=shared"],
    "full_mask_output": ["model.loss.mask_target=output"],
    # The flow head alone, as in the paper, without the label maps' flow to start from.
    "full_no_flow_prior": ["model.generator.flow_prior=none"],
    # The first frame from the sequential generator's own label encoder and image decoder.
    "full_shared_first_frame": ["model.generator.first_frame=shared"],
    # The mask pushed to its target by imaginaire's L1 (the median) instead of cross-entropy.
    "full_mask_l1": ["model.loss.mask_criterion=l1"],
    # Both: the objective before these two choices.
    "full_shared_first_frame_mask_l1": ["model.generator.first_frame=shared", "model.loss.mask_criterion=l1"],
}
SCORE_FILE = "score.json"
"""A finished run's row: its scores, steps, curve and the settings it trained with."""
FRESH_SCORE_FILE = "score.new.json"
"""What the scoring process writes, before the row is made of it (a rescoring must not leave a row without
its settings behind, which would make the run look unfinished)."""


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-s", type=float, default=900.0, help="training wall-clock seconds per run")
    parser.add_argument("--seeds", default="0,1,2", help="train.seed values; every variant runs with each")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"any of {', '.join(VARIANTS)}")
    parser.add_argument("--variant", nargs="+", action="append", default=[], metavar=("NAME", "KEY=VALUE"),
                        help="define (and run) another variant: a name, then the overrides it adds to 'full'")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time; each gets cores // jobs threads")
    parser.add_argument("--curve-every-s", type=float, default=0.0,
                        help="seconds of training between held-out scores (default: a tenth of the budget)")
    parser.add_argument("--out", default="bench/quality", help="data, runs and reports (data reused)")
    parser.add_argument("--config", default=str(CONFIG))
    parser.add_argument("--psnr-tolerance", type=float, default=0.3,
                        help="dB the full model's PSNR may fall below the per-frame model's")
    parser.add_argument("--ratio-goal", type=float, default=0.7,
                        help="the full model's warping-error ratio must be at most this times the per-frame model's")
    parser.add_argument("--rerun", action="store_true", help="train again even where a finished run exists")
    parser.add_argument("--rescore", action="store_true",
                        help="score the finished runs again (diagnostics added since they ran), not train them")
    parser.add_argument("--score", metavar="RUN", help=argparse.SUPPRESS)  # one run's scoring, in its own process
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)
    names = [name for name in args.variants.split(",") if name]
    for name, *overrides in args.variant:
        VARIANTS[name] = overrides
        names.append(name)
    args.variants = ",".join(names)
    unknown = set(names) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(sorted(unknown))}: choose from {', '.join(VARIANTS)}")
    if args.jobs < 1 or args.budget_s <= 0:
        parser.error("--jobs must be >= 1 and --budget-s > 0")
    return args


def main() -> None:
    args = parse()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    config = str(Path(args.config).resolve())
    os.chdir(out)  # the config's paths are relative to --out
    if args.score:
        score(Path(args.score), config, args.overrides)
        return
    prepare_data(config, args.overrides)
    runs = [(variant, int(seed)) for seed in args.seeds.split(",") for variant in args.variants.split(",")]
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    print(f"{len(runs)} runs of {args.budget_s:.0f} s, {args.jobs} at a time with {threads} thread(s) each", flush=True)
    with ThreadPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(lambda run: train_and_score(*run, config, args, threads), runs))
    summary = summarize(rows, args)
    (out / "quality.json").write_text(json.dumps({"budget_s": args.budget_s, "overrides": args.overrides,
                                                  "rows": rows, **summary}, indent=2) + "\n")
    print_report(rows, summary, args)


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
    if synthetic(cfg):
        synth.generate(cfg.data.synth)
    elif not Path(cfg.data.pack.source).is_dir():
        sys.exit(f"data.pack.source={cfg.data.pack.source}: no such folder under {Path.cwd()} (real footage: "
                 f"benchmarks/edge_pairs.py writes one)")
    pack.pack(cfg.data, progress=False)
    stamp.write_text(settings)
    manifest = read_manifest(cfg.data.shards)
    print(f"data: {manifest.samples('train')} train / {manifest.samples('val')} val clips of "
          f"{manifest.clip_frames} frames ({time.perf_counter() - started:.0f} s)", flush=True)


def synthetic(cfg) -> bool:
    """Whether the benchmark's data is ``dataio.synth``'s (with its exact flow and disocclusions) rather
    than footage given as ``data.pack.source``."""
    return Path(cfg.data.pack.source).resolve() == Path(cfg.data.synth.out).resolve()


def train_and_score(variant: str, seed: int, config: str, args: argparse.Namespace, threads: int) -> dict:
    """Train one (variant, seed) run for the budget and score it, or reuse a finished identical run."""
    run = Path("runs") / f"{variant}-seed{seed}"
    overrides = [*VARIANTS[variant], f"train.seed={seed}", *args.overrides]
    curve_every = args.curve_every_s or args.budget_s / 10
    settings = {"variant": variant, "seed": seed, "budget_s": args.budget_s, "curve_every_s": curve_every,
                "overrides": overrides, "threads": threads, "config": config_digest(config, overrides)}
    scored = run / SCORE_FILE
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONWARNINGS="ignore::FutureWarning",
               OMP_NUM_THREADS=str(threads))
    row = json.loads(scored.read_text()) if scored.is_file() and not args.rerun else {}
    if row.get("settings") == settings:
        if args.rescore:
            kept = {key: row[key] for key in ("variant", "seed", "steps", "wall_s", "curve", "settings")}
            row = {**_score(run, config, overrides, env), **kept}
            _write_row(run, row)
        print(f"{run.name}: {'rescored' if args.rescore else 'reused'} ({row['steps']} steps)", flush=True)
        return row
    if args.rescore:
        raise SystemExit(f"{run}: --rescore scores finished runs, and this one has "
                         f"{'other settings' if row else 'not finished'}: train it without --rescore")
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    cmd = [sys.executable, "-m", "trainer", "--config", config, f"checkpoint.dir={run}", "checkpoint.resume=false",
           f"train.time_budget_s={args.budget_s}", f"eval.every_s={curve_every}", *overrides]
    started = time.perf_counter()
    with (run / "train.log").open("w") as log:
        proc = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    seconds = time.perf_counter() - started
    text = (run / "train.log").read_text()
    done = re.search(r"done: epochs=\d+ steps=(\d+)", text)
    if proc.returncode or not done:
        sys.stderr.write(text[-6000:])
        raise SystemExit(f"training {run} failed (exit {proc.returncode}); log: {run / 'train.log'}")
    row = {**_score(run, config, overrides, env), "variant": variant, "seed": seed, "steps": int(done.group(1)),
           "wall_s": round(seconds, 1), "curve": read_curve(run), "settings": settings}
    _write_row(run, row)
    print(f"{run.name}: {row['steps']} steps; PSNR {row['psnr']:.2f}, SSIM {row['ssim']:.4f}, "
          f"warping-error ratio {row['warp_ratio']:.3f}", flush=True)
    return row


def _score(run: Path, config: str, overrides: list[str], env: dict[str, str]) -> dict:
    """``score`` of a trained run, in a process of its own (the trainer's imports stay out of this one)."""
    with (run / "score.log").open("w") as log:
        proc = subprocess.run([sys.executable, __file__, "--out", ".", "--config", config, "--score", str(run),
                               *overrides], env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    if proc.returncode:
        sys.stderr.write((run / "score.log").read_text()[-6000:])
        raise SystemExit(f"scoring {run} failed (exit {proc.returncode})")
    fresh = run / FRESH_SCORE_FILE
    row = json.loads(fresh.read_text())
    fresh.unlink()
    return row


def _write_row(run: Path, row: dict) -> None:
    """A run's finished row, replacing the last whole: a run without one is trained again."""
    from dataio.storage import AtomicFile

    with AtomicFile(run / SCORE_FILE) as staging:
        staging.write_text(json.dumps(row, indent=2) + "\n")


def config_digest(config: str, overrides: list[str]) -> str:
    """A digest of the config a run trains with, defaults included: a run is reused only if the
    config resolves the same (a changed default makes it train again)."""
    from trainer.config import load
    from trainer.config_tree import to_dict

    resolved = json.dumps(to_dict(load(config, overrides)), sort_keys=True, default=str)
    return hashlib.sha256(resolved.encode()).hexdigest()[:16]


def read_curve(run: Path) -> list[dict]:
    from trainer.validation import CURVE_FILE

    path = run / CURVE_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def score(run: Path, config: str, overrides: list[str]) -> None:
    """``vid2vid eval``'s scores and the diagnostics of one trained run -> ``FRESH_SCORE_FILE`` in it."""
    import torch

    from cluster.evaluate import run_eval
    from trainer.config import load

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    cfg = load(config, overrides)
    result = run_eval(cfg, str(run), run / "eval.json", video=run / "eval.mp4", progress=False)
    report = json.loads(result.report_path.read_text())
    keep = ("psnr", "ssim", "warp_error", "warp_error_real", "warp_ratio")
    row = {**{k: report[k] for k in keep}, "diagnostics": diagnostics(cfg, run)}
    (run / FRESH_SCORE_FILE).write_text(json.dumps(row, indent=2) + "\n")


def diagnostics(cfg, run: Path) -> dict:
    """flow_diagnostics over the held-out clips, generated from labels alone at the eval size, with the
    exact flow and disocclusions of the synthetic sequences they were packed from; on footage, which has
    no such truth, ``footage_diagnostics``."""
    if not synthetic(cfg):
        return footage_diagnostics(cfg, run)
    import numpy as np
    import torch
    from PIL import Image

    from dataio.manifest import read_manifest
    from dataio.synth import disocclusions
    from models.generator import generate_clip
    from models.metrics import FlowDiagnostics, flow_diagnostics

    net, loader, frames = held_out(cfg, run)
    rows = {row.key: row for row in read_manifest(cfg.data.shards).rows}
    factor = rows[next(iter(rows))].height // cfg.eval.height
    synth = Path(cfg.data.synth.out)
    total = FlowDiagnostics()
    # The same generator warping with another flow instead of its own: the packed target flow (what a
    # perfect flow head would give) and the label maps' flow alone (the prior without the head's
    # correction). Sums of the warping errors (as the eval pools them) and of clip PSNRs, and the
    # end-point error of each flow against the exact one on visible pixels.
    sums = {name: {"error": 0.0, "real": 0.0, "psnr": 0.0, "epe": 0.0} for name in OTHER_FLOWS}
    clips = visible = 0.0
    # The loader resizes labels nearest-neighbour from pixel centres: sample the truth the same way.
    pick = factor // 2
    try:
        for batch in loader:
            truth_flow, truth_new = [], []
            for key in batch.keys:
                row = rows[key]
                steps = range(row.start_frame, row.start_frame + frames)
                inst = np.stack([np.asarray(Image.open(synth / row.sequence / "instances" / f"{t:06d}.png"))
                                 for t in steps])
                flow = np.stack([np.load(synth / row.sequence / "flow" / f"{t:06d}.npy") for t in steps])
                new = disocclusions(inst, flow)
                new[0] = False
                truth_new.append(new[:, pick::factor, pick::factor])
                truth_flow.append(flow[:, pick::factor, pick::factor].transpose(0, 3, 1, 2) / factor)
            true_flow, true_new = torch.from_numpy(np.stack(truth_flow)), torch.from_numpy(np.stack(truth_new))
            seen = (~true_new[:, 1:]).to(torch.float64)
            with torch.no_grad():
                clip = generate_clip(net.generator, batch.labels)
                for name, flow in _warp_with_other_flows(net.generator, batch, sums).items():
                    epe = (flow[:, 1:].to(torch.float64) - true_flow[:, 1:]).norm(dim=2)
                    sums[name]["epe"] += float((epe * seen).sum())
            clips += clip.images.shape[0]
            visible += float(seen.sum())
            total = total + flow_diagnostics(clip.images, clip.hallucinated, clip.warped, clip.mask, clip.flow,
                                             batch.rgb, true_flow, true_new)
    finally:
        loader.close()
    result = {**total.means(), **_other_flow_scores(sums, clips)}
    result.update({f"{name}_epe_visible": sum_["epe"] / visible for name, sum_ in sums.items()})
    return result


OTHER_FLOWS = ("target_flow", "label_flow")
"""Flows the same trained generator warps with instead of its own, to tell what its flow costs: the packed
target flow (DIS on the real frames: about what a perfect flow head would give) and the label maps' flow
alone (the prior without the head's correction)."""


def _warp_with_other_flows(generator, batch, sums: dict[str, dict[str, float]]) -> dict:
    """Generate ``batch``'s clips warping with each of ``OTHER_FLOWS``; add their warping errors (pooled as
    the eval pools them) and clip PSNRs to ``sums``. Returns the flows by name."""
    import torch

    from models.generator import generate_clip
    from models.label_flow import clip_label_flows
    from models.metrics import psnr, warping_error

    labels = clip_label_flows(batch.labels)
    flows = {"target_flow": batch.flow, "label_flow": torch.cat([torch.zeros_like(labels[:, :1]), labels], dim=1)}
    real = warping_error(batch.rgb, batch.flow, batch.flow_conf)
    for name, flow in flows.items():
        given = generate_clip(generator, batch.labels, flow=flow).images
        ours = warping_error(given, batch.flow, batch.flow_conf)
        sums[name]["error"] += float((ours.error * ours.weight).nansum())
        sums[name]["real"] += float((real.error * real.weight).nansum())
        sums[name]["psnr"] += float(psnr(given, batch.rgb).mean(dim=1).sum())
    return flows


def _other_flow_scores(sums: dict[str, dict[str, float]], clips: float) -> dict[str, float]:
    return {key: value for name, sum_ in sums.items()
            for key, value in ((f"{name}_warp_ratio", sum_["error"] / sum_["real"]),
                               (f"{name}_psnr", sum_["psnr"] / clips))}


def held_out(cfg, run: Path):
    """The run's trained video model, a loader of the held-out clips at the eval size (no augmentation,
    the eval's batch size) and their frame count."""
    import dataclasses

    from cluster.registry import load_video_model
    from dataio.loader import build_loader
    from dataio.manifest import read_manifest

    net = load_video_model(str(run), "cpu")  # before the loader, which the caller closes
    frames = cfg.eval.frames or read_manifest(cfg.data.shards).clip_frames
    data = dataclasses.replace(cfg.data, loader=dataclasses.replace(cfg.data.loader, batch_size=cfg.eval.batch_size))
    return net, build_loader(data, cfg.eval.height, cfg.eval.width, frames, split=cfg.eval.split, augment=False), frames


def footage_diagnostics(cfg, run: Path) -> dict:
    """Where there is no ground truth: the held-out clips' mean PSNR at each frame index, generated from labels
    alone at the eval size, and the same generator warping with the other flows (``OTHER_FLOWS``; the
    sequential generator only: the per-frame one warps nothing)."""
    import torch

    from models.generator import generate_clip
    from models.metrics import psnr

    net, loader, frames = held_out(cfg, run)
    total, clips = torch.zeros(frames, dtype=torch.float64), 0
    sums = {name: {"error": 0.0, "real": 0.0, "psnr": 0.0} for name in OTHER_FLOWS}
    try:
        for batch in loader:
            with torch.no_grad():
                total += psnr(generate_clip(net.generator, batch.labels).images, batch.rgb).sum(dim=0)
                if not net.generator.cfg.per_frame:
                    _warp_with_other_flows(net.generator, batch, sums)
            clips += batch.rgb.shape[0]
    finally:
        loader.close()
    return {"psnr_by_frame": (total / clips).tolist(),
            **(_other_flow_scores(sums, clips) if not net.generator.cfg.per_frame else {})}


def summarize(rows: list[dict], args: argparse.Namespace) -> dict:
    """Per variant: mean and spread over seeds, the mean learning curve and its second-half trend."""
    variants: dict[str, dict] = {}
    for name in dict.fromkeys(row["variant"] for row in rows):
        runs = [row for row in rows if row["variant"] == name]
        stats = {key: _spread([row[key] for row in runs]) for key in ("steps", "psnr", "ssim", "warp_ratio")}
        diag_keys = ("mask_disoccluded", "mask_visible", "mask_ratio", "l1_hallucinated", "l1_warped",
                     "l1_output", "flow_epe_visible", "zero_flow_epe_visible", "target_flow_warp_ratio",
                     "target_flow_psnr", "target_flow_epe_visible", "label_flow_warp_ratio", "label_flow_psnr",
                     "label_flow_epe_visible")
        stats.update({key: _spread([row["diagnostics"][key] for row in runs]) for key in diag_keys
                      if all(key in row["diagnostics"] for row in runs)})  # footage: no ground truth
        by_frame = [row["diagnostics"]["psnr_by_frame"] for row in runs]
        stats["psnr_by_frame"] = [statistics.fmean(values) for values in zip(*by_frame)]
        curve = _mean_curve([row["curve"] for row in runs])
        stats["curve"], stats["second_half_rise"] = curve, _rise([p["warp_ratio"] for p in curve],
                                                                 [p["train_s"] for p in curve])
        variants[name] = stats
    verdict = None
    if {"full", "per_frame"} <= variants.keys():
        full, single = variants["full"], variants["per_frame"]
        ratio = full["warp_ratio"]["mean"] / single["warp_ratio"]["mean"]
        gap = full["psnr"]["mean"] - single["psnr"]["mean"]
        rise = full["second_half_rise"]
        verdict = {"ratio_full_over_per_frame": ratio, "psnr_full_minus_per_frame": gap,
                   "full_curve_second_half_rise": rise,
                   "coherent": ratio <= args.ratio_goal, "fidelity": gap >= -args.psnr_tolerance,
                   "stable": rise is not None and rise <= RISE_TOLERANCE}
        verdict["holds"] = verdict["coherent"] and verdict["fidelity"] and verdict["stable"]
        # The claim is at equal wall-clock time; at equal steps (the per-frame model makes more of them
        # in the time): its curve where it had made as many as the full model did in all.
        verdict["per_frame_at_full_steps"] = {key: _at_step(single["curve"], full["steps"]["mean"], key)
                                              for key in ("psnr", "warp_ratio")}
    return {"variants": variants, "verdict": verdict}


RISE_TOLERANCE = 0.05
"""The ratio 'does not rise' over the curve's second half when its least-squares line climbs by at most
this fraction of its mean there (the seed-mean curve's points scatter by a few percent)."""


def _spread(values: list[float]) -> dict:
    values = [v for v in values if v is not None and v == v]
    if not values:
        return {"mean": float("nan"), "sd": float("nan"), "min": float("nan"), "max": float("nan"), "n": 0}
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "sd": sd, "min": min(values), "max": max(values), "n": len(values)}


def _mean_curve(curves: list[list[dict]]) -> list[dict]:
    """The seeds' curves point by point (as long as the shortest), averaged."""
    length = min((len(c) for c in curves), default=0)
    keys = ("step", "train_s", "psnr", "ssim", "warp_ratio")
    return [{key: statistics.fmean(c[i][key] for c in curves) for key in keys}
            for i in range(length)]


def _at_step(curve: list[dict], step: float, key: str) -> float | None:
    """``key`` of a curve at ``step``, linearly between its points; None outside them."""
    for before, after in zip(curve, curve[1:]):
        if before["step"] <= step <= after["step"]:
            share = (step - before["step"]) / max(after["step"] - before["step"], 1e-9)
            return before[key] + share * (after[key] - before[key])
    return None


def _rise(values: list[float], times: list[float]) -> float | None:
    """Climb of the least-squares line through the second half of a curve, relative to its mean."""
    half = [(t, v) for t, v in zip(times[len(times) // 2:], values[len(values) // 2:])]
    if len(half) < 2:
        return None
    t_mean = statistics.fmean(t for t, _ in half)
    v_mean = statistics.fmean(v for _, v in half)
    slope = sum((t - t_mean) * (v - v_mean) for t, v in half) / sum((t - t_mean) ** 2 for t, _ in half)
    return slope * (half[-1][0] - half[0][0]) / v_mean


def print_report(rows: list[dict], summary: dict, args: argparse.Namespace) -> None:
    print(f"\nequal wall-clock training: {args.budget_s:.0f} s per run; held-out clips scored from labels alone")
    print(f"{'run':<28} {'steps':>6} {'PSNR dB':>8} {'SSIM':>7} {'ratio':>7} {'m new':>6} {'m seen':>6} "
          f"{'L1 h':>6} {'L1 warp':>7} {'EPE':>5}")
    for row in rows:
        d = row["diagnostics"]
        truth = (f" {d['mask_disoccluded']:>6.3f} {d['mask_visible']:>6.3f} {d['l1_hallucinated']:>6.3f} "
                 f"{d['l1_warped']:>7.3f} {d['flow_epe_visible']:>5.2f}") if "mask_visible" in d else ""
        print(f"{row['variant'] + '-seed' + str(row['seed']):<28} {row['steps']:>6} {row['psnr']:>8.2f} "
              f"{row['ssim']:>7.4f} {row['warp_ratio']:>7.3f}{truth}")
    print("\nper variant, mean +- sd over seeds [min, max]")
    for name, v in summary["variants"].items():
        print(f"{name:<22} steps {v['steps']['mean']:>6.0f}  PSNR {_fmt(v['psnr'], 2)}  SSIM {_fmt(v['ssim'], 4)}  "
              f"ratio {_fmt(v['warp_ratio'], 3)}")
        if not name.startswith("per_frame") and "mask_visible" in v:  # synthetic data's ground truth
            print(f"{'':<22} mask new/seen {v['mask_disoccluded']['mean']:.3f}/{v['mask_visible']['mean']:.3f} "
                  f"({v['mask_ratio']['mean']:.1f}x)  L1 h {v['l1_hallucinated']['mean']:.4f}  "
                  f"L1 warped {v['l1_warped']['mean']:.4f}  L1 output {v['l1_output']['mean']:.4f}  "
                  f"flow EPE {v['flow_epe_visible']['mean']:.3f} px (zero flow {v['zero_flow_epe_visible']['mean']:.3f})")
        for flow, what in (("target_flow", "the target flow"), ("label_flow", "the label flow alone")):
            if not name.startswith("per_frame") and f"{flow}_warp_ratio" in v:
                epe = f", flow EPE {v[f'{flow}_epe_visible']['mean']:.3f} px" if f"{flow}_epe_visible" in v else ""
                print(f"{'':<22} warping with {what} instead: ratio {_fmt(v[f'{flow}_warp_ratio'], 3)}, "
                      f"PSNR {v[f'{flow}_psnr']['mean']:.2f}{epe}")
        print(f"{'':<22} PSNR by frame: " + " ".join(f"{p:.2f}" for p in v["psnr_by_frame"]))
    print("\nlearning curves (seed means): PSNR / warping-error ratio at seconds of training")
    for name, v in summary["variants"].items():
        points = "  ".join(f"{p['train_s']:.0f}s {p['psnr']:.2f}/{p['warp_ratio']:.2f}" for p in v["curve"])
        rise = v["second_half_rise"]
        print(f"{name:<22} {points}  (second half: {'n/a' if rise is None else f'{rise:+.1%}'})")
    verdict = summary["verdict"]
    if verdict:
        print(f"\nwarping-error ratio full/per_frame: {verdict['ratio_full_over_per_frame']:.2f} "
              f"(goal <= {args.ratio_goal}); PSNR full - per_frame: {verdict['psnr_full_minus_per_frame']:+.2f} dB "
              f"(goal >= -{args.psnr_tolerance}); full's ratio over the second half of its curve: "
              f"{'n/a' if verdict['full_curve_second_half_rise'] is None else format(verdict['full_curve_second_half_rise'], '+.1%')} "
              f"(goal <= +{RISE_TOLERANCE:.0%})")
        same = verdict["per_frame_at_full_steps"]
        if same["psnr"] is not None:
            print(f"at equal steps instead: the per-frame model's curve at the full model's "
                  f"{summary['variants']['full']['steps']['mean']:.0f} steps reads PSNR {same['psnr']:.2f} dB, "
                  f"warping-error ratio {same['warp_ratio']:.3f}")
        print(f"claim (more temporally coherent at equal per-frame quality, not degrading): "
              f"{'HOLDS' if verdict['holds'] else 'DOES NOT HOLD'} here (coherence "
              f"{'yes' if verdict['coherent'] else 'no'}, PSNR {'yes' if verdict['fidelity'] else 'no'}, "
              f"stable {'yes' if verdict['stable'] else 'no'})")


def _fmt(stat: dict, digits: int) -> str:
    return (f"{stat['mean']:.{digits}f} +- {stat['sd']:.{digits}f} "
            f"[{stat['min']:.{digits}f}, {stat['max']:.{digits}f}]")


if __name__ == "__main__":
    main()
