"""Packing to ``s3://`` on a real S3 endpoint (a moto server process): the same bytes as a local pack,
resume by index, the manifest read back from S3, and WebDataset streaming the shards from S3."""
from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from dataio import synth
from dataio.config import DataConfig, PackConfig, SynthConfig
from dataio.manifest import read_manifest
from dataio.pack import pack
from dataio.storage import register_webdataset_s3, s3_filesystem

SHARDS = {"train-000000", "train-000001", "val-000000"}


def config(source: Path, shards: str) -> DataConfig:
    # 3 sequences x 10 frames, clips of 4 every 3 frames: 9 clips; seq_0002 hashes into val at 0.4
    return DataConfig(shards=shards, num_classes=8, clip_frames=4,
                      pack=PackConfig(source=str(source), clip_stride=3, clips_per_shard=4, val_fraction=0.4,
                                      workers=1))


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "src"
    synth.generate(SynthConfig(out=str(out), sequences=3, frames=10, height=32, width=64, seed=0))
    return out


def test_pack_to_s3_matches_local_and_resumes(source: Path, tmp_path: Path, s3_bucket: str) -> None:
    url = f"s3://{s3_bucket}/datasets/synth"
    report = pack(config(source, url), progress=False)
    assert (report.clips, report.shards_written, report.shards_resumed) == (9, 3, 0)

    fs = s3_filesystem()
    fs.invalidate_cache()
    listed = {key.rsplit("/", 1)[-1] for key in fs.ls(url)}
    assert listed == {f"{n}.{e}" for n in SHARDS for e in ("tar", "idx")} | {
        "manifest.parquet", "pack.json", "pack_report.json"}
    local = tmp_path / "local"
    pack(config(source, str(local)), progress=False)
    for name in SHARDS:  # the S3 upload is the very shard a local pack writes
        assert fs.cat_file(f"{url}/{name}.tar") == (local / f"{name}.tar").read_bytes()
        assert fs.cat_file(f"{url}/{name}.idx") == (local / f"{name}.idx").read_bytes()
    assert read_manifest(url).rows == read_manifest(str(local)).rows

    again = pack(config(source, url), progress=False)
    assert (again.shards_written, again.shards_resumed, again.bytes) == (0, 3, 0)
    fs.rm_file(f"{url}/train-000001.idx")  # as if the run died after uploading the tar
    redo = pack(config(source, url), progress=False)
    assert (redo.shards_written, redo.shards_resumed) == (1, 2)
    fs.invalidate_cache()
    assert fs.cat_file(f"{url}/train-000001.tar") == (local / "train-000001.tar").read_bytes()


def test_webdataset_streams_shards_from_s3(source: Path, s3_bucket: str, tmp_path: Path) -> None:
    import webdataset as wds

    url = f"s3://{s3_bucket}/wds"
    pack(config(source, url), progress=False)
    register_webdataset_s3()
    samples = list(wds.WebDataset(f"{url}/train-{{000000..000001}}.tar", shardshuffle=False))
    assert [s["__key__"] for s in samples] == [f"seq_{i:04d}_{t:06d}" for i in (0, 1) for t in (0, 3, 6)]
    local = tmp_path / "local.tar"
    local.write_bytes(s3_filesystem().cat_file(f"{url}/train-000000.tar"))
    with tarfile.open(local) as tar:
        first = {m.name.split(".", 1)[1]: tar.extractfile(m).read() for m in tar  # type: ignore[union-attr]
                 if m.name.startswith("seq_0000_000000.")}
    assert {k: samples[0][k] for k in first} == first

