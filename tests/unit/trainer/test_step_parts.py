"""Pure parts of the trainer: the temporal window rule, DeepSpeed configs, rank helpers, sample videos."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.config import LossConfig
from trainer import distributed as dist
from trainer.config import EngineConfig
from trainer.engines import ds_config, precision
from trainer.step import StepSettings, _temporal_span, _temporal_windows


def settings(k: int, scales: int) -> StepSettings:
    return StepSettings(loss=LossConfig(), frames_per_step=2, temporal_frames=k, temporal_scales=scales)


@pytest.mark.parametrize("k, scales, stop, span", [
    (3, 1, 1, 0),    # not enough frames generated yet for one window
    (3, 1, 2, 0),
    (3, 1, 3, 3),    # one window of K frames ending at the newest frame
    (3, 1, 8, 3),    # one temporal scale: never longer than its window
    (3, 2, 6, 5),    # two scales: the longest (K-1)*m + 1 that fits, so stride-1 windows end at the newest
    (3, 2, 7, 7),    # the stride-3 window (7 frames) fits
    (3, 2, 20, 7),   # capped at the coarsest scale's window
    (2, 3, 4, 4),    # K=2: any length tiles
    (3, 0, 8, 0),    # temporal discriminator off
])
def test_temporal_span(k: int, scales: int, stop: int, span: int) -> None:
    assert _temporal_span(settings(k, scales), stop) == span


@pytest.mark.parametrize("frames_per_step, scales", [(2, 1), (4, 1), (8, 1), (3, 2), (8, 2)])
def test_temporal_windows_are_the_newest_frames(frames_per_step: int, scales: int) -> None:
    """Real, fake and flow windows cover the same newest frames, also when a chunk outgrows the window."""
    s = StepSettings(loss=LossConfig(), frames_per_step=frames_per_step, temporal_frames=3,
                     temporal_scales=scales)
    frames = 8
    rgb = torch.arange(frames, dtype=torch.float32).view(1, frames, 1, 1, 1).expand(1, frames, 3, 2, 2)
    flow = rgb[:, :, :2] + 100
    history: list[torch.Tensor] = []
    for start in range(0, frames, frames_per_step):
        stop = min(frames, start + frames_per_step)
        fake = (rgb[:, start:stop] + 1000).requires_grad_()  # the chunk's frames, still in G's graph
        history.extend(fake.detach().unbind(1))
        real_w, fake_w, flow_w = _temporal_windows(s, rgb, flow, history, fake, start, stop)
        span = _temporal_span(s, stop)
        if not span:
            assert real_w is fake_w is flow_w is None
            continue
        expected = torch.arange(stop - span, stop, dtype=torch.float32)
        assert real_w.shape[1] == fake_w.shape[1] == flow_w.shape[1] == span
        assert torch.equal(real_w[0, :, 0, 0, 0], expected)
        assert torch.equal(fake_w[0, :, 0, 0, 0], expected + 1000)
        assert torch.equal(flow_w[0, :, 0, 0, 0], expected + 100)
        assert fake_w.requires_grad  # the newest frame is always the chunk's own


def test_ds_config_is_explicit() -> None:
    cfg = ds_config(EngineConfig(zero_stage=2, grad_clip=0.0), micro_batch=3, world=2)
    assert cfg["train_batch_size"] == 6 and cfg["train_micro_batch_size_per_gpu"] == 3
    assert cfg["gradient_clipping"] == 0.0  # DeepSpeed's own default would clip at 1.0
    assert cfg["zero_optimization"]["stage"] == 2
    assert cfg["bf16"]["enabled"] is (precision(EngineConfig()) == "bf16")
    assert precision(EngineConfig(precision="bf16")) == "bf16"
    if not torch.cuda.is_available():
        assert precision(EngineConfig()) == "fp32"
    # The grad norm is skipped only when nothing clips with it (DeepSpeed refuses it otherwise),
    # and only ZeRO 1/2 accept the setting at all.
    assert cfg["zero_optimization"]["compute_grad_norm"] is False
    # Gradients into a contiguous buffer: DeepSpeed's default on GPUs, pure copying on the CPU.
    assert cfg["zero_optimization"].get("contiguous_gradients", True) is torch.cuda.is_available()
    assert "contiguous_gradients" not in ds_config(EngineConfig(zero_stage=1), micro_batch=1, world=2)["zero_optimization"]
    clipped = ds_config(EngineConfig(zero_stage=2, grad_clip=1.0), micro_batch=1, world=2)
    assert "compute_grad_norm" not in clipped["zero_optimization"] and clipped["gradient_clipping"] == 1.0
    assert ds_config(EngineConfig(zero_stage=0), micro_batch=1, world=2)["zero_optimization"] == {"stage": 0}
    # DeepSpeed's per-tensor overflow check of bf16 gradients: its default, unless turned off.
    assert cfg["bf16"]["check_grad_overflow"] is True
    off = ds_config(EngineConfig(check_grad_overflow=False), micro_batch=1, world=1)
    assert off["bf16"]["check_grad_overflow"] is False


def test_engine_config_refuses_what_does_not_work() -> None:
    with pytest.raises(ValueError, match="zero_stage 3 is not supported"):
        EngineConfig(zero_stage=3)
    with pytest.raises(ValueError, match="betas"):
        EngineConfig(betas=[0.5])


def test_rank_from_launcher_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert (dist.rank(), dist.world_size(), dist.is_main()) == (3, 4, False)
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    assert (dist.rank(), dist.world_size(), dist.is_main()) == (0, 1, True)
    assert dist.broadcast({"a": 1}) == {"a": 1} and dist.all_equal(5)


def test_side_by_side_video(tmp_path: Path) -> None:
    import av

    from trainer.samples import side_by_side, write_mp4
    ids = torch.zeros(3, 16, 24, dtype=torch.long)
    ids[:, :, 12:] = 2
    labels = torch.nn.functional.one_hot(ids, 9).permute(0, 3, 1, 2).float()
    fake, real = -torch.ones(3, 3, 16, 24), torch.ones(3, 3, 16, 24)
    frames = side_by_side(labels, fake, real)
    assert frames.shape == (3, 16, 72, 3) and frames.dtype == np.uint8
    assert (frames[:, :, :12] == 0).all() and (frames[:, :, 12:24] > 0).any()  # class 0 black, class 2 not
    assert (frames[:, :, 24:48] == 0).all() and (frames[:, :, 48:] == 255).all()
    path = write_mp4(frames, tmp_path / "s.mp4")
    with av.open(str(path)) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(decoded) == 3 and decoded[0].shape == (16, 72, 3)
    assert abs(int(decoded[1][8, 60].mean()) - 255) < 20  # the real (white) panel survives H.264


def test_export_refuses_other_files(tmp_path: Path) -> None:
    from trainer.export import load_generator
    torch.save({"state_dict": {}}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="not a vid2vid generator export"):
        load_generator(tmp_path / "x.pt")


def test_models_saved_before_the_flow_prior_load_without_it(tmp_path: Path) -> None:
    """Exports and pickled generators from before ``flow_prior`` and ``first_frame`` were trained with the
    head's flow alone and the shared first-frame path."""
    import pickle

    from models.build import build_generator
    from models.config import GeneratorConfig, ModelConfig
    from trainer.config_tree import to_dict
    from trainer.export import FORMAT, load_generator

    then = ModelConfig(generator=GeneratorConfig(ngf=8, n_downsample=2, n_blocks=2, n_blocks_local=1,
                                                 flow_prior="none", first_frame="shared"))
    model = to_dict(then)
    del model["generator"]["flow_prior"], model["generator"]["first_frame"]
    generator = build_generator(then, 5)
    torch.save({"format": FORMAT, "state_dict": generator.state_dict(), "model": model, "label_channels": 5,
                "active_scales": 1}, tmp_path / "old.pt")
    loaded = load_generator(tmp_path / "old.pt")
    assert (loaded.cfg.flow_prior, loaded.cfg.first_frame) == ("none", "shared")

    del generator.cfg.__dict__["flow_prior"], generator.cfg.__dict__["first_frame"]  # pickled by the code of then
    for scale in generator.scales:
        del scale.__dict__["first_frame"]
    old = pickle.loads(pickle.dumps(generator))
    assert (old.cfg.flow_prior, old.cfg.first_frame) == ("none", "shared")
    assert old(torch.zeros(1, 1, 5, 8, 8)).image.shape == (1, 3, 8, 8)  # the first frame's path still runs
    assert (build_generator(ModelConfig(), 5).cfg.flow_prior, ModelConfig().generator.first_frame) == ("labels", "own")
