"""Training throughput of this tree against other commits, in one invocation: each tree trains the
quality benchmark's config (its own ``configs/quality.yaml``; the data under ``--out``, made once and
reused, as ``benchmarks/quality.py`` makes it) for the same wall-clock budget (``python -m trainer``, one
run at a time on every core), the trees interleaved round by round, so that a slower hour on a shared
machine slows each of them alike. Prints every run's steps and this tree's mean against each commit's.

    .venv/bin/python benchmarks/train_throughput.py --against e89d8f7 [--budget-s 90] [--rounds 2] \\
        [--out bench/quality] [key=value ...]

Extra ``key=value`` overrides go to every run (the per-frame ablation: ``model.generator.per_frame=true
model.discriminator.temporal_scales=0``). A budget's steps include the run's start (the first steps'
lazy work, the schedule's first stage), so read the ratio, not steps per second.
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", action="append", default=[], metavar="REV", required=True,
                        help="a commit to measure this tree against (repeatable)")
    parser.add_argument("--budget-s", type=float, default=90.0, help="training wall-clock seconds per run")
    parser.add_argument("--rounds", type=int, default=2, help="runs per tree, the trees taking turns")
    parser.add_argument("--out", default="bench/quality", help="the quality benchmark's data (made if missing)")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    return parser.parse_args()


def train(tree: Path, run: Path, args: argparse.Namespace) -> int:
    """Steps one run of ``tree``'s trainer takes in the budget."""
    cmd = [sys.executable, "-m", "trainer", "--config", str(tree / "configs" / "quality.yaml"),
           f"checkpoint.dir={run}", "checkpoint.resume=false", f"train.time_budget_s={args.budget_s}",
           "train.seed=0", *args.overrides]
    env = dict(os.environ, PYTHONPATH=str(tree), PYTHONWARNINGS="ignore::FutureWarning")
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    found = re.search(r"done: epochs=\d+ steps=(\d+)", done.stdout + done.stderr)
    if done.returncode or not found:
        sys.stderr.write((done.stdout + done.stderr)[-4000:])
        raise SystemExit(f"training {tree} failed (exit {done.returncode})")
    return int(found.group(1))


def main() -> None:
    args = parse()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.chdir(out)  # the config's paths are relative to the data folder
    from commits import export
    from quality import prepare_data

    prepare_data(str(REPO / "configs" / "quality.yaml"), args.overrides)
    with tempfile.TemporaryDirectory(prefix="throughput-") as scratch:
        trees = {"this tree": REPO}
        for rev in args.against:
            trees[rev] = export(rev, Path(scratch, "trees", rev))
        print(f"{len(trees)} trees, {args.rounds} round(s) of {args.budget_s:.0f} s each, "
              f"{os.cpu_count()} cores", flush=True)
        steps: dict[str, list[int]] = {name: [] for name in trees}
        for round_ in range(1, args.rounds + 1):
            for name, tree in trees.items():
                steps[name].append(train(tree, Path(scratch, "runs", f"{round_}-{len(steps[name])}-{tree.name}"), args))
                print(f"round {round_}, {name}: {steps[name][-1]} steps", flush=True)
    mine = statistics.mean(steps["this tree"])
    for rev in args.against:
        print(f"this tree: {mine:.0f} steps (runs {steps['this tree']}) against {rev}: "
              f"{statistics.mean(steps[rev]):.0f} (runs {steps[rev]}): {mine / statistics.mean(steps[rev]):.2f}x "
              f"the steps in {args.budget_s:.0f} s")


if __name__ == "__main__":
    main()
