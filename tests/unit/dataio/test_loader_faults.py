"""Corrupt data: each bad sample or shard is skipped, counted and named; too many stop loading."""
from __future__ import annotations

import dataclasses
import logging
import shutil
import tarfile
from pathlib import Path

import fsspec
import numpy as np
import pytest

from dataio import format as fmt
from dataio import reader, synth, video
from dataio.config import DataConfig, LoaderConfig, PackConfig, SynthConfig
from dataio.loader import BadDataError, build_loader
from dataio.pack import pack


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory) -> DataConfig:
    """9 clips of 8 frames at 64x96 in 5 shards (2 clips each, the last one 1)."""
    root = tmp_path_factory.mktemp("faults")
    cfg = DataConfig(shards=str(root / "shards"), num_classes=8, clip_frames=8,
                     synth=SynthConfig(out=str(root / "source"), sequences=3, frames=16, height=64, width=96),
                     pack=PackConfig(source=str(root / "source"), clips_per_shard=2, clip_stride=4,
                                     val_fraction=0.0, workers=1),
                     loader=LoaderConfig(batch_size=3, max_bad_fraction=0.5))
    synth.generate(cfg.synth)
    pack(cfg, progress=False)
    return cfg


def copy_of(cfg: DataConfig, tmp_path: Path, **loader: object) -> DataConfig:
    """The packed shards (and manifest) in a folder of the test's own, to damage."""
    shutil.copytree(cfg.shards, tmp_path / "shards")
    return dataclasses.replace(cfg, shards=str(tmp_path / "shards"),
                               loader=dataclasses.replace(cfg.loader, **loader))


def samples_of(shard: Path) -> list[tuple[str, dict[str, bytes]]]:
    fs = fsspec.filesystem("file")
    return [(s.key, {fmt.META: s.meta.to_json(), **s.streams}) for s in reader.read_shard(fs, str(shard))]


def rewrite(shard: Path, change, origin: Path | None = None) -> list[str]:
    """Rewrite a shard (and its .idx) from ``origin`` (itself by default) with ``change(key,
    members)`` applied; returns its keys."""
    samples = samples_of(origin or shard)
    for key, members in samples:
        change(key, members)
    shard.with_suffix(".idx").write_text(fmt.write_shard(samples, shard))
    return [key for key, _ in samples]


def load_all(cfg: DataConfig, frames: int = 8):
    loader = build_loader(cfg, 32, 48, frames)
    keys = [k for batch in loader for k in batch.keys]
    return loader, keys


def all_keys(cfg: DataConfig) -> set[str]:
    return {s.key for s in reader.read_shards(cfg.shards, reader.list_shards(cfg.shards, "train"))}


