"""The input layouts users already have on disk, packed as they are: the reference vid2vid code's
(train_A/ label maps with 35 Cityscapes ids, train_B/ frames, train_inst/ 8-bit instance maps) and
DAVIS's (JPEGImages/480p/, Annotations/480p/ with 0/255 masks); and one long sequence split by time."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dataio.config import DataConfig, PackConfig
from dataio.manifest import read_manifest
from dataio.pack import pack
from dataio.sources import BadInputError, ReadOptions, scan_sequence, sequence_sources

H, W, T = 32, 64, 12


def frames(seed: int) -> np.ndarray:
    """A textured picture panning 1 px per frame (a sensible flow target), [T, H, W, 3]."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (H, W + T, 3), dtype=np.uint8)
    return np.stack([base[:, t:t + W] for t in range(T)])


def write_vid2vid(root: Path, sequences: list[str], phase: str = "train") -> None:
    for name in sequences:
        for sub in ("A", "B", "inst"):
            (root / f"{phase}_{sub}" / name).mkdir(parents=True)
        rgb = frames(len(name))
        ids = np.zeros((H, W), np.uint8)
        ids[:, : W // 2], ids[H // 2:, :] = 7, 26  # Cityscapes ids: road, car (of 35)
        for t in range(T):
            stem = f"{name}_{t:06d}"
            Image.fromarray(rgb[t]).save(root / f"{phase}_B" / name / f"{stem}_leftImg8bit.png")
            Image.fromarray(np.roll(ids, t, axis=1)).save(root / f"{phase}_A" / name / f"{stem}_gtFine_labelIds.png")
            inst = np.where(np.roll(ids, t, axis=1) == 26, 1, 0).astype(np.uint8)  # 8-bit instance ids
            Image.fromarray(inst).save(root / f"{phase}_inst" / name / f"{stem}_gtFine_instanceIds.png")


def write_davis(root: Path, name: str) -> None:
    images, masks = root / "JPEGImages" / "480p" / name, root / "Annotations" / "480p" / name
    images.mkdir(parents=True)
    masks.mkdir(parents=True)
    rgb = frames(3)
    for t in range(T):
        Image.fromarray(rgb[t]).save(images / f"{t:05d}.jpg", quality=95)
        mask = np.zeros((H, W), np.uint8)
        mask[8:24, 10 + t:30 + t] = 255  # one object, stored as 0/255
        Image.fromarray(mask).save(masks / f"{t:05d}.png")


def config(source: Path, shards: Path, **pack_options) -> DataConfig:
    options = {"clip_stride": 4, "clips_per_shard": 4, "val_fraction": 0.0, "workers": 1, **pack_options}
    return DataConfig(shards=str(shards), num_classes=options.pop("num_classes", 35), clip_frames=4,
                      pack=PackConfig(source=str(source), **options))


def test_vid2vid_layout_packs_as_it_is(tmp_path: Path) -> None:
    write_vid2vid(tmp_path / "Cityscapes", ["stuttgart_00", "stuttgart_01"])
    sources = sequence_sources(tmp_path / "Cityscapes", "vid2vid")
    assert [s.name for s in sources] == ["stuttgart_00", "stuttgart_01"]
    seq = scan_sequence(sources[0], ReadOptions(num_classes=35, clip_frames=4))
    assert seq.frames == T and seq.has_instances and seq.frame_files[0].parent.name == "stuttgart_00"
    report = pack(config(tmp_path / "Cityscapes", tmp_path / "shards", layout="vid2vid"), progress=False)
    manifest = read_manifest(str(tmp_path / "shards"))
    assert report.clips == 6 and len(manifest.rows) == 6  # 3 clips of 4 frames per 12-frame sequence
    assert all(row.has_edges and row.classes == 35 for row in manifest.rows)
    assert {row.sequence for row in manifest.rows} == {"stuttgart_00", "stuttgart_01"}


def test_vid2vid_layout_names_a_missing_partner_folder(tmp_path: Path) -> None:
    write_vid2vid(tmp_path / "Cityscapes", ["stuttgart_00"])
    (tmp_path / "Cityscapes" / "train_A" / "stuttgart_09").mkdir()
    source = sequence_sources(tmp_path / "Cityscapes", "vid2vid")[1]
    with pytest.raises(BadInputError, match=r"train_B/stuttgart_09: no folder of frames for the label maps"):
        scan_sequence(source, ReadOptions(num_classes=35, clip_frames=4))
    with pytest.raises(BadInputError, match=r"no train_A/ \(or test_A/\) folder"):
        sequence_sources(tmp_path, "vid2vid")


def test_davis_layout_with_0_255_masks(tmp_path: Path) -> None:
    write_davis(tmp_path / "DAVIS", "blackswan")
    with pytest.raises(BadInputError, match=r"Annotations/480p/blackswan/00000.png: label value 255 .* "
                                            r"remap them with data.pack.label_map"):
        pack(config(tmp_path / "DAVIS", tmp_path / "refused", layout="davis", num_classes=2), progress=False)
    report = pack(config(tmp_path / "DAVIS", tmp_path / "shards", layout="davis", num_classes=2,
                         label_map={255: 1}, split="time", val_fraction=0.25), progress=False)
    rows = read_manifest(str(tmp_path / "shards")).rows
    # One sequence of 12 frames split by time: the last clip (frames 8-11) held out, train before it.
    assert [(r.split, r.start_frame) for r in rows] == [("train", 0), ("train", 4), ("val", 8)]
    assert not report.warnings and not rows[0].has_edges
