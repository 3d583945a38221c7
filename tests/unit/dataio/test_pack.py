"""`vid2vid data pack` to a local folder: shards, DALI indexes, manifest, resume, determinism."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from dataio import format as fmt
from dataio import synth, video
from dataio.config import DataConfig, PackConfig, SynthConfig
from dataio.flow import backward_flow, endpoint_error
from dataio.manifest import read_manifest
from dataio.pack import BadInputError, PackReport, SettingsMismatchError, clip_starts, pack, split_of

WDS2IDX = Path(sys.executable).with_name("wds2idx")
SEQUENCES = ("seq_0000", "seq_0001", "seq_0002")
# 10 frames, clips of 4 every 3 frames -> starts 0, 3, 6 per sequence; val_fraction 0.4 puts seq_0002
# (hash 0.38) in val, so: train-000000 (4 clips), train-000001 (2), val-000000 (3).
EXPECTED_SHARDS = {"train-000000": 4, "train-000001": 2, "val-000000": 3}


def config(source: Path, shards: Path | str, num_classes: int = 8, **pack_options) -> DataConfig:
    options = {"clip_stride": 3, "clips_per_shard": 4, "val_fraction": 0.4, "workers": 1, **pack_options}
    return DataConfig(shards=str(shards), num_classes=num_classes, clip_frames=4,
                      pack=PackConfig(source=str(source), **options))


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "src"
    synth.generate(SynthConfig(out=str(out), sequences=3, frames=10, height=32, width=64, seed=0))
    return out


@pytest.fixture(scope="module")
def packed(source: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, PackReport]:
    shards = tmp_path_factory.mktemp("packed")
    return shards, pack(config(source, shards), progress=False)


def members(tar_path: Path) -> dict[str, bytes]:
    with tarfile.open(tar_path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar}  # type: ignore[union-attr]


def luma_psnr(a: np.ndarray, b: np.ndarray) -> float:
    weights = np.array([0.299, 0.587, 0.114])
    return float(10 * np.log10(255 ** 2 / np.mean((a.astype(np.float64) @ weights - b @ weights) ** 2)))


def tar_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.tar"))}


def test_report_and_files(packed: tuple[Path, PackReport]) -> None:
    shards, report = packed
    assert (report.sequences, report.clips, report.shards_written, report.shards_resumed) == (3, 9, 3, 0)
    assert report.skipped == []
    names = {p.name for p in shards.iterdir()}
    assert names == {f"{n}.{ext}" for n in EXPECTED_SHARDS for ext in ("tar", "idx")} | {
        "manifest.parquet", "pack.json", "pack_report.json"}
    assert report.bytes == sum((shards / n).stat().st_size for n in names if n.endswith((".tar", ".idx")))


def test_index_is_exactly_what_wds2idx_writes(packed: tuple[Path, PackReport], tmp_path: Path) -> None:
    shards, _ = packed
    for name, count in EXPECTED_SHARDS.items():
        subprocess.run([str(WDS2IDX), str(shards / f"{name}.tar"), str(tmp_path / "ref.idx")], check=True,
                       capture_output=True)
        assert (shards / f"{name}.idx").read_text() == (tmp_path / "ref.idx").read_text()
        assert len(fmt.parse_index((shards / f"{name}.idx").read_text())) == count


def test_manifest_has_a_row_per_sample(packed: tuple[Path, PackReport]) -> None:
    shards, _ = packed
    manifest = read_manifest(str(shards))
    assert (manifest.num_classes, manifest.clip_frames, manifest.label_kind) == (8, 4, "classes")
    assert [r.key for r in manifest.rows] == [f"{s}_{t:06d}" for s in ("seq_0000", "seq_0001", "seq_0002")
                                              for t in (0, 3, 6)]
    assert manifest.shards("train") == ["train-000000.tar", "train-000001.tar"]
    assert manifest.shards("val") == ["val-000000.tar"] and manifest.samples("val") == 3
    for row in manifest.rows:
        assert row.split == split_of(row.sequence, 0.4)
        assert (row.frames, row.height, row.width, row.classes, row.has_edges) == (4, 32, 64, 8, True)
        index = {s.key: s for s in fmt.parse_index((shards / row.shard.replace(".tar", ".idx")).read_text())}
        assert row.bytes == index[row.key].bytes


def test_samples_decode_back_to_the_source(packed: tuple[Path, PackReport], source: Path,
                                           record_property) -> None:
    shards, _ = packed
    data = members(shards / "train-000000.tar")
    epes = []
    for start in (0, 3, 6):
        key, frames = f"seq_0000_{start:06d}", range(start, start + 4)
        seq = source / "seq_0000"
        meta = fmt.ClipMeta.from_json(data[f"{key}.json"])
        assert (meta.key, meta.sequence, meta.start_frame, meta.frames, meta.height, meta.width, meta.num_classes,
                meta.has_edges, meta.split) == (key, "seq_0000", start, 4, 32, 64, 8, True, "train")
        labels = np.stack([cv2.imread(str(seq / "labels" / f"{t:06d}.png"), cv2.IMREAD_UNCHANGED) for t in frames])
        assert np.array_equal(video.decode(data[f"{key}.label.webm"])[..., 0], labels)  # lossless: exact
        rgb = np.stack([cv2.imread(str(seq / "frames" / f"{t:06d}.png"))[..., ::-1] for t in frames])
        # luma PSNR: at 64x32 the 4:2:0 chroma alone costs ~29 dB on these colourful edges; the
        # neighbouring frame scores ~28 dB on luma, so 35 proves the right frames in the right order
        assert luma_psnr(video.decode(data[f"{key}.rgb.webm"]), rgb) > 35
        instances = np.stack([cv2.imread(str(seq / "instances" / f"{t:06d}.png"), cv2.IMREAD_UNCHANGED)
                              for t in frames])
        assert np.array_equal(video.decode(data[f"{key}.edge.webm"])[..., 0], fmt.instance_edges(instances))
        # the flow stream is the flow of this clip's own frame pairs; frame 0 has none
        flow, confidence = fmt.dequantize_flow(video.decode(data[f"{key}.flow.webm"]))
        assert not flow[0].any() and not confidence[0].any()
        expected_flow, expected_confidence = backward_flow(rgb.astype(np.uint8))
        assert np.array_equal(video.decode(data[f"{key}.flow.webm"]),
                              fmt.quantize_flow(expected_flow, expected_confidence))
        truth = np.stack([np.load(seq / "flow" / f"{t:06d}.npy") for t in frames])
        epes.append(endpoint_error(flow[1:], truth[1:]))
    record_property("packed_flow_epe_64x32", float(np.mean(epes)))
    assert np.mean(epes) < 0.6


def test_dali_reads_the_shards_through_their_index(packed: tuple[Path, PackReport], source: Path) -> None:
    from nvidia.dali import fn, pipeline_def

    shards, _ = packed
    tar, index = shards / "train-000001.tar", shards / "train-000001.idx"

    @pipeline_def(batch_size=2, num_threads=1, device_id=None)
    def read():
        meta, labels = fmt.META, fmt.LABEL
        encoded_meta, encoded = fn.readers.webdataset(paths=[str(tar)], index_paths=[str(index)],
                                                      ext=[meta, labels], random_shuffle=False)
        return encoded_meta, fn.decoders.video(encoded, device="cpu")

    pipe = read()
    pipe.build()
    metas, clips = pipe.run()
    expected = members(tar)
    for i in range(2):
        meta = fmt.ClipMeta.from_json(bytes(np.array(metas[i])))
        assert bytes(np.array(metas[i])) == expected[f"{meta.key}.json"]
        seq = source / meta.sequence
        labels = np.stack([cv2.imread(str(seq / "labels" / f"{t:06d}.png"), cv2.IMREAD_UNCHANGED)
                           for t in range(meta.start_frame, meta.start_frame + 4)])
        assert np.array_equal(np.array(clips[i])[..., 0], labels)


def test_rerun_resumes_and_a_shard_without_index_is_redone(source: Path, tmp_path: Path,
                                                           packed: tuple[Path, PackReport]) -> None:
    shards = tmp_path / "shards"
    pack(config(source, shards), progress=False)
    stamps = {p.name: p.stat().st_mtime_ns for p in shards.glob("*.tar")}
    again = pack(config(source, shards), progress=False)
    assert (again.shards_written, again.shards_resumed, again.clips, again.bytes) == (0, 3, 9, 0)
    assert {p.name: p.stat().st_mtime_ns for p in shards.glob("*.tar")} == stamps
    # a tar whose index never arrived (the run died between the two) does not count as finished
    (shards / "val-000000.idx").unlink()
    redo = pack(config(source, shards), progress=False)
    assert (redo.shards_written, redo.shards_resumed) == (1, 2)
    assert len(read_manifest(str(shards)).rows) == 9
    # packing is deterministic: the redone shard, and everything else, equals the first pack's bytes
    assert tar_bytes(shards) == tar_bytes(packed[0])


def test_worker_processes_give_the_same_bytes(source: Path, tmp_path: Path,
                                              packed: tuple[Path, PackReport]) -> None:
    report = pack(config(source, tmp_path / "pool", workers=2), progress=False)
    assert report.clips == 9
    assert tar_bytes(tmp_path / "pool") == tar_bytes(packed[0])


def test_other_settings_never_mix_into_a_finished_pack(source: Path, packed: tuple[Path, PackReport]) -> None:
    shards, _ = packed
    before = tar_bytes(shards)
    with pytest.raises(SettingsMismatchError, match=r"pack.json: .*rgb_crf: 18 there, 30 now"):
        pack(config(source, shards, rgb_crf=30), progress=False)
    assert tar_bytes(shards) == before


def indexes(folder: Path) -> list[Path]:
    """Published indexes (pathlib's glob also matches the hidden temporaries of a write in progress)."""
    return [p for p in folder.glob("*.idx") if not p.name.startswith(".")]


def test_a_killed_run_resumes_without_half_shards(source: Path, tmp_path: Path) -> None:
    shards = tmp_path / "killed"
    script = (f"from dataio.config import DataConfig, PackConfig\nfrom dataio.pack import pack\n"
              f"pack(DataConfig(shards={str(shards)!r}, num_classes=8, clip_frames=4, pack=PackConfig("
              f"source={str(source)!r}, clip_stride=3, clips_per_shard=1, val_fraction=0.4, workers=1)), "
              f"progress=False)\n")
    child = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not indexes(shards) and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    finished = sorted(p.stem for p in indexes(shards))
    assert 1 <= len(finished) < 9, child.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
    for name in finished:  # every shard that looks finished is whole
        with tarfile.open(shards / f"{name}.tar") as tar:
            assert [m.name.split(".")[0] for m in tar][::5] == [
                s.key for s in fmt.parse_index((shards / f"{name}.idx").read_text())]
    report = pack(config(source, shards, clips_per_shard=1), progress=False)
    assert (report.shards_resumed, report.shards_written) == (len(finished), 9 - len(finished))
    assert len(read_manifest(str(shards)).rows) == 9
    assert not list(shards.glob(".partial-*"))


def test_sequence_names_with_dots_make_valid_keys(source: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "street.01").symlink_to(source / "seq_0000")
    report = pack(config(src, tmp_path / "out", clip_stride=6), progress=False)
    assert report.clips == 2
    rows = read_manifest(str(tmp_path / "out")).rows
    assert [(r.key, r.sequence) for r in rows] == [("street-01_000000", "street.01"), ("street-01_000006", "street.01")]
    (src / "street-01").symlink_to(source / "seq_0001")
    with pytest.raises(BadInputError, match=r"street.01: its sample key name 'street-01' is also that of .*street-01"):
        pack(config(src, tmp_path / "out2"), progress=False)


def test_binary_masks_are_remapped_and_the_class_count_recorded(source: Path, tmp_path: Path) -> None:
    seq = tmp_path / "src" / "masks"
    (seq / "labels").mkdir(parents=True)
    (seq / "frames").symlink_to(source / "seq_0000" / "frames")
    for t in range(10):  # a 0/255 mask: "is it a vehicle or a person"
        labels = cv2.imread(str(source / "seq_0000" / "labels" / f"{t:06d}.png"), cv2.IMREAD_UNCHANGED)
        cv2.imwrite(str(seq / "labels" / f"{t:06d}.png"), np.where(labels >= 5, 255, 0).astype(np.uint8))
    cfg = config(tmp_path / "src", tmp_path / "out", num_classes=2, clip_stride=4, label_map={255: 1})
    report = pack(cfg, progress=False)
    assert report.clips == 2  # starts 0 and 4; frames 8-9 are a tail shorter than a clip: dropped
    manifest = read_manifest(str(tmp_path / "out"))
    assert manifest.num_classes == 2 and {r.classes for r in manifest.rows} == {2}
    data = members(tmp_path / "out" / manifest.rows[1].shard)
    assert fmt.ClipMeta.from_json(data["masks_000004.json"]).num_classes == 2
    decoded = video.decode(data["masks_000004.label.webm"])[..., 0]
    assert set(np.unique(decoded)) == {0, 1}
    assert "edge.webm" not in {n.split(".", 1)[1] for n in data}  # no instances/: no edge stream


@pytest.mark.parametrize("frames, fraction, train, val", [
    (24, 0.25, [0, 4, 8, 12], [18]),      # val: the last 6 frames (one clip of 4 from 18); train ends by 18
    (24, 0.1, [0, 4, 8, 12, 16], [20]),   # a tenth is 2 frames: at least one clip (4) is held out
    (6, 0.5, [0], range(0)),              # too short for a clip on each side: all of it trains
])
def test_split_by_time_holds_out_the_end_of_each_sequence(frames: int, fraction: float, train: list[int],
                                                          val: list[int]) -> None:
    cfg = DataConfig(clip_frames=4, pack=PackConfig(clip_stride=4, val_fraction=fraction, split="time"))
    starts = clip_starts("seq", frames, cfg)
    assert list(starts["train"]) == train and list(starts["val"]) == list(val)
    if starts["val"]:  # no frame in both splits
        assert max(starts["train"]) + cfg.clip_frames <= min(starts["val"])


def test_split_by_time_packs_one_sequence_into_both_splits_and_sequence_split_warns(
        source: Path, tmp_path: Path) -> None:
    one = tmp_path / "one"
    one.mkdir()
    (one / "seq_0000").symlink_to(source / "seq_0000")
    report = pack(config(one, tmp_path / "by_time", split="time", val_fraction=0.3), progress=False)
    rows = read_manifest(str(tmp_path / "by_time")).rows
    # 10 frames, clips of 4 every 3: val from frame 6 (the last 4), train clips end by then.
    assert [(r.split, r.start_frame) for r in rows] == [("train", 0), ("val", 6)]
    assert not report.warnings
    report = pack(config(one, tmp_path / "by_name", val_fraction=0.3), progress=False)
    assert {r.split for r in read_manifest(str(tmp_path / "by_name")).rows} == {"train"}
    assert report.warnings == ["no val clips (data.pack.split=sequence, data.pack.val_fraction=0.3, 1 sequence): "
                               "data.pack.split=time holds out the end of every sequence instead"]
    assert "warning: no val clips" in report.summary()
