"""The whole trainer under torchrun (2 ranks, gloo, ZeRO 2 and 0) on real shards with the real networks.

Launches (each 10-15 s on 2 cores), shared by the checks below:
  A  the tiny config end to end: 3 epochs, every kind of stage change (a new scale trained alone
     while the coarse one is fixed, then both jointly with clips twice as long, the learning rate
     decaying over the last epoch), checkpoints every 2 steps, held-out scores every 3 steps and at
     each checkpoint, MLflow on sqlite, export; under ZeRO 2, and under ZeRO 0 for the resumes.
  B  fresh processes resumed from each of A's checkpoints before the last (steps 2 and 4 at stage
     boundaries, so the resumed run goes through the engine rebuilds; step 6 inside an epoch), some
     scoring as A did and some not, under ZeRO 2 and ZeRO 0: each must reproduce A's losses and final
     weights exactly (so scoring changes nothing of training), the scoring ones also A's scores.
  C  resumed from A's step-2 checkpoint with a learning rate of 1e30: losses go non-finite, steps are
     skipped, training stops with an error naming the terms, the checkpoint is left as it was.
  D  resumed from A's step-2 checkpoint with a generator learning rate beyond fp32's range: step 3's
     losses are finite, its update makes the weights inf/NaN; the checkpoint due after it ends the run
     naming them, unsaved.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from live_servers import synth_and_pack

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "tiny_train.yaml"


def zero(stage: int) -> list[str]:
    """ZeRO ``stage`` for both engines, a checkpoint every 2 steps, all of them kept."""
    return [f"train.generator.zero_stage={stage}", f"train.discriminator.zero_stage={stage}",
            "checkpoint.every_steps=2", "checkpoint.keep=4"]


ZERO2 = zero(2)
# The tiny shards have no val split: score the train clips (unaugmented, as a val split would be).
SCORING = ["eval.every_steps=3", "eval.at_checkpoint=true", "eval.split=train"]


def trainer_run(workdir: Path, *overrides: str, timeout: int = 400) -> subprocess.CompletedProcess:
    overrides = (f"tracking.artifact_location={workdir / 'mlruns'}", *overrides)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), MLFLOW_DISABLE_TELEMETRY="true",
               TORCH_EXTENSIONS_DIR=os.environ.get("TORCH_EXTENSIONS_DIR",
                                                   str(Path.home() / ".cache" / "torch_extensions_vid2vid")))
    cmd = [str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc_per_node", "2",
           "-m", "trainer", "--config", str(CONFIG), *overrides]
    return subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout)


def metric_history(workdir: Path, key: str) -> dict[int, float]:
    from mlflow.tracking import MlflowClient
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert len(runs) == 1
    return {m.step: m.value for m in client.get_metric_history(runs[0].info.run_id, key)}


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny real shards: synthetic sequences packed by the data layer (as tiny_train.yaml expects)."""
    return synth_and_pack(CONFIG, tmp_path_factory.mktemp("tiny")) / "shards"


def workdir_with(tmp: Path, shards: Path) -> Path:
    (tmp / "data" / "tiny").mkdir(parents=True)
    (tmp / "data" / "tiny" / "shards").symlink_to(shards)
    return tmp


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory, shards: Path):
    """Run A under ZeRO ``stage`` (0 or 2), made once per module when first asked for."""
    made: dict[int, Path] = {}

    def get(stage: int) -> Path:
        if stage not in made:
            work = workdir_with(tmp_path_factory.mktemp(f"run_a_zero{stage}"), shards)
            from trainer.config import TrackingConfig
            from trainer.tracking import prepare_store
            prepare_store(TrackingConfig(uri=f"sqlite:///{work / 'mlflow.db'}", experiment="tiny",
                                         artifact_location=str(work / "mlruns")))  # once, before the workers start
            proc = trainer_run(work, *zero(stage), *SCORING)
            assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
            assert "done: epochs=3 steps=8 skipped=0" in proc.stdout
            made[stage] = work
        return made[stage]
    return get


@pytest.fixture(scope="module")
def run_a(uninterrupted) -> Path:
    return uninterrupted(2)


def test_losses_stages_and_tracking(run_a: Path) -> None:
    from mlflow.tracking import MlflowClient
    client = MlflowClient(tracking_uri=f"sqlite:///{run_a / 'mlflow.db'}")
    run = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])[0]
    assert run.info.status == "FINISHED"
    for key in ("g/gan", "g/feature_matching", "g/temporal_gan", "g/flow", "g/warp", "g/mask", "g/total",
                "d/d_real", "d/d_fake", "d/temporal_d_real", "d/total", "frames_per_s"):
        values = metric_history(run_a, key)
        assert values and all(math.isfinite(v) for v in values.values()), key
    assert sorted(metric_history(run_a, "g/total")) == list(range(1, 9))
    scales, frames = metric_history(run_a, "stage/scale"), metric_history(run_a, "stage/frames")
    assert [scales[s] for s in (1, 3, 5, 8)] == [0, 1, 1, 1]       # a finer scale added at epoch 1
    assert [frames[s] for s in (1, 3, 5, 8)] == [2, 2, 4, 4]       # clips twice as long at epoch 2
    lr = metric_history(run_a, "lr/generator")
    assert lr[1] == pytest.approx(2e-4) and lr[8] == pytest.approx(1e-4)  # linear decay in the last epoch
    assert run.data.params["train.generator.zero_stage"] == "2"
    assert run.data.tags["checkpoint"].endswith("step-000000008")
    samples = client.list_artifacts(run.info.run_id, "samples")
    assert len(samples) == 3 and all(f.path.endswith(".mp4") and f.file_size > 0 for f in samples)