def test_truncated_tar_names_every_lost_sample(packed: DataConfig, tmp_path: Path, caplog) -> None:
    cfg = copy_of(packed, tmp_path, batch_size=1)
    shard = Path(cfg.shards) / "train-000001.tar"
    lost = [key for key, _ in samples_of(shard)]
    data = shard.read_bytes()
    shard.write_bytes(data[:len(data) // 3])  # inside the first sample's members
    with caplog.at_level(logging.WARNING, logger="dataio.loader"):
        loader, keys = load_all(cfg)
    skipped = {s.key: s for s in loader.stats.skips}
    assert set(skipped) == set(lost) and all("truncated" in s.reason for s in skipped.values())
    assert all(s.shard.endswith("train-000001.tar") for s in skipped.values())
    assert sorted(keys) == sorted(all_keys(packed) - set(lost))
    assert loader.stats.read == 9 and loader.stats.skipped == 2
    assert all(key in caplog.text for key in lost) and "train-000001.tar" in caplog.text


def test_tar_cut_between_samples_is_caught_too(packed: DataConfig, tmp_path: Path) -> None:
    """tarfile ends silently at a member boundary; the missing end blocks and the .idx tell."""
    cfg = copy_of(packed, tmp_path, batch_size=1)
    shard = Path(cfg.shards) / "train-000002.tar"
    with tarfile.open(shard) as tar:
        members = tar.getmembers()
    second = next(m for m in members if not m.name.startswith(members[0].name.split(".")[0]))
    shard.write_bytes(shard.read_bytes()[:second.offset])  # exactly the first sample, no end blocks
    loader, keys = load_all(cfg)
    lost = second.name.split(".")[0]
    assert [s.key for s in loader.stats.skips] == [lost] and lost not in keys
    assert members[0].name.split(".")[0] in keys  # the complete sample before the cut is used
    # Without the .idx the loss cannot be named, but it is still counted.
    shard.with_suffix(".idx").unlink()
    loader, _ = load_all(cfg)
    assert [s.key for s in loader.stats.skips] == ["<rest of shard>"]


def test_corrupt_header_mid_tar_is_not_taken_for_the_end(packed: DataConfig, tmp_path: Path) -> None:
    """tarfile stops silently at a header it cannot parse; the rest of the tar must not vanish unseen."""
    cfg = copy_of(packed, tmp_path, batch_size=1)
    shard = Path(cfg.shards) / "train-000002.tar"
    with tarfile.open(shard) as tar:
        members = tar.getmembers()
    first = members[0].name.split(".")[0]
    second = next(m for m in members if not m.name.startswith(first))
    data = bytearray(shard.read_bytes())
    data[second.offset + 148:second.offset + 156] = b"9999999\0"  # the header's checksum field
    shard.write_bytes(bytes(data))
    loader, keys = load_all(cfg)
    lost = second.name.split(".")[0]
    assert [s.key for s in loader.stats.skips] == [lost] and lost not in keys and first in keys
    assert "corrupt tar after key " + first in loader.stats.skips[0].reason
    # Without the .idx the loss cannot be named, but it is still reported and counted.
    shard.with_suffix(".idx").unlink()
    items = list(reader.read_shard(fsspec.filesystem("file"), str(shard)))
    assert [type(i).__name__ for i in items] == ["Sample", "Skip"] and items[0].key == first
    assert items[1].key == "<rest of shard>" and items[1].shard == str(shard)
    assert f"corrupt tar after key {first}" in items[1].reason
    loader, _ = load_all(cfg)
    assert [s.key for s in loader.stats.skips] == ["<rest of shard>"] and loader.stats.skipped == 1


def test_undecodable_bytes_are_skipped_and_the_batch_refilled(packed: DataConfig, tmp_path: Path) -> None:
    cfg = copy_of(packed, tmp_path, batch_size=4)
    rng = np.random.default_rng(0)

    def garble(key: str, members: dict[str, bytes]) -> None:
        if key == bad:
            members[fmt.RGB] = rng.integers(0, 256, 4000, dtype=np.uint8).tobytes()

    bad = samples_of(Path(cfg.shards) / "train-000000.tar")[1][0]
    rewrite(Path(cfg.shards) / "train-000000.tar", garble)
    loader, keys = load_all(cfg)
    assert [s.key for s in loader.stats.skips] == [bad]
    assert loader.stats.skips[0].reason.startswith("decode failed")
    assert len(keys) == 8 and bad not in keys  # 8 good clips: two full batches of 4
    assert loader._decoder.rebuilds >= 1


def test_missing_stream_short_stream_and_bad_class_ids(packed: DataConfig, tmp_path: Path) -> None:
    cfg = copy_of(packed, tmp_path, batch_size=2)
    shard = Path(cfg.shards) / "train-000003.tar"
    first, second = [key for key, _ in samples_of(shard)]

    def damage(key: str, members: dict[str, bytes]) -> None:
        if key == first:
            del members[fmt.FLOW]
        else:  # four frames where the metadata promises eight, and class 9 of 8
            ids = np.full((4, 64, 96), 9, np.uint8)
            members[fmt.LABEL] = video.encode_lossless(ids)

    rewrite(shard, damage)
    loader, keys = load_all(cfg)
    reasons = {s.key: s.reason for s in loader.stats.skips}
    assert set(reasons) == {first, second} and not {first, second} & set(keys)
    assert reasons[first] == "missing member flow.webm"
    assert "label.webm decodes to (4, 64, 96, 3)" in reasons[second]

    def wrong_ids(key: str, members: dict[str, bytes]) -> None:
        members[fmt.LABEL] = video.encode_lossless(np.full((8, 64, 96), 9 if key == second else 1, np.uint8))

    rewrite(shard, wrong_ids, origin=Path(packed.shards) / shard.name)
    loader, keys = load_all(cfg)
    assert [(s.key, s.reason) for s in loader.stats.skips] == [
        (second, "label.webm holds class id 9, data.num_classes is 8")]


def test_too_many_bad_samples_stop_loading_with_a_clear_error(packed: DataConfig, tmp_path: Path) -> None:
    cfg = copy_of(packed, tmp_path, batch_size=1, max_bad_fraction=0.2)
    bad = rewrite(Path(cfg.shards) / "train-000000.tar", lambda key, m: m.pop(fmt.RGB))
    bad += rewrite(Path(cfg.shards) / "train-000001.tar", lambda key, m: m.pop(fmt.RGB))
    loader = build_loader(cfg, 32, 48, 4)
    with pytest.raises(BadDataError) as error:
        for _ in loader:
            pass
    message = str(error.value)
    assert "4 of 9 samples read were bad (44.4%)" in message
    assert "loader.max_bad_fraction=0.2" in message
    assert bad[-1] in message and "missing member rgb.webm" in message

    # A limit of 0 stops at the first bad sample, before the epoch ends.
    strict = build_loader(dataclasses.replace(cfg, loader=dataclasses.replace(cfg.loader, max_bad_fraction=0.0)),
                          32, 48, 4)
    with pytest.raises(BadDataError, match="1 of"):
        for _ in strict:
            pass
