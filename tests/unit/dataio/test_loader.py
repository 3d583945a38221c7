"""The DALI loader on real shards (synth + pack): round trips, one draw for every stream, flow
semantics, reproducibility, the rank split, and the CPU augmentation against the DALI graph's."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dataio import format as fmt
from dataio import reader, synth, video
from dataio.config import DataConfig, PackConfig, SynthConfig
from dataio.batch import ClipBatch
from dataio.loader import ClipLoader, build_loader
from dataio.pack import pack

H, W, CLIP = 64, 96, 8
CLASSES = 8
RGB_PSNR_DB = 25.0
"""Stated bound for the RGB round trip against the source frames: VP9 crf 18 in 4:2:0 on these small,
detailed synthetic frames measures 27-30 dB; the loader itself adds nothing (checked against PyAV)."""


def pack_synthetic(root: Path, val_fraction: float = 0.0) -> DataConfig:
    """3 synthetic sequences of 16 frames -> 9 clips of 8 frames, 2 clips per shard."""
    cfg = DataConfig(shards=str(root / "shards"), num_classes=CLASSES, clip_frames=CLIP,
                     synth=SynthConfig(out=str(root / "source"), sequences=3, frames=16, height=H, width=W),
                     pack=PackConfig(source=str(root / "source"), clips_per_shard=2, clip_stride=4,
                                     val_fraction=val_fraction, workers=1))
    synth.generate(cfg.synth)
    pack(cfg, progress=False)
    return cfg


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory) -> DataConfig:
    return pack_synthetic(tmp_path_factory.mktemp("loader"))


def with_loader(cfg: DataConfig, **loader: object) -> DataConfig:
    return dataclasses.replace(cfg, loader=dataclasses.replace(cfg.loader, **loader))


def source(cfg: DataConfig, sequence: str, stream: str, frames: range) -> np.ndarray:
    """Frames of the unpacked sequence: ``frames`` RGB, ``labels`` ids, ``instances`` ids."""
    folder = Path(cfg.pack.source) / sequence / stream
    images = [cv2.imread(str(folder / f"{t:06d}.png"), cv2.IMREAD_UNCHANGED) for t in frames]
    if stream == "frames":
        images = [cv2.cvtColor(image, cv2.COLOR_BGR2RGB) for image in images]
    return np.stack(images)


def meta_of(key: str) -> tuple[str, int]:
    """(sequence, first frame) of a sample key ``seq_0001_000004``."""
    sequence, start = key.rsplit("_", 1)
    return sequence, int(start)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0 ** 2 / max(mse, 1e-12)))


def to_uint8(rgb: torch.Tensor) -> np.ndarray:
    """[T, 3, H, W] in [-1, 1] -> uint8 [T, H, W, 3]."""
    return np.clip(np.rint((rgb.permute(0, 2, 3, 1).numpy() + 1) * 127.5), 0, 255).astype(np.uint8)


def nearest(frames: np.ndarray, box: tuple[int, int, int, int], flip: bool, height: int, width: int) -> np.ndarray:
    """The documented nearest-neighbour rule: src = start + (i + 0.5) * crop / out, then mirror."""
    y0, x0, y1, x1 = box
    ys = np.floor(y0 + (np.arange(height) + 0.5) * (y1 - y0) / height).astype(int)
    xs = np.floor(x0 + (np.arange(width) + 0.5) * (x1 - x0) / width).astype(int)
    out = frames[:, ys][:, :, xs]
    return out[:, :, ::-1] if flip else out


def test_labels_round_trip_bit_exact_and_rgb_within_psnr(packed: DataConfig) -> None:
    cfg = with_loader(packed, min_scale=1.0, flip=False, batch_size=1)
    loader = build_loader(cfg, H, W, CLIP)
    encoded = {s.key: s.streams[fmt.RGB] for s in reader.read_shards(cfg.shards, loader.shards)}
    seen = 0
    for batch in loader:
        sequence, first = meta_of(batch.keys[0])
        window = range(first, first + CLIP)
        assert batch.draws[0].box == (0, 0, H, W) and not batch.draws[0].flip
        labels = batch.labels[0]
        assert torch.equal(labels[:, :CLASSES].sum(1), torch.ones(CLIP, H, W))  # one-hot
        np.testing.assert_array_equal(labels[:, :CLASSES].argmax(1).numpy(), source(cfg, sequence, "labels", window))
        edges = fmt.instance_edges(source(cfg, sequence, "instances", window)) / 255.0
        np.testing.assert_array_equal(labels[:, CLASSES].numpy(), edges.astype(np.float32))
        rgb = to_uint8(batch.rgb[0])
        assert psnr(rgb, source(cfg, sequence, "frames", window)) > RGB_PSNR_DB
        # The codec's loss and nothing more: PyAV's accurate decode of the same stream.
        assert np.abs(rgb.astype(int) - video.decode(encoded[batch.keys[0]])).max() <= 1
        seen += 1
    assert seen == 9 and loader.stats.read == 9 and loader.stats.skipped == 0


def test_one_window_crop_and_flip_for_every_stream(packed: DataConfig) -> None:
    cfg = with_loader(packed, min_scale=0.6, flip=True, batch_size=3)
    out_h, out_w, frames = 48, 64, 5  # another aspect ratio than the clips' 64x96
    loader = build_loader(cfg, out_h, out_w, frames)
    flips, starts = set(), set()
    for _ in range(3):
        for batch in loader:
            for i, (key, draw) in enumerate(zip(batch.keys, batch.draws)):
                sequence, first = meta_of(key)
                window = range(first + draw.start, first + draw.start + frames)
                y0, x0, y1, x1 = draw.box
                assert abs((x1 - x0) / (y1 - y0) - out_w / out_h) < 0.05  # a crop never stretches
                got = batch.labels[i, :, :CLASSES].argmax(1).numpy()
                want = nearest(source(cfg, sequence, "labels", window), draw.box, draw.flip, out_h, out_w)
                assert (got != want).mean() < 0.002, key  # exact but for rounding at exact ties
                rgb = source(cfg, sequence, "frames", window)
                resized = np.stack([cv2.resize(f[y0:y1, x0:x1], (out_w, out_h), interpolation=cv2.INTER_AREA)
                                    for f in rgb])
                resized = resized[:, :, ::-1] if draw.flip else resized
                assert psnr(to_uint8(batch.rgb[i]), resized) > 27.0, key
                flips.add(draw.flip)
                starts.add(draw.start)
    assert flips == {False, True} and len(starts) > 1


def warp_error(batch: ClipBatch, flow: torch.Tensor) -> float:
    """Mean |rgb[t] - rgb[t-1] sampled at p + flow[t](p)| over confident pixels, t >= 1."""
    b, t, _, h, w = batch.rgb.shape
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")
    x = (xs + flow[:, 1:, 0]) / (w - 1) * 2 - 1  # align_corners=True: pixel centres at +-1
    y = (ys + flow[:, 1:, 1]) / (h - 1) * 2 - 1
    grid = torch.stack([x, y], dim=-1).reshape(b * (t - 1), h, w, 2)
    previous = batch.rgb[:, :-1].reshape(b * (t - 1), 3, h, w)
    warped = F.grid_sample(previous, grid, align_corners=True).reshape(b, t - 1, 3, h, w)
    inside = ((x.abs() < 1) & (y.abs() < 1) & (batch.flow_conf[:, 1:, 0] > 0.5)).unsqueeze(2)
    error = (warped - batch.rgb[:, 1:]).abs() * inside
    return float(error.sum() / inside.sum().clamp(min=1) / 3)


def test_flow_is_scaled_and_mirrored_with_the_image(packed: DataConfig) -> None:
    """Backward flow at the output size warps frame t-1 onto frame t, flipped or not, cropped and
    shrunk: with x negated (a missed mirror) or unscaled it warps worse."""
    cfg = with_loader(packed, min_scale=0.6, flip=True, batch_size=1)
    loader = build_loader(cfg, 32, 48, CLIP)
    checked = {False: 0, True: 0}
    for _ in range(2):
        for batch in loader:
            assert torch.all(batch.flow[:, 0] == 0) and torch.all(batch.flow_conf[:, 0] == 0)
            if batch.flow[:, 1:].abs().mean() < 0.3:
                continue  # too little motion to tell
            mirrored = batch.flow.clone()
            mirrored[:, :, 0] *= -1
            unscaled = batch.flow * 2  # as if not shrunk 2x to 32x48
            good = warp_error(batch, batch.flow)
            assert good < warp_error(batch, torch.zeros_like(batch.flow)), batch.keys
            assert good < warp_error(batch, mirrored) and good < warp_error(batch, unscaled), batch.keys
            checked[batch.draws[0].flip] += 1
    assert checked[False] and checked[True]


def test_cpu_augmentation_matches_the_dali_graph(packed: DataConfig) -> None:
    """The ``cpu`` path (OpenCV) and the graph the ``mixed`` path runs, here on the CPU, agree:
    labels exactly; the rest within interpolation differences (area vs DALI's antialias filter)."""
    cfg = with_loader(packed, min_scale=0.7, flip=True, batch_size=2)
    for height, width, frames in ((32, 48, 4), (80, 120, 6)):
        cpu = build_loader(cfg, height, width, frames)
        graph = ClipLoader(cfg, dataclasses.replace(cpu.spec, augment_in_graph=True), cpu.shards,
                           split="train", rank=0, world_size=1, epoch=0)
        for a, b in zip(cpu, graph, strict=True):
            assert a.keys == b.keys and a.draws == b.draws
            assert torch.equal(a.labels[:, :, :CLASSES], b.labels[:, :, :CLASSES])
            for name in ("rgb", "flow", "flow_conf"):
                assert (getattr(a, name) - getattr(b, name)).abs().mean() < 0.03, name
            assert (a.labels[:, :, CLASSES] - b.labels[:, :, CLASSES]).abs().mean() < 0.03


def test_shapes_ranges_and_channels(packed: DataConfig) -> None:
    loader = build_loader(with_loader(packed, batch_size=2), 32, 48, 4)
    assert loader.label_channels == CLASSES + 1  # synth sequences carry instances: edges
    batches = list(loader)
    assert len(batches) == 4  # 9 clips, batch 2: the short last batch of train is dropped
    for batch in batches:
        assert batch.rgb.shape == (2, 4, 3, 32, 48) and batch.rgb.dtype == torch.float32
        assert batch.labels.shape == (2, 4, CLASSES + 1, 32, 48)
        assert batch.flow.shape == (2, 4, 2, 32, 48) and batch.flow_conf.shape == (2, 4, 1, 32, 48)
        assert batch.rgb.min() >= -1 and batch.rgb.max() <= 1 and batch.rgb.device.type == "cpu"
        assert 0 <= batch.flow_conf.min() and batch.flow_conf.max() <= 1
        assert 0 <= batch.labels[:, :, CLASSES].min() and batch.labels[:, :, CLASSES].max() <= 1
        assert len(batch.keys) == 2
    with pytest.raises(ValueError, match="clip_frames"):
        build_loader(packed, 32, 48, CLIP + 1)


def test_mixed_refuses_what_nvdec_cannot_decode(packed: DataConfig) -> None:
    """Checked before any GPU is looked for: frames under NVDEC's VP9 minimum, NVDEC for lossless streams."""
    with pytest.raises(ValueError, match=rf"loader.device=mixed .* 128x128.* {W}x{H}: use data.loader.device=cpu"):
        build_loader(with_loader(packed, device="mixed"), 32, 48, 4)
    with pytest.raises(ValueError, match="label_device='same' is refused: NVDEC"):
        with_loader(packed, device="mixed", label_device="same")


def test_epochs_reshuffle_and_reproduce(packed: DataConfig) -> None:
    cfg = with_loader(packed, batch_size=3, shuffle_buffer=4)
    first = build_loader(cfg, 32, 48, 4)
    epoch0, epoch1 = list(first), list(first)
    again = list(build_loader(cfg, 32, 48, 4))
    resumed = list(build_loader(cfg, 32, 48, 4, epoch_seed=1))
    other_seed = list(build_loader(with_loader(cfg, seed=1), 32, 48, 4))

    def same(a: list[ClipBatch], b: list[ClipBatch]) -> bool:
        return all(x.keys == y.keys and x.draws == y.draws and torch.equal(x.rgb, y.rgb)
                   and torch.equal(x.labels, y.labels) and torch.equal(x.flow, y.flow) for x, y in zip(a, b))

    assert same(epoch0, again) and same(epoch1, resumed)
    assert [b.keys for b in epoch0] != [b.keys for b in epoch1]
    assert [b.draws for b in epoch0] != [b.draws for b in other_seed]


def test_ranks_read_disjoint_shards_that_cover_the_split(packed: DataConfig) -> None:
    cfg = with_loader(packed, batch_size=1)
    keys = [[k for b in build_loader(cfg, 32, 48, 4, rank=r, world_size=2) for k in b.keys] for r in (0, 1)]
    assert not set(keys[0]) & set(keys[1])
    assert sorted(keys[0] + keys[1]) == sorted(k for b in build_loader(cfg, 32, 48, 4) for k in b.keys)
    assert len(keys[0] + keys[1]) == 9
    with pytest.raises(ValueError, match="cannot be split over 6 ranks"):
        build_loader(cfg, 32, 48, 4, rank=0, world_size=6)


def test_a_held_batch_is_never_overwritten(packed: DataConfig) -> None:
    """Batch memory is recycled once dropped; a batch the consumer keeps stays intact."""
    loader = build_loader(with_loader(packed, batch_size=1), 32, 48, 4)
    batches = iter(loader)
    kept = next(batches)
    snapshot = kept.labels.clone(), kept.rgb.clone()
    later = [b.rgb.data_ptr() for b in batches]
    assert torch.equal(kept.labels, snapshot[0]) and torch.equal(kept.rgb, snapshot[1])
    assert kept.rgb.data_ptr() not in later
    assert len(set(later)) < len(later)  # dropped batches' memory came back


def test_val_split_has_no_augmentation_and_keeps_the_short_batch(tmp_path: Path) -> None:
    cfg = pack_synthetic(tmp_path, val_fraction=0.4)  # seq_0002 hashes into val: 3 clips
    loader = build_loader(with_loader(cfg, batch_size=2), H, W, 4, split="val")
    batches = list(loader)
    assert [len(b.keys) for b in batches] == [2, 1]
    assert all(d == batches[0].draws[0].__class__(0, (0, 0, H, W), False) for b in batches for d in b.draws)
    with pytest.raises(FileNotFoundError, match="no test shards"):
        build_loader(cfg, H, W, 4, split="test")


def repack(cfg: DataConfig, folder: Path, change) -> DataConfig:
    """The packed samples rewritten by ``change(meta, members)`` into ``folder``, with their .idx
    but no manifest (as hand-made shards would be): the loader lists the tars and reads the first
    sample for the layout."""
    folder.mkdir()
    shards = reader.list_shards(cfg.shards, "train")
    for number, shard in enumerate(shards):
        samples = []
        for sample in reader.read_shards(cfg.shards, [shard]):
            members = dict(sample.streams)
            meta = change(sample.meta, members)
            samples.append((sample.key, {fmt.META: meta.to_json(), **members}))
        name = fmt.shard_name("train", number)
        (folder / f"{name}.idx").write_text(fmt.write_shard(samples, folder / f"{name}.tar"))
    return dataclasses.replace(cfg, shards=str(folder))


def test_rgb_label_renderings_come_scaled_to_unit_range(packed: DataConfig, tmp_path: Path) -> None:
    renderings = {}

    def as_rendering(meta: fmt.ClipMeta, members: dict[str, bytes]) -> fmt.ClipMeta:
        frames = video.decode(members[fmt.RGB])  # any 3-channel picture will do
        renderings[meta.key] = frames
        members[fmt.LABEL] = video.encode_lossless(frames)
        del members[fmt.EDGE]
        return dataclasses.replace(meta, label_kind="rgb", has_edges=False)

    cfg = repack(packed, tmp_path / "rgb", as_rendering)
    loader = build_loader(with_loader(cfg, min_scale=1.0, flip=False, batch_size=3), H, W, CLIP)
    assert loader.label_channels == 3
    batches = list(loader)
    assert len(batches) == 3
    for batch in batches:
        for i, key in enumerate(batch.keys):
            want = renderings[key].transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255)
            np.testing.assert_allclose(batch.labels[i].numpy(), want, atol=1e-6)


def test_a_sample_without_edges_gets_a_zero_edge_channel(packed: DataConfig, tmp_path: Path) -> None:
    without = set()

    def drop_some_edges(meta: fmt.ClipMeta, members: dict[str, bytes]) -> fmt.ClipMeta:
        if meta.start_frame == 4:  # the middle clip of each sequence
            without.add(meta.key)
            del members[fmt.EDGE]
            return dataclasses.replace(meta, has_edges=False)
        return meta

    cfg = repack(packed, tmp_path / "edges", drop_some_edges)
    loader = build_loader(with_loader(cfg, batch_size=1), 32, 48, 4)
    assert loader.label_channels == CLASSES + 1  # the first sample has edges
    for batch in loader:
        has_edges = batch.labels[0, :, CLASSES].max() > 0
        assert has_edges == (batch.keys[0] not in without), batch.keys
    assert loader.stats.skipped == 0 and len(without) == 3
