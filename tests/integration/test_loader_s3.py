"""Pack to ``s3://`` on a real S3 endpoint (a moto server process), load through DALI from there:
the same samples, bit for bit, as from a local folder packed from the same source."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from dataio import synth
from dataio.config import DataConfig, LoaderConfig, PackConfig, SynthConfig
from dataio.loader import build_loader
from dataio.pack import pack
from dataio.storage import s3_filesystem


def test_loading_from_s3_gives_the_samples_of_a_local_folder(tmp_path: Path, s3_bucket: str) -> None:
    local = DataConfig(shards=str(tmp_path / "shards"), num_classes=8, clip_frames=8,
                       synth=SynthConfig(out=str(tmp_path / "source"), sequences=2, frames=12, height=64, width=96),
                       pack=PackConfig(source=str(tmp_path / "source"), clips_per_shard=2, clip_stride=4,
                                       val_fraction=0.0, workers=1),
                       loader=LoaderConfig(batch_size=2, shuffle_buffer=3))
    remote = dataclasses.replace(local, shards=f"s3://{s3_bucket}/clips/v1")
    synth.generate(local.synth)
    pack(local, progress=False)
    pack(remote, progress=False)
    listed = s3_filesystem().ls(f"{s3_bucket}/clips/v1")
    assert any(name.endswith("train-000000.tar") for name in listed)
    assert any(name.endswith("train-000000.idx") for name in listed)

    batches = {}
    for name, cfg in (("local", local), ("s3", remote)):
        loader = build_loader(cfg, 48, 64, 5, rank=0, world_size=1)
        batches[name] = [batch for _ in range(2) for batch in loader]  # two epochs
        assert loader.stats.skipped == 0 and loader.shards[0].startswith("s3://" if name == "s3" else "/")

    assert len(batches["s3"]) == len(batches["local"]) == 4  # 4 clips, batch 2, two epochs
    for a, b in zip(batches["local"], batches["s3"], strict=True):
        assert a.keys == b.keys and a.draws == b.draws
        for field in ("rgb", "labels", "flow", "flow_conf"):
            assert torch.equal(getattr(a, field), getattr(b, field)), field
