"""`vid2vid eval`: score a trained generator on every clip of a shard set's split.

The model is a registry URI (``models:/vid2vid@champion``, any MLflow model URI) or a local checkpoint
(an exported ``generator.pt`` with its checkpoint folder, a run's checkpoint folder, or one ``step-*``
folder). Clips are read by the data layer without augmentation (full frames from frame 0), generated
from their labels alone and scored by ``trainer.evaluate``. Writes a JSON report and a side-by-side
video (worst clip on top, best below: labels | generated | real), and logs both, with the metrics,
to an MLflow run when one is given.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from mlflow.entities import Metric, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from tqdm import tqdm

from cluster.registry import load_video_model
from cluster.video_model import VideoGenerator, pick_device
from dataio.config import DataConfig
from dataio.errors import UserInputError
from dataio.loader import build_loader
from dataio.manifest import read_manifest
from models.frechet import FeatureNet, load_feature_net
from models.metrics import SSIM_WINDOW
from trainer.config import Config
from trainer.evaluate import NoClipsError, Report, evaluate, side_by_side_video
from trainer.tracking import redact

log = logging.getLogger(__name__)


class EvalInputError(UserInputError, ValueError):
    """Data or model that cannot be evaluated together; the message names the path or field."""


@dataclass
class EvalResult:
    report_path: Path
    video_path: Path
    summary: str
    run_id: str | None


def run_eval(cfg: Config, model: str, out: str | Path, *, video: str | Path | None = None,
             run_id: str | None = None, tracking_uri: str = "", progress: bool = True) -> EvalResult:
    """Evaluate ``model`` on ``cfg.data.shards`` as ``cfg.eval`` says; write ``out`` and the video."""
    ecfg = cfg.eval
    device = pick_device(ecfg.device)
    client = _mlflow_client(tracking_uri, run_id) if run_id else None  # a wrong run fails before the work
    net = load_video_model(model, device)
    data, height, width, frames, clips = _data_for(cfg, net)
    nets, skipped = _feature_nets(cfg, device)

    def synthesize(labels: torch.Tensor) -> torch.Tensor:
        return torch.stack(list(net.images(labels)), dim=1).float()  # the path `generate` serves

    loader = build_loader(data, height, width, frames, split=ecfg.split, augment=False)
    total = min(clips, ecfg.max_clips) if ecfg.max_clips else clips
    try:
        with tqdm(total=total, unit="clip", desc="eval", disable=not progress) as bar:
            evaluation = evaluate(synthesize, loader, inception=nets["fid"], i3d=nets["fvd"], skipped=skipped,
                                  max_clips=ecfg.max_clips, on_clip=lambda _: bar.update())
    except NoClipsError:
        reasons = "; ".join(f"{s.shard}:{s.key}: {s.reason}" for s in loader.stats.skips[:5])
        raise EvalInputError(f"{data.shards} [{ecfg.split}]: no clip could be scored, {loader.stats.skipped} "
                             f"skipped" + (f" ({reasons})" if reasons else "")) from None
    finally:
        loader.close()
    report = evaluation.report
    if report.info["non_finite_clips"]:
        log.warning("%d of %d clips have non-finite generated frames", report.info["non_finite_clips"], len(report.clips))
    report.info = {"model": redact("model", model), "data": redact("data", data.shards), "split": ecfg.split,
                   "height": height, "width": width, "frames": frames, "clips": len(report.clips), "device": device,
                   "skipped_samples": loader.stats.skipped,
                   "skipped_sample_list": [f"{s.shard}:{s.key}: {s.reason}" for s in loader.stats.skips],
                   **report.info}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report.to_json(), indent=2) + "\n")
    video_path = side_by_side_video(evaluation, Path(video) if video else out.with_suffix(".mp4"))
    if client is not None:
        _log_to_run(client, run_id, report, out, video_path)
    return EvalResult(out, video_path, report.summary(), run_id)


def _data_for(cfg: Config, net: VideoGenerator) -> tuple[DataConfig, int, int, int, int]:
    """The data section for this model and shard set; the height, width, clip length and clip count."""
    ecfg, data = cfg.eval, cfg.data
    manifest = read_manifest(data.shards)
    rows = [r for r in manifest.rows if r.split == ecfg.split]
    if not rows:
        other = "train" if ecfg.split == "val" else "val"
        raise EvalInputError(f"{data.shards}: no '{ecfg.split}' clips in manifest.parquet "
                             f"(eval.split={other} evaluates the {other} split)")
    if manifest.label_kind != net.label_kind:
        raise EvalInputError(f"{data.shards}: label_kind {manifest.label_kind!r}, the model takes {net.label_kind!r}")
    if net.label_kind == "classes" and manifest.num_classes > net.num_classes:
        raise EvalInputError(f"{data.shards}: packed with {manifest.num_classes} classes, the model knows "
                             f"{net.num_classes}")
    if manifest.has_edges != net.labels.has_edges:
        raise EvalInputError(f"{data.shards}: the shards {'have' if manifest.has_edges else 'have no'} instance "
                             f"edges, the model was trained {'without' if manifest.has_edges else 'with'} them")
    frames = ecfg.frames or manifest.clip_frames
    if frames > manifest.clip_frames:
        raise EvalInputError(f"eval.frames={frames}: the clips in {data.shards} have {manifest.clip_frames}")
    step = net.divisor
    height, width = (ecfg.height, ecfg.width) if ecfg.height else (rows[0].height // step * step,
                                                                   rows[0].width // step * step)
    if height % step or width % step or height < step or width < step:
        raise EvalInputError(f"eval size {height}x{width}: the model needs positive multiples of {step}")
    if min(height, width) < SSIM_WINDOW:
        raise EvalInputError(f"eval size {height}x{width}: SSIM needs at least {SSIM_WINDOW} px on each side")
    if frames < 2:
        raise EvalInputError(f"{data.shards}: clips of {frames} frame(s); the warping error needs 2 or more")
    loader = dataclasses.replace(data.loader, batch_size=ecfg.batch_size)
    data = dataclasses.replace(data, num_classes=net.num_classes if net.label_kind == "classes" else data.num_classes,
                               clip_frames=manifest.clip_frames, loader=loader)
    return data, height, width, frames, len(rows)


def _feature_nets(cfg: Config, device: str) -> tuple[dict[str, FeatureNet | None], dict[str, str]]:
    """The FID and FVD feature networks (None where not configured, with the reason in the second dict)."""
    nets: dict[str, FeatureNet | None] = {}
    skipped: dict[str, str] = {}
    for metric, path, kind, key in (("fid", cfg.eval.inception, "image", "eval.inception"),
                                    ("fvd", cfg.eval.i3d, "video", "eval.i3d")):
        nets[metric] = None
        if not path:
            skipped[metric] = f"no {'Inception' if kind == 'image' else 'I3D'} network: set {key} to a local TorchScript file"
            continue
        try:
            nets[metric] = load_feature_net(path, kind, device)
        except (OSError, ValueError) as err:
            raise EvalInputError(f"{key}={path}: {err}") from None
    return nets, skipped


def _mlflow_client(tracking_uri: str, run_id: str) -> MlflowClient:
    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        client.get_run(run_id)
    except MlflowException as err:
        raise EvalInputError(f"--run {run_id}: no such run at {redact('uri', tracking_uri)} ({err.error_code})") from None
    return client


def _log_to_run(client, run_id: str, report: Report, report_path: Path, video_path: Path) -> None:
    now = int(time.time() * 1000)
    values = {"psnr": report.psnr, "ssim": report.ssim, "warp_error": report.warp_error,
              "warp_error_real": report.warp_error_real, "warp_ratio": report.warp_ratio,
              "fid": report.fid, "fvd": report.fvd}
    metrics = [Metric(f"eval/{k}", float(v), now, 0) for k, v in values.items() if v is not None and v == v]
    # Tags, not params: params are immutable, and a run may be evaluated again on other data.
    tags = [RunTag(f"eval.{k}", str(report.info[k])) for k in ("model", "data", "split", "frames", "height", "width")]
    client.log_batch(run_id, metrics=metrics, tags=tags)
    client.log_artifact(run_id, str(report_path), "eval")
    client.log_artifact(run_id, str(video_path), "eval")
