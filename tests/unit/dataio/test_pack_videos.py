"""The real videos of tests/data (SOURCES.md): counts and sizes, exact range reads, and the H.264
file packed (transcoded to VP9) and decoded by DALI's CPU decoder, which refuses H.264 itself."""
from __future__ import annotations

import tarfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from dataio import format as fmt
from dataio import video
from dataio.config import DataConfig, PackConfig
from dataio.manifest import read_manifest
from dataio.pack import pack

# file: (codec, width, height, frames, fps), as SOURCES.md lists them
LISTED = {"flower.mp4": ("h264", 960, 540, 150, 29.97), "flower.webm": ("vp8", 960, 540, 150, 29.97),
          "bbb_180_10s_vp9.webm": ("vp9", 320, 180, 300, 30.0)}


@pytest.mark.parametrize("name", sorted(LISTED))
def test_real_videos_have_the_listed_frames_and_sizes(test_videos: Path, name: str) -> None:
    info = video.scan(test_videos / name)  # decodes every frame; audio streams are ignored
    codec, width, height, frames, fps = LISTED[name]
    assert (info.codec, info.width, info.height, info.frames) == (codec, width, height, frames)
    assert info.fps == pytest.approx(fps, abs=0.01)
    assert info.pts is not None  # timestamps increase: range reads may seek


def test_range_reads_seek_to_exactly_the_frames_a_full_decode_gives(test_videos: Path) -> None:
    path = test_videos / "bbb_180_10s_vp9.webm"
    everything = video.decode(path)
    info = video.scan(path)
    for start, stop in ((0, 4), (137, 153), (284, 300)):
        assert np.array_equal(video.decode_range(path, start, stop, info.pts), everything[start:stop])
    assert np.array_equal(video.decode_range(path, 137, 141), everything[137:141])  # no timestamps: counts
    with pytest.raises(video.VideoError, match="wanted frames \\[298, 302\\), the video has 300"):
        video.decode_range(path, 298, 302)


def test_h264_video_is_transcoded_packed_and_decodes_on_the_cpu(test_videos: Path, tmp_path: Path) -> None:
    source = tmp_path / "src" / "flower"
    (source / "labels").mkdir(parents=True)
    (source / "rgb.mp4").symlink_to(test_videos / "flower.mp4")
    # label maps at the video's own 960x540 (the files carry none): three vertical bands that drift
    columns = np.arange(960)
    bands = np.stack([np.broadcast_to(((columns + 5 * t) // 320 % 3).astype(np.uint8), (540, 960))
                      for t in range(150)])
    for t, band in enumerate(bands):
        cv2.imwrite(str(source / "labels" / f"{t:06d}.png"), band)
    cfg = DataConfig(shards=str(tmp_path / "shards"), num_classes=3, clip_frames=8,
                     pack=PackConfig(source=str(tmp_path / "src"), clip_stride=64, resize=[64, 112], workers=1,
                                     val_fraction=0.0))
    report = pack(cfg, progress=False)
    assert report.clips == 3  # starts 0, 64, 128 (136..149 is a tail shorter than a clip's stride)
    manifest = read_manifest(cfg.shards)
    assert {(r.height, r.width, r.frames) for r in manifest.rows} == {(64, 112, 8)}
    with tarfile.open(Path(cfg.shards) / manifest.rows[1].shard) as tar:
        data = {m.name: tar.extractfile(m).read() for m in tar}  # type: ignore[union-attr]
    key = "flower_000064"
    assert fmt.ClipMeta.from_json(data[f"{key}.json"]).fps == pytest.approx(29.97, abs=0.01)
    assert video.probe(data[f"{key}.rgb.webm"])["codec"] == "vp9"

    decoded = dali_cpu_decode(data[f"{key}.rgb.webm"])
    source_frames = video.decode_range(test_videos / "flower.mp4", 64, 72)
    expected = np.stack([cv2.resize(f, (112, 64), interpolation=cv2.INTER_AREA) for f in source_frames])
    mse = np.mean((decoded.astype(np.float64) - expected) ** 2)
    assert 10 * np.log10(255 ** 2 / mse) > 30
    labels = video.decode(data[f"{key}.label.webm"])[..., 0]
    # nearest neighbour: the source pixel under each packed pixel's centre
    rows, cols = ((np.arange(64) + 0.5) * 540 / 64).astype(int), ((np.arange(112) + 0.5) * 960 / 112).astype(int)
    assert np.array_equal(labels, bands[64:72][:, rows][:, :, cols])


def dali_cpu_decode(encoded: bytes) -> np.ndarray:
    from nvidia.dali import fn, pipeline_def

    @pipeline_def(batch_size=1, num_threads=1, device_id=None)
    def decode():
        return fn.decoders.video(fn.external_source(source=lambda: [np.frombuffer(encoded, np.uint8)], batch=True),
                                 device="cpu")

    pipe = decode()
    pipe.build()
    return np.array(pipe.run()[0][0])
