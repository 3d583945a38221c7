"""Bad input at packing time: an error naming the file before anything is written, or with
``skip_bad`` the sequence left out and listed; finished shards survive either way."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from dataio import synth
from dataio.config import DataConfig, PackConfig, SynthConfig
from dataio.pack import BadInputError, SkippedSequence, pack


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One synthetic sequence of 10 frames at 64x32 (3 clips of 4 frames every 3)."""
    out = tmp_path_factory.mktemp("synth") / "src"
    synth.generate(SynthConfig(out=str(out), sequences=1, frames=10, height=32, width=64, seed=3))
    return out / "seq_0000"


def config(source: Path, shards: Path, skip_bad: bool = False) -> DataConfig:
    return DataConfig(shards=str(shards), num_classes=8, clip_frames=4,
                      pack=PackConfig(source=str(source), clip_stride=3, clips_per_shard=2, val_fraction=0.0,
                                      workers=1, skip_bad=skip_bad))


def make_bad(folder: Path, problem: str) -> str:
    """Damage a copy of the good sequence; returns what the error must say (paths under the source)."""
    if problem == "frame and label counts differ":
        (folder / "labels" / "000009.png").unlink()
        return "bad/labels: 9 label maps but 10 frames in bad/frames: frame 000009.png has no partner numbered 9"
    if problem == "sizes differ":
        cv2.imwrite(str(folder / "labels" / "000002.png"), np.zeros((32, 66), np.uint8))
        return "bad/labels/000002.png: size 66x32 differs from the frames' 64x32"
    if problem == "unreadable image":
        path = folder / "frames" / "000005.png"
        path.write_bytes(path.read_bytes()[:200])
        return "bad/frames/000005.png: unreadable image"
    if problem == "unreadable video":
        shutil.rmtree(folder / "frames")
        (folder / "rgb.mkv").write_bytes(b"\x1a\x45\xdf\xa3" + bytes(range(256)) * 8)
        return "bad/rgb.mkv: unreadable video"
    if problem == "label above the class count":
        labels = cv2.imread(str(folder / "labels" / "000007.png"), cv2.IMREAD_UNCHANGED)
        labels[10, 20] = 8
        cv2.imwrite(str(folder / "labels" / "000007.png"), labels)
        return "bad/labels/000007.png: label value 8 at x=20, y=10 is not a class below data.num_classes=8"
    if problem == "shorter than a clip":
        for t in range(3, 10):
            (folder / "frames" / f"{t:06d}.png").unlink()
            (folder / "labels" / f"{t:06d}.png").unlink()
            (folder / "instances" / f"{t:06d}.png").unlink()
        return "bad/frames: 3 frames, fewer than one clip (data.clip_frames=4)"
    raise AssertionError(problem)


def source_with_bad(good: Path, root: Path, problem: str) -> tuple[Path, str]:
    source = root / "src"
    shutil.copytree(good, source / "a_good")
    shutil.copytree(good, source / "bad")
    return source, make_bad(source / "bad", problem).replace("bad/", f"{source}/bad/")


PROBLEMS = ["frame and label counts differ", "sizes differ", "unreadable image", "unreadable video",
            "label above the class count", "shorter than a clip"]


@pytest.mark.parametrize("problem", PROBLEMS)
def test_bad_input_stops_before_anything_is_written(good: Path, tmp_path: Path, problem: str) -> None:
    source, expected = source_with_bad(good, tmp_path, problem)
    with pytest.raises(BadInputError) as caught:
        pack(config(source, tmp_path / "shards"), progress=False)
    assert str(caught.value).startswith(expected)
    assert not (tmp_path / "shards").exists()


@pytest.mark.parametrize("problem", PROBLEMS)
def test_skip_bad_packs_the_rest_and_lists_the_skipped(good: Path, tmp_path: Path, problem: str) -> None:
    source, expected = source_with_bad(good, tmp_path, problem)
    report = pack(config(source, tmp_path / "shards", skip_bad=True), progress=False)
    assert (report.sequences, report.clips, report.shards_written) == (1, 3, 2)
    assert report.skipped == [SkippedSequence("bad", report.skipped[0].reason)]
    assert report.skipped[0].reason.startswith(expected)
    written = json.loads((tmp_path / "shards" / "pack_report.json").read_text())
    assert written["skipped"] == [{"name": "bad", "reason": report.skipped[0].reason}]


def test_a_bad_sequence_found_later_costs_no_finished_shard(good: Path, tmp_path: Path) -> None:
    source, shards = tmp_path / "src", tmp_path / "shards"
    shutil.copytree(good, source / "a_good")
    assert pack(config(source, shards), progress=False).shards_written == 2
    before = {p.name: p.read_bytes() for p in shards.iterdir()}
    shutil.copytree(good, source / "bad")
    make_bad(source / "bad", "label above the class count")
    with pytest.raises(BadInputError, match="bad/labels/000007.png"):
        pack(config(source, shards), progress=False)
    assert {p.name: p.read_bytes() for p in shards.iterdir()} == before
    resumed = pack(config(source, shards, skip_bad=True), progress=False)
    assert (resumed.shards_resumed, resumed.shards_written, len(resumed.skipped)) == (2, 0, 1)


def test_every_bad_sequence_is_named_at_once(good: Path, tmp_path: Path) -> None:
    source = tmp_path / "src"
    shutil.copytree(good, source / "bad")
    shutil.copytree(good, source / "worse")
    make_bad(source / "bad", "sizes differ")
    (source / "worse" / "labels" / "000009.png").unlink()
    with pytest.raises(BadInputError) as caught:
        pack(config(source, tmp_path / "shards"), progress=False)
    assert "bad/labels/000002.png" in str(caught.value) and "worse/labels: 9 label maps" in str(caught.value)
    with pytest.raises(BadInputError, match="no sequence could be packed"):
        pack(config(source, tmp_path / "shards", skip_bad=True), progress=False)
    assert not (tmp_path / "shards").exists()
