"""The ``mixed`` loader (NVDEC for RGB, augmentation on the GPU) against the ``cpu`` one.

Skipped without a CUDA GPU. Passed on an H200 with DALI 2.4 (docs/performance.md). The clips are
160x128: NVDEC refuses VP9 frames under 128x128.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

from dataio import synth
from dataio.config import DataConfig, LoaderConfig, PackConfig, SynthConfig
from dataio.loader import build_loader
from dataio.pack import pack

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory) -> DataConfig:
    root = tmp_path_factory.mktemp("gpu")
    cfg = DataConfig(shards=str(root / "shards"), num_classes=8, clip_frames=8,
                     synth=SynthConfig(out=str(root / "source"), sequences=2, frames=12, height=128, width=160),
                     pack=PackConfig(source=str(root / "source"), clips_per_shard=2, clip_stride=4,
                                     val_fraction=0.0, workers=1),
                     loader=LoaderConfig(batch_size=2, min_scale=0.7))
    synth.generate(cfg.synth)
    pack(cfg, progress=False)
    return cfg


@pytest.mark.parametrize("size", [(64, 96, 8), (32, 48, 4)])
def test_mixed_matches_cpu(packed: DataConfig, size: tuple[int, int, int]) -> None:
    mixed_cfg = dataclasses.replace(packed, loader=dataclasses.replace(packed.loader, device="mixed",
                                                                       label_device="cpu"))
    cpu = list(build_loader(packed, *size))
    mixed = list(build_loader(mixed_cfg, *size))
    assert len(mixed) == len(cpu) == 2
    classes = packed.num_classes
    for a, b in zip(cpu, mixed, strict=True):
        assert b.rgb.device == torch.device("cuda", torch.cuda.current_device())
        assert a.keys == b.keys and a.draws == b.draws
        b_cpu = {name: getattr(b, name).cpu() for name in ("rgb", "labels", "flow", "flow_conf")}
        # Class ids decode on the CPU and resize nearest on the GPU: equal but at exact ties.
        mismatch = (a.labels[:, :, :classes].argmax(2) != b_cpu["labels"][:, :, :classes].argmax(2))
        assert mismatch.float().mean() < 0.002
        # NVDEC's colour conversion and DALI's GPU resize differ from the CPU path by rounding.
        assert (a.rgb - b_cpu["rgb"]).abs().mean() < 0.03
        assert (a.flow - b_cpu["flow"]).abs().mean() < 0.03
        assert (a.flow_conf - b_cpu["flow_conf"]).abs().mean() < 0.03
