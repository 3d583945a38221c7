"""`vid2vid eval` on real shards with a really trained generator, as a user runs it.

One training launch (`python -m trainer`, one process, tiny config) with a wall-clock budget far below
its epochs: it must stop on time, checkpoint and export. Then:
  - the real clips scored as if generated (an oracle) give PSNR at the cap and a warping-error ratio
    of exactly 1, and the packed flow explains them better than half, zero or reversed flow;
  - `vid2vid eval --model CHECKPOINT` writes a report over every held-out clip and the worst/best video;
    the same shards on a real S3 endpoint (moto) give the same scores;
  - published to a real `mlflow server`, `vid2vid eval --model models:/...@champion --run RUN` with
    small random TorchScript feature networks reports FID and FVD and logs metrics and files to the run;
  - bad input (unknown run, too many frames, wrong model path, a feature net that is not TorchScript)
    is refused with a message naming it.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from live_servers import start_mlflow_server, stop_group

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "tiny_train.yaml"
BIN = Path(sys.executable).parent
EPOCHS = 1000


def env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), MLFLOW_DISABLE_TELEMETRY="true",
                TORCH_EXTENSIONS_DIR=os.environ.get("TORCH_EXTENSIONS_DIR",
                                                    str(Path.home() / ".cache" / "torch_extensions_vid2vid")))


def cli(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "vid2vid"), *args], cwd=cwd, env=env(), capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Shards with a val split, and a checkpoint trained on them within a 6 s budget."""
    root = tmp_path_factory.mktemp("eval")
    from dataio import pack, synth
    from dataio.manifest import read_manifest
    from trainer.config import load
    data = [f"data.shards={root}/shards", f"data.synth.out={root}/synth", f"data.pack.source={root}/synth",
            "data.synth.sequences=6", "data.pack.val_fraction=0.5"]
    cfg = load(CONFIG, data)
    synth.generate(cfg.data.synth)
    pack.pack(cfg.data, progress=False)
    val = read_manifest(f"{root}/shards").samples("val")
    assert val >= 2, "the fixture needs held-out clips"
    proc = subprocess.run(
        [sys.executable, "-m", "trainer", "--config", str(CONFIG), *data, f"train.epochs={EPOCHS}",
         "train.decay_epochs=0", "train.time_budget_s=6", f"checkpoint.dir={root}/ckpt", "tracking.enabled=false"],
        cwd=root, env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return {"root": root, "shards": root / "shards", "ckpt": root / "ckpt", "val": val, "stdout": proc.stdout}


def test_training_stops_at_its_time_budget(trained: dict) -> None:
    done = [line for line in trained["stdout"].splitlines() if line.startswith("done:")]
    assert done, trained["stdout"][-2000:]
    fields = dict(part.split("=", 1) for part in done[0][len("done: "):].split())
    assert int(fields["epochs"]) < EPOCHS and int(fields["steps"]) >= 1  # stopped by the budget, not the epochs
    assert Path(fields["export"]).is_file() and (trained["ckpt"] / "export" / "generator.pt").is_file()
    from trainer.checkpoint import latest_checkpoint, load_trainer_state
    state = load_trainer_state(latest_checkpoint(trained["ckpt"]))
    assert state["progress"]["step"] == int(fields["steps"])


def test_real_clips_scored_as_generated_are_perfect(trained: dict) -> None:
    """An oracle that returns the real frames: PSNR at the cap, SSIM 1, warping-error ratio exactly 1;
    and the packed flow explains the real clips better than half of it, no motion or the opposite
    motion, so frames, flow direction and confidence reach the metric aligned."""
    from dataio.loader import build_loader
    from models.metrics import PSNR_CAP_DB, warping_error
    from trainer.config import load
    from trainer.evaluate import evaluate

    cfg = load(CONFIG, [f"data.shards={trained['shards']}"])
    loader = build_loader(cfg.data, 32, 64, 4, split="val")
    seen = []

    def oracle(labels: torch.Tensor) -> torch.Tensor:
        return seen[-1].rgb

    def batches():
        for batch in loader:
            seen.append(batch)
            yield batch

    report = evaluate(oracle, batches()).report
    assert len(report.clips) == trained["val"]
    assert report.psnr == PSNR_CAP_DB and abs(report.ssim - 1) < 1e-5
    assert report.warp_error_real > 0 and report.warp_ratio == 1.0
    assert report.fid is None and "no feature network" in report.skipped_metrics["fid"]

    def pooled(flow_of) -> float:
        errors = [warping_error(b.rgb, flow_of(b.flow), b.flow_conf) for b in seen]
        return float(sum((e.error * e.weight).sum() for e in errors) / sum(e.weight.sum() for e in errors))

    assert pooled(lambda f: f) == pytest.approx(report.warp_error_real, rel=1e-6)
    # The error grows as the flow moves away from the packed one: half of it, none, the reverse
    # (measured on these 32x64 clips: 1.11x, 1.32x, 1.47x the packed flow's error).
    errors = [report.warp_error_real, pooled(lambda f: f / 2), pooled(torch.zeros_like), pooled(torch.neg)]
    assert all(b > 1.05 * a for a, b in zip(errors, errors[1:])), errors


def test_eval_a_checkpoint(trained: dict, tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    proc = cli("eval", "--model", str(trained["ckpt"]), f"data.shards={trained['shards']}", "--out", str(out),
               cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(out.read_text())
    assert len(report["clips"]) == trained["val"] and report["info"]["split"] == "val"
    assert report["info"]["frames"] == 4 and (report["info"]["height"], report["info"]["width"]) == (32, 64)
    psnrs = [c["psnr"] for c in report["clips"]]
    assert 0 < min(psnrs) and abs(report["psnr"] - np.mean(psnrs)) < 1e-9
    assert report["warp_error"] > 0 and report["warp_ratio"] == pytest.approx(
        report["warp_error"] / report["warp_error_real"])
    assert report["worst"] == min(report["clips"], key=lambda c: c["psnr"])["key"]
    assert report["fid"] is None and "eval.inception" in report["skipped_metrics"]["fid"]
    assert "FID: skipped" in proc.stdout
    import av
    with av.open(str(out.with_suffix(".mp4"))) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 4 and frames[0].shape == (2 * 32 + 4, 3 * 64, 3)  # worst over best, labels|fake|real


def test_eval_reads_shards_from_s3(trained: dict, tmp_path: Path, s3_bucket: str) -> None:
    """The same clips from a real S3 endpoint (moto server, through s3fs) score exactly the same; from S3
    as the README's second command has it: a checkpoint, --run, the feature networks."""
    from mlflow.tracking import MlflowClient

    from dataio.storage import s3_filesystem
    s3_filesystem().put(str(trained["shards"]) + "/", f"{s3_bucket}/shards/", recursive=True)
    torch.manual_seed(0)
    torch.jit.save(torch.jit.script(_ImageFeatures()), tmp_path / "inception.pt")
    torch.jit.save(torch.jit.script(_ClipFeatures()), tmp_path / "i3d.pt")
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=tracking)
    run_id = client.create_run(client.create_experiment("evals")).info.run_id
    as_the_readme = ["--run", run_id, "--tracking-uri", tracking, f"eval.inception={tmp_path / 'inception.pt'}",
                     f"eval.i3d={tmp_path / 'i3d.pt'}"]
    reports = {}
    for name, data, extra in (("local", str(trained["shards"]), []),
                              ("s3", f"s3://{s3_bucket}/shards", as_the_readme)):
        proc = cli("eval", "--model", str(trained["ckpt"]), f"data.shards={data}", "--out", str(tmp_path / f"{name}.json"),
                   "eval.max_clips=2", "eval.frames=3", *extra, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-4000:]
        reports[name] = json.loads((tmp_path / f"{name}.json").read_text())
    assert reports["s3"]["info"]["data"] == f"s3://{s3_bucket}/shards" and len(reports["s3"]["clips"]) == 2
    assert reports["s3"]["clips"] == reports["local"]["clips"]
    logged = client.get_run(run_id).data.metrics
    assert logged["eval/psnr"] == pytest.approx(reports["s3"]["psnr"]) and logged["eval/fvd"] > 0


class _ImageFeatures(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean(dim=(2, 3))


class _ClipFeatures(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(3, 5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.permute(0, 2, 1, 3, 4)).mean(dim=(2, 3, 4))


def test_eval_a_registered_model_logs_to_its_run(trained: dict, tmp_path: Path) -> None:
    torch.manual_seed(0)
    torch.jit.save(torch.jit.script(_ImageFeatures()), tmp_path / "inception.pt")
    torch.jit.save(torch.jit.script(_ClipFeatures()), tmp_path / "i3d.pt")
    (tmp_path / "mlflow").mkdir()
    proc, url = start_mlflow_server(tmp_path / "mlflow", env())
    try:
        published = cli("model", "publish", "--checkpoint", str(trained["ckpt"]), "--name", "tiny-eval",
                        "--tracking-uri", url, cwd=tmp_path)
        assert published.returncode == 0, published.stderr[-4000:]
        from mlflow.tracking import MlflowClient
        client = MlflowClient(tracking_uri=url)
        run_id = client.create_run(client.create_experiment("evals")).info.run_id

        unknown = cli("eval", "--model", "models:/tiny-eval@champion", f"data.shards={trained['shards']}",
                      "--run", "0" * 32, "--tracking-uri", url, cwd=tmp_path)
        assert unknown.returncode == 1 and f"--run {'0' * 32}: no such run" in unknown.stderr

        out = tmp_path / "eval" / "report.json"
        done = cli("eval", "--model", "models:/tiny-eval@champion", f"data.shards={trained['shards']}",
                   "eval.frames=3", "--run", run_id, "--tracking-uri", url, "--out", str(out),
                   f"eval.inception={tmp_path / 'inception.pt'}", f"eval.i3d={tmp_path / 'i3d.pt'}", cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-4000:]
        report = json.loads(out.read_text())
        assert report["info"]["frames"] == 3 and report["skipped_metrics"] == {}
        assert report["fid"] > 0 and report["fvd"] > 0
        run = client.get_run(run_id)
        for key in ("psnr", "ssim", "warp_error", "warp_error_real", "warp_ratio", "fid", "fvd"):
            assert run.data.metrics[f"eval/{key}"] == pytest.approx(report[key])
        assert run.data.tags["eval.split"] == "val" and run.data.tags["eval.frames"] == "3"
        assert sorted(a.path for a in client.list_artifacts(run_id, "eval")) == ["eval/report.json", "eval/report.mp4"]
    finally:
        stop_group(proc)


def test_bad_input_is_named(trained: dict, tmp_path: Path) -> None:
    missing = cli("eval", "--model", str(tmp_path / "nope"), f"data.shards={trained['shards']}", cwd=tmp_path)
    assert missing.returncode == 1 and f"{tmp_path / 'nope'}: no such file or folder" in missing.stderr
    empty = cli("eval", "--model", str(trained["ckpt"]), f"data.shards={trained['shards']}", "eval.frames=9",
                cwd=tmp_path)
    assert empty.returncode == 1 and "eval.frames=9" in empty.stderr
    bad = cli("eval", "--model", str(trained["ckpt"]), f"data.shards={trained['shards']}", "eval.width=30",
              cwd=tmp_path)
    assert bad.returncode == 2 and "eval" in bad.stderr and "together" in bad.stderr
    (tmp_path / "weights.pt").write_bytes(b"not a network")
    net = cli("eval", "--model", str(trained["ckpt"]), f"data.shards={trained['shards']}",
              f"eval.inception={tmp_path / 'weights.pt'}", cwd=tmp_path)
    assert net.returncode == 1 and f"eval.inception={tmp_path / 'weights.pt'}" in net.stderr
    assert "TorchScript" in net.stderr and "Traceback" not in net.stderr


def test_eval_the_train_split(trained: dict, tmp_path: Path) -> None:
    """`vid2vid eval ... eval.split=train`, as the README shows it."""
    from dataio.manifest import read_manifest
    out = tmp_path / "train.json"
    proc = cli("eval", "--model", str(trained["ckpt"]), f"data.shards={trained['shards']}", "eval.split=train",
               "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(out.read_text())
    assert report["info"]["split"] == "train"
    assert len(report["clips"]) == read_manifest(str(trained["shards"])).samples("train")


def test_generate_from_a_checkpoint_a_label_video_and_a_shard(trained: dict, tmp_path: Path) -> None:
    """`vid2vid generate --model CHECKPOINT --labels ...` with each kind of label input the README names,
    and the same frames from the sequence folder as the model gives the packed clip."""
    import av
    from PIL import Image

    from dataio.video import decode, encode_lossless

    sequence = trained["root"] / "synth" / "seq_0000"
    labels = np.stack([np.asarray(Image.open(p)) for p in sorted((sequence / "labels").glob("*.png"))])
    (tmp_path / "labels.webm").write_bytes(encode_lossless(labels))
    shard = sorted(trained["shards"].glob("*.tar"))[0]
    outputs = {}
    for name, source, extra in (("folder", sequence, ["--side-by-side"]), ("video", tmp_path / "labels.webm", []),
                                ("shard", shard, [])):
        out = tmp_path / f"{name}.mp4"
        proc = cli("generate", "--model", str(trained["ckpt"]), "--labels", str(source), "--out", str(out),
                   *extra, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-4000:]
        with av.open(str(out)) as container:
            outputs[name] = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    # tiny_train: sequences of 8 frames at 32x64; a shard sample is one clip of 4 frames.
    assert len(outputs["folder"]) == 8 and outputs["folder"][0].shape == (32, 128, 3)  # labels | generated
    assert len(outputs["video"]) == 8 and outputs["video"][0].shape == (32, 64, 3)
    assert len(outputs["shard"]) == 4 and outputs["shard"][0].shape == (32, 64, 3)
    # The label video holds the folder's maps, but not its instance edges: a different input, same size.
    assert decode(tmp_path / "labels.webm").shape == (8, 32, 64, 3)
