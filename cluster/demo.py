"""`make demo`: the whole system on one machine, start to finish.

    synthetic paired videos -> shards -> training through an embedded Ray (2 workers, ZeRO-2, the
    progressive schedule) -> the generator registered as `champion` -> a video generated from
    held-out label maps by the registered model -> the model scored on the held-out clips
    (`vid2vid eval`) -> where everything is

Re-running it resumes the same run (``cluster.name``) rather than training again: delete ``runs/``
and ``checkpoints/`` for a fresh one.
"""
from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path

from cluster.config import RootConfig
from cluster.evaluate import run_eval
from cluster.generate import generate
from cluster.launch import train
from cluster.registry import publish
from dataio.manifest import read_manifest
from dataio.pack import pack
from dataio.synth import generate as synthesize

OUT = Path("out") / "demo.mp4"
REPORT = Path("out") / "eval" / "report.json"
MODEL_NAME = "vid2vid"
ALIAS = "champion"


def run_demo(cfg: RootConfig) -> int:
    started = time.monotonic()
    step = _Steps(6)
    step("synthetic paired videos", cfg.data.synth.out)
    sequences = synthesize(cfg.data.synth)
    step.done(f"{len(sequences)} sequences of {cfg.data.synth.frames} frames at "
              f"{cfg.data.synth.width}x{cfg.data.synth.height}")

    step("packing into WebDataset shards", cfg.data.shards)
    step.done(pack(cfg.data, progress=False).summary().replace("\n", "\n      "))

    schedule = cfg.train.schedule
    step("training through Ray Train",
         f"{cfg.cluster.num_workers} workers, ZeRO-{cfg.train.generator.zero_stage}, {cfg.train.epochs} epochs: "
         f"{cfg.model.generator.num_scales} spatial scales up to {cfg.train.width}x{cfg.train.height}, "
         f"clips of {schedule.start_frames} -> {schedule.max_frames} frames")
    result = train(cfg)
    step.done(f"epoch {result.metrics.get('epoch')}, step {result.metrics.get('step')}, "
              f"MLflow run {result.run_id}")

    step("publishing the generator", f"models:/{MODEL_NAME}@{ALIAS}")
    published = publish(cfg.tracking.uri, MODEL_NAME, ALIAS, run_id=result.run_id,
                        experiment=cfg.tracking.experiment)
    step.done(f"version {published.version}")

    labels = _held_out_labels(cfg)
    step("generating a video with the registered model", f"labels {labels}")
    video = generate(published.uri, labels, OUT, side_by_side=True, size=(cfg.train.height, cfg.train.width),
                     progress=False)
    step.done(f"{video} (labels | generated)")

    step("scoring the registered model on the held-out clips", f"{cfg.data.shards} [{cfg.eval.split}]")
    scored = run_eval(cfg, published.uri, REPORT, run_id=result.run_id, tracking_uri=cfg.tracking.uri, progress=False)
    step.done(scored.summary.splitlines()[0])

    tracking = cfg.tracking.uri
    print(f"\ndone in {time.monotonic() - started:.0f}s. Where everything is:")
    print(f"  output video        {video.resolve()}")
    print(f"  evaluation          {scored.report_path.resolve()} and {scored.video_path.name} (worst | best clip); "
          f"metrics eval/* in the training run")
    print(f"  registered model    models:/{MODEL_NAME}@{ALIAS} (version {published.version}); "
          f"vid2vid model fetch models:/{MODEL_NAME}@{ALIAS} --dest fetched/")
    print(f"  training run        {result.run_id} in experiment '{cfg.tracking.experiment}' ({tracking})")
    print(f"  Ray checkpoints     {result.checkpoint}")
    print(f"  logs                {result.checkpoint_dir / 'logs'} (Ray, DeepSpeed and every worker)")
    print(f"  exported generator  {result.export}")
    print(f"  shards              {cfg.data.shards}")
    print(f"  MLflow UI           {_ui_command(tracking)}   then open http://127.0.0.1:5000")
    return 0


def _held_out_labels(cfg: RootConfig) -> Path:
    """Label maps of a sequence the model did not train on (the `val` split), else the first one."""
    rows = read_manifest(cfg.data.shards).rows
    val = sorted({row.sequence for row in rows if row.split == "val"})
    names = val or sorted({row.sequence for row in rows})
    return Path(cfg.data.pack.source) / names[0]


def _ui_command(tracking_uri: str) -> str:
    mlflow = Path(sys.executable).with_name("mlflow")
    if tracking_uri.startswith(("http://", "https://")):
        return f"(the tracking server) {tracking_uri}"
    return f"{mlflow} ui --backend-store-uri {shlex.quote(tracking_uri)} --host 127.0.0.1 --port 5000"


class _Steps:
    """Numbered progress lines with the time each step took."""

    def __init__(self, total: int) -> None:
        self.total, self.index, self.started = total, 0, time.monotonic()

    def __call__(self, what: str, detail: str) -> None:
        self.index += 1
        self.started = time.monotonic()
        print(f"[{self.index}/{self.total}] {what}: {detail}", flush=True)

    def done(self, summary: str) -> None:
        print(f"      {summary} ({time.monotonic() - self.started:.0f}s)", flush=True)