def test_held_out_scores_during_training(run_a: Path) -> None:
    """eval.every_steps=3 and eval.at_checkpoint: scored when steps 3 and 6 were passed (batches of 1-2
    steps) and before each checkpoint (once a step: not again at the epoch end's save of the same
    step), at the stage's size, logged as eval/* at that step and as a learning curve beside the
    checkpoints; each checkpoint records its own scores."""
    from trainer import checkpoint
    root = run_a / "checkpoints" / "tiny"
    curve = [json.loads(line) for line in (root / "eval.jsonl").read_text().splitlines()]
    steps = [p["step"] for p in curve]
    assert steps == sorted(metric_history(run_a, "eval/psnr")) and len(set(steps)) == len(steps)
    assert {2, 4, 6, 8} <= set(steps)
    for folder in checkpoint.complete_checkpoints(root):
        recorded = checkpoint.load_trainer_state(folder)["progress"]["eval"]
        point = next(p for p in curve if p["step"] == recorded["eval/step"])
        assert folder.name == f"step-{point['step']:09d}" and recorded["eval/psnr"] == pytest.approx(point["psnr"])
    assert [(p["height"], p["width"]) for p in curve] == [(16, 32) if p["scale"] == 0 else (32, 64) for p in curve]
    for point in curve:
        assert point["clips"] == 8 and 0 < point["psnr"] < 100 and 0 < point["ssim"] <= 1 and point["warp_ratio"] > 0
        assert metric_history(run_a, "eval/psnr")[point["step"]] == pytest.approx(point["psnr"])


def test_checkpoints_are_complete_and_weights_only(run_a: Path) -> None:
    from trainer import checkpoint
    root = run_a / "checkpoints" / "tiny"
    found = checkpoint.complete_checkpoints(root)
    assert [p.name for p in found] == [f"step-00000000{s}" for s in (2, 4, 6, 8)]
    state = checkpoint.load_trainer_state(found[-1])
    assert state["progress"]["epoch"] == 3 and state["world_size"] == 2
    assert len(state["param_checksum"]) == 2  # both ranks held identical weights when it was saved
    assert state["config"]["train"]["generator"]["zero_stage"] == 2
    for rank in (0, 1):
        assert isinstance(torch.load(found[-1] / f"rng-rank{rank}.pt", weights_only=True)["torch"], torch.Tensor)
    assert not list(root.glob(".partial-*"))


