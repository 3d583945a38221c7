"""benchmarks/quality.py as documented, on a small data set: two variants trained side by side (two real
trainer processes), scored with `vid2vid eval`'s code and the synthetic ground truth, learning curves
from the trainer's held-out scores, the table and the verdict; a second invocation reuses the runs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
# 4 sequences of 16 frames: 3 train (6 clips), 1 val (2 clips of 8 frames); a few seconds per run.
SMALL = ["data.synth.sequences=4", "data.synth.frames=16", "data.pack.val_fraction=0.25"]


def benchmark(out: Path, *extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONWARNINGS="ignore::FutureWarning", MLFLOW_DISABLE_TELEMETRY="true",
               TORCH_EXTENSIONS_DIR=os.environ.get("TORCH_EXTENSIONS_DIR",
                                                   str(Path.home() / ".cache" / "torch_extensions_vid2vid")))
    cmd = [sys.executable, str(REPO / "benchmarks" / "quality.py"), "--budget-s", "6", "--curve-every-s", "2",
           "--seeds", "0", "--variants", "full,per_frame", "--jobs", "2", "--out", str(out), *extra, *SMALL]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=500)


def test_quality_benchmark_trains_scores_and_reports(tmp_path: Path) -> None:
    out = tmp_path / "quality"
    proc = benchmark(out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    assert "2 runs of 6 s, 2 at a time with 1 thread(s) each" in proc.stdout
    assert "per variant, mean +- sd over seeds" in proc.stdout and "learning curves (seed means)" in proc.stdout
    assert "claim (more temporally coherent at equal per-frame quality, not degrading):" in proc.stdout
    report = json.loads((out / "quality.json").read_text())
    rows = {row["variant"]: row for row in report["rows"]}
    assert rows.keys() == {"full", "per_frame"}
    for row in rows.values():
        assert row["steps"] > 0 and 0 < row["psnr"] < 100 and row["warp_ratio"] > 0
        assert row["curve"] and all(point["train_s"] > 0 for point in row["curve"])
        diagnostics = row["diagnostics"]
        assert len(diagnostics["psnr_by_frame"]) == 8 and 0 < diagnostics["disoccluded_share"] < 0.2
    # The sequential model has a mask and a flow to look at; the per-frame one hallucinates everywhere.
    assert 0 <= rows["full"]["diagnostics"]["mask_visible"] <= 1
    assert rows["per_frame"]["diagnostics"]["mask_visible"] == 1.0
    # Each flow the same generator can warp with, against the exact one: the target (DIS on the real
    # frames) knows the motion far better than no motion does; the label maps' flow is reported too.
    full = rows["full"]["diagnostics"]
    assert full["target_flow_epe_visible"] < 0.5 * full["zero_flow_epe_visible"]
    assert full["label_flow_epe_visible"] > 0 and full["label_flow_warp_ratio"] > 0
    assert "warping with the label flow alone instead" in proc.stdout
    verdict = report["verdict"]
    assert set(verdict) >= {"ratio_full_over_per_frame", "psnr_full_minus_per_frame", "holds",
                            "per_frame_at_full_steps"}
    assert verdict["ratio_full_over_per_frame"] == rows["full"]["warp_ratio"] / rows["per_frame"]["warp_ratio"]
    # Run again: the finished runs are reused, not trained again.
    again = benchmark(out)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "full-seed0: reused" in again.stdout and "per_frame-seed0: reused" in again.stdout


def test_a_run_is_reused_only_for_the_config_it_trained(tmp_path: Path) -> None:
    """The digest covers the resolved config, defaults included: what a changed default changes."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("quality", REPO / "benchmarks" / "quality.py")
    quality = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(quality)
    config = str(REPO / "configs" / "quality.yaml")
    digest = quality.config_digest(config, ["train.seed=0"])
    assert digest == quality.config_digest(config, ["train.seed=0"])
    assert digest != quality.config_digest(config, ["train.seed=0", "model.loss.mask_criterion=l1"])
    assert digest != quality.config_digest(config, ["train.seed=1"])


def test_the_benchmark_runs_on_footage_paired_with_its_edges(tmp_path: Path, test_videos: Path) -> None:
    """Real video instead of synthetic scenes: edge_pairs.py writes the pack source, quality.py packs it
    (label_kind=rgb), trains both variants and scores them; no ground truth, so PSNR by frame only."""
    out = tmp_path / "quality-edges"
    footage = ["data.pack.source=edges", "data.pack.label_kind=rgb"]
    missing = benchmark(out, *footage)
    assert missing.returncode != 0
    assert "data.pack.source=edges: no such folder" in missing.stderr and "edge_pairs.py" in missing.stderr
    made = subprocess.run([sys.executable, str(REPO / "benchmarks" / "edge_pairs.py"),
                           str(test_videos / "bbb_180_10s_vp9.webm"), "--out", str(out / "edges"), "--frames", "16",
                           "--size", "64", "128", "--max-sequences", "8"], capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr[-3000:]
    # Sequences 6 and 7 fall in the held-out split (a hash of the name), the rest train.
    assert "bbb_180_10s_vp9.webm: 8 sequence(s) of 16 frames at 64x128" in made.stdout
    labels = sorted((out / "edges" / "bbb_180_10s_vp9_003" / "labels").glob("*.png"))
    assert len(labels) == 16
    edges = np.asarray(Image.open(labels[0]))
    assert edges.shape == (64, 128, 3) and set(np.unique(edges)) == {0, 255} and 0.01 < (edges > 0).mean() < 0.5
    proc = benchmark(out, *footage)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    assert "claim (more temporally coherent at equal per-frame quality, not degrading):" in proc.stdout
    assert "mask new/seen" not in proc.stdout  # the synthetic ground truth's diagnostics
    report = json.loads((out / "quality.json").read_text())
    rows = {row["variant"]: row for row in report["rows"]}
    for row in rows.values():
        assert row["steps"] > 0 and 0 < row["psnr"] < 100 and row["warp_ratio"] > 0
        assert len(row["diagnostics"]["psnr_by_frame"]) == 8
    # No truth to measure a flow against; the sequential generator warping with the other flows is scored.
    assert rows["per_frame"]["diagnostics"].keys() == {"psnr_by_frame"}
    assert rows["full"]["diagnostics"].keys() == {"psnr_by_frame", "target_flow_warp_ratio", "target_flow_psnr",
                                                  "label_flow_warp_ratio", "label_flow_psnr"}
    assert "warping with the target flow instead: ratio" in proc.stdout
    # Scoring again, e.g. for diagnostics added since: the runs are not trained again and keep their curves.
    rescored = benchmark(out, "--rescore", *footage)
    assert rescored.returncode == 0, rescored.stderr[-3000:]
    assert "full-seed0: rescored" in rescored.stdout and "per_frame-seed0: rescored" in rescored.stdout
    again = {row["variant"]: row for row in json.loads((out / "quality.json").read_text())["rows"]}
    assert again["full"]["steps"] == rows["full"]["steps"] and again["full"]["curve"] == rows["full"]["curve"]
    assert again["full"]["diagnostics"] == rows["full"]["diagnostics"]  # the same model scored the same way
    # It never trains: a run of other settings (another seed here) is refused, not trained over.
    refused = benchmark(out, "--rescore", "--seeds", "1", *footage)
    assert refused.returncode != 0 and "--rescore scores finished runs, and this one has not finished" in refused.stderr
    assert not (out / "runs" / "full-seed1").exists()