def test_deepspeed_s_own_consolidation_opens_our_checkpoints(run_a: Path, tmp_path: Path) -> None:
    """DeepSpeed's zero_to_fp32 on a 2-rank ZeRO-2 engine folder, as the README shows it, gives the
    weights our consolidation gives (the export itself holds the weight average)."""
    from trainer.export import consolidated_generator_state
    step = run_a / "checkpoints" / "tiny" / "step-000000008"
    code = ("from deepspeed.utils.zero_to_fp32 import convert_zero_checkpoint_to_fp32_state_dict as convert; "
            f"convert({str(step / 'generator')!r}, {str(tmp_path)!r}, max_shard_size=None)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    theirs = torch.load(tmp_path / "pytorch_model.bin", weights_only=True)
    ours = consolidated_generator_state(step, zero_stage=2)
    common = [k for k in ours if k in theirs]
    assert len(common) == len(theirs) and all(torch.equal(theirs[k].float(), ours[k]) for k in common)


def test_export_reloads_on_one_process(run_a: Path) -> None:
    from models.generator import generate_clip
    from trainer.average import averaged_state
    from trainer.export import consolidated_generator_state, load_generator
    path = run_a / "checkpoints" / "tiny" / "export" / "generator.pt"
    payload = torch.load(path, weights_only=True)
    assert payload["active_scales"] == 2 and payload["label_channels"] == 9
    generator = load_generator(path)
    last = run_a / "checkpoints" / "tiny" / "step-000000008"
    # The export holds the weights' running average (what validation scored), not the raw weights.
    averaged, merged = averaged_state(last), consolidated_generator_state(last, zero_stage=2)
    assert averaged is not None and averaged.keys() == merged.keys()
    assert all(torch.equal(generator.state_dict()[k], v) for k, v in averaged.items())
    assert not all(torch.equal(averaged[k], merged[k]) for k in merged)
    labels = torch.nn.functional.one_hot(torch.randint(0, 8, (1, 3, 32, 64)), 9).permute(0, 1, 4, 2, 3).float()
    with torch.no_grad():
        clip = generate_clip(generator, labels)
    assert clip.images.shape == (1, 3, 3, 32, 64) and torch.isfinite(clip.images).all()


def copy_checkpoint(run_a: Path, work: Path, step: int) -> Path:
    name = f"step-{step:09d}"
    target = work / "checkpoints" / "tiny"
    target.mkdir(parents=True)
    shutil.copytree(run_a / "checkpoints" / "tiny" / name, target / name)
    return target / name


@pytest.mark.parametrize("stage", [2, 0])
@pytest.mark.parametrize("step,scoring", [
    (2, []),       # end of epoch 0: the next epoch trains the new scale 1 alone (no parameter keeps training)
    (4, SCORING),  # end of epoch 1: the next releases scale 0 to train with scale 1 (Adam moments carried) on
                   # clips twice as long, with the learning rate decaying
    (6, []),       # inside epoch 2: the batch position, mid-decay
    (8, []),       # the last: nothing left to train, the same export
])
def test_resume_reproduces_the_uninterrupted_run(uninterrupted, shards: Path, tmp_path: Path, stage: int,
                                                 step: int, scoring: list[str]) -> None:
    """A resume from each checkpoint of run A (8 steps, every kind of stage change) under ZeRO 0 and 2
    ends with A's losses from the next step on and A's final weights, bit for bit."""
    run_a = uninterrupted(stage)
    work = workdir_with(tmp_path, shards)
    copy_checkpoint(run_a, work, step)
    proc = trainer_run(work, *zero(stage), *scoring)
    assert proc.returncode == 0, proc.stderr[-6000:]
    assert f"resumed from checkpoints/tiny/step-{step:09d}" in proc.stderr
    for key in ("g/total", "d/total", "g/flow"):
        uninterrupted, resumed = metric_history(run_a, key), metric_history(work, key)
        assert sorted(resumed) == list(range(step + 1, 9))
        assert {s: uninterrupted[s] for s in resumed} == resumed, key
    if scoring:  # the same weights scored on the same clips: the same scores
        resumed = metric_history(work, "eval/psnr")
        assert resumed and resumed == {s: metric_history(run_a, "eval/psnr")[s] for s in resumed}
    a = torch.load(run_a / "checkpoints" / "tiny" / "export" / "generator.pt", weights_only=True)["state_dict"]
    b = torch.load(work / "checkpoints" / "tiny" / "export" / "generator.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in folder.rglob("*") if p.is_file()}


def test_non_finite_losses_stop_training_and_keep_the_checkpoint(run_a: Path, shards: Path, tmp_path: Path) -> None:
    work = workdir_with(tmp_path, shards)
    kept = copy_checkpoint(run_a, work, 2)
    digest = digests(kept)
    proc = trainer_run(work, *ZERO2, "train.generator.lr=1.0e+30", "train.discriminator.lr=1.0e+30",
                       "train.max_bad_steps=2", "tracking.enabled=false")
    assert proc.returncode != 0
    assert "NonFiniteLossError: 2 consecutive steps with a non-finite loss" in proc.stderr
    assert "skipped: non-finite" in proc.stderr and "g/total" in proc.stderr
    from trainer import checkpoint
    assert checkpoint.latest_checkpoint(work / "checkpoints" / "tiny") == kept
    assert digest == digests(kept)


def test_weights_gone_non_finite_after_finite_losses_are_never_checkpointed(run_a: Path, shards: Path,
                                                                            tmp_path: Path) -> None:
    # A generator learning rate beyond fp32's range: step 3's losses are finite (computed before its
    # update), the update writes inf and NaN into the generator. Its checkpoint would be the newest.
    work = workdir_with(tmp_path, shards)
    kept = copy_checkpoint(run_a, work, 2)
    digest = digests(kept)
    proc = trainer_run(work, *ZERO2, "checkpoint.every_steps=1", "train.generator.lr=1.0e+39",
                       "tracking.enabled=false")
    assert proc.returncode != 0
    error = [line for line in proc.stderr.splitlines() if "NonFiniteWeightsError: " in line]
    assert error and "after step 3 " in error[0] and "not finite (first: generator." in error[0], proc.stderr[-3000:]
    assert "the last checkpoint, step-000000002, is left as it was" in error[0], error[0]
    assert "skipped: non-finite" not in proc.stderr  # stopped by the weights, before a loss showed them
    from trainer import checkpoint
    assert checkpoint.latest_checkpoint(work / "checkpoints" / "tiny") == kept
    assert not list((work / "checkpoints" / "tiny").glob("step-000000003*"))
    assert digest == digests(kept)
