"""Reading the packing input layout: folders of frames or a video, labels, instances; every bad input."""
from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dataio import video
from dataio.sources import BadInputError, ReadOptions, read_clip, scan_sequence, sequence_folders

H, W = 32, 48


def rgb_frames(count: int, height: int = H, width: int = W) -> np.ndarray:
    rng = np.random.default_rng(count)
    return rng.integers(0, 256, (count, height, width, 3), dtype=np.uint8)


def write_sequence(folder: Path, count: int = 6, *, height: int = H, width: int = W, labels=None,
                   instances=None, frame_ext: str = ".png", names=None) -> Path:
    """A sequence folder in the input layout; labels default to a diagonal pattern of ids 0..3."""
    names = names or [f"{t:06d}" for t in range(count)]
    frames = rgb_frames(count, height, width)
    if labels is None:
        labels = (np.add.outer(np.arange(height), np.arange(width)) // 8 % 4).astype(np.uint8)
        labels = np.stack([np.roll(labels, t, axis=1) for t in range(count)])
    for sub in ("frames", "labels"):
        (folder / sub).mkdir(parents=True)
    for t, name in enumerate(names):
        Image.fromarray(frames[t]).save(folder / "frames" / f"{name}{frame_ext}", quality=95)
        Image.fromarray(labels[t]).save(folder / "labels" / f"{name}.png")
    if instances is not None:
        (folder / "instances").mkdir()
        for t, name in enumerate(names):
            Image.fromarray(instances[t]).save(folder / "instances" / f"{name}.png")
    return folder


OPTS = ReadOptions(num_classes=4, clip_frames=4)


def test_frames_labels_and_16_bit_instances_read_back(tmp_path: Path) -> None:
    ids = np.zeros((6, H, W), np.uint16)
    ids[:, :, W // 2:] = 7001  # a 16-bit id, as Cityscapes writes them
    folder = write_sequence(tmp_path / "walk", instances=ids)
    seq = scan_sequence(folder, OPTS)
    assert (seq.frames, seq.height, seq.width, seq.has_instances) == (6, H, W, True)
    clip = read_clip(seq, 1, 5, OPTS)
    expected = np.asarray(Image.open(folder / "frames" / "000003.png"))
    assert np.array_equal(clip.frames[2], expected)
    assert np.array_equal(clip.labels[0], np.asarray(Image.open(folder / "labels" / "000001.png")))
    assert clip.instances is not None and set(np.unique(clip.instances)) == {0, 7001}


def test_files_pair_in_natural_order(tmp_path: Path) -> None:
    names = ["f1", "f2", "f10"]  # plain sorting would put f10 second
    labels = np.stack([np.full((H, W), t, np.uint8) for t in range(3)])
    folder = write_sequence(tmp_path / "s", 3, labels=labels, names=names)
    seq = scan_sequence(folder, ReadOptions(num_classes=4, clip_frames=3))
    assert [p.name for p in seq.frame_files] == ["f1.png", "f2.png", "f10.png"]
    clip = read_clip(seq, 0, 3, ReadOptions(num_classes=4, clip_frames=3))
    assert [int(m[0, 0]) for m in clip.labels] == [0, 1, 2]


def test_odd_sizes_lose_the_last_row_and_column(tmp_path: Path) -> None:
    folder = write_sequence(tmp_path / "odd", height=33, width=49, frame_ext=".jpg")
    seq = scan_sequence(folder, OPTS)
    assert (seq.height, seq.width) == (33, 49) and seq.packed_size(OPTS) == (32, 48)
    clip = read_clip(seq, 0, 4, OPTS)
    assert clip.frames.shape == (4, 32, 48, 3) and clip.labels.shape == (4, 32, 48)
    full = np.asarray(Image.open(folder / "labels" / "000000.png"))
    assert np.array_equal(clip.labels[0], full[:32, :48])


def test_resize_keeps_label_ids_exact(tmp_path: Path) -> None:
    folder = write_sequence(tmp_path / "big")
    opts = ReadOptions(num_classes=4, clip_frames=4, resize=(16, 24))
    clip = read_clip(scan_sequence(folder, opts), 0, 4, opts)
    assert clip.frames.shape == (4, 16, 24, 3)
    full = np.asarray(Image.open(folder / "labels" / "000000.png"))
    assert np.array_equal(clip.labels[0], full[1::2, 1::2])  # nearest: no blended, invented ids


def test_full_size_frames_are_resized_as_they_are_read(tmp_path: Path) -> None:
    # Packing sizes its worker tasks by the packed frames (dataio.pack.RUN_PIXELS): full-size frames
    # (Cityscapes is 2048x1024) must not be stacked at their source size first, from files or a video.
    count, height, width = 12, 512, 1024
    labels = np.zeros((count, height, width), np.uint8)
    folder = write_sequence(tmp_path / "big", count, height=height, width=width, labels=labels)
    frames = np.stack([np.asarray(Image.open(p)) for p in sorted((folder / "frames").iterdir())])
    (tmp_path / "video").mkdir()
    (tmp_path / "video" / "labels").symlink_to(folder / "labels")
    (tmp_path / "video" / "rgb.webm").write_bytes(video.encode_rgb(frames, crf=30))
    opts = ReadOptions(num_classes=4, clip_frames=count, resize=(32, 64))
    one_frame = height * width * 4  # RGB and its labels at the source size
    for source in (folder, tmp_path / "video"):
        seq = scan_sequence(source, opts)
        tracemalloc.start()
        try:
            clip = read_clip(seq, 0, count, opts)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert clip.frames.shape == (count, 32, 64, 3) and clip.labels.shape == (count, 32, 64)
        assert peak < 4 * one_frame, (source.name, peak / one_frame)  # all twelve would be 12x


def test_binary_mask_saved_as_0_255_is_remapped(tmp_path: Path) -> None:
    mask = np.zeros((6, H, W), np.uint8)
    mask[:, 8:20, 10:30] = 255
    folder = write_sequence(tmp_path / "mask", labels=mask)
    with pytest.raises(BadInputError, match=r"mask/labels/000000.png: label value 255 .*label_map"):
        scan_sequence(folder, ReadOptions(num_classes=2, clip_frames=4))
    opts = ReadOptions(num_classes=2, clip_frames=4, label_map=((255, 1),))
    clip = read_clip(scan_sequence(folder, opts), 0, 4, opts)
    assert np.array_equal(clip.labels, (mask[:4] == 255).astype(np.uint8))


def test_sparse_16_bit_ids_and_palette_labels(tmp_path: Path) -> None:
    sparse = np.full((6, H, W), 1000, np.uint16)
    sparse[:, :, :10] = 2000
    folder = write_sequence(tmp_path / "sparse", labels=sparse)
    opts = ReadOptions(num_classes=8, clip_frames=4, label_map=((1000, 3), (2000, 5)))
    clip = read_clip(scan_sequence(folder, opts), 0, 4, opts)
    assert set(np.unique(clip.labels)) == {3, 5}
    # a palette PNG stores indices (the class ids) and colours for viewing: the indices count
    palette = tmp_path / "pal"
    write_sequence(palette)
    for path in (palette / "labels").iterdir():
        image = Image.open(path).convert("P")
        image.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255, 9, 9, 9] + [0] * 756)
        image.save(path)
    clip = read_clip(scan_sequence(palette, OPTS), 0, 4, OPTS)
    assert set(np.unique(clip.labels)) == {0, 1, 2, 3}


def test_rgb_renderings_are_kept_as_colours(tmp_path: Path) -> None:
    colours = rgb_frames(6)
    folder = write_sequence(tmp_path / "pose", labels=colours)
    opts = ReadOptions(num_classes=4, clip_frames=4, label_kind="rgb")
    clip = read_clip(scan_sequence(folder, opts), 0, 4, opts)
    assert np.array_equal(clip.labels, colours[:4])
    with pytest.raises(BadInputError, match="pose/labels/000000.png: a colour image .*label_kind=rgb"):
        scan_sequence(folder, OPTS)


def test_rgb_from_a_video_file(tmp_path: Path) -> None:
    folder = write_sequence(tmp_path / "vid")
    frames = np.stack([np.asarray(Image.open(p)) for p in sorted((folder / "frames").iterdir())])
    (folder / "rgb.webm").write_bytes(video.encode_rgb(frames, crf=10))
    for path in (folder / "frames").iterdir():
        path.unlink()
    (folder / "frames").rmdir()
    seq = scan_sequence(folder, OPTS)
    assert seq.video == folder / "rgb.webm" and (seq.frames, seq.height, seq.width) == (6, H, W)
    clip = read_clip(seq, 2, 6, OPTS)
    assert np.array_equal(clip.frames, video.decode(folder / "rgb.webm")[2:6])


def test_source_folder_lists_sequences_naturally(tmp_path: Path) -> None:
    for name in ("seq10", "seq2", ".hidden"):
        (tmp_path / name).mkdir()
    (tmp_path / "README.txt").write_text("notes")
    assert [p.name for p in sequence_folders(tmp_path)] == ["seq2", "seq10"]
    with pytest.raises(BadInputError, match="no sequence folders"):
        sequence_folders(tmp_path / "seq2")


def test_what_systems_leave_in_folders_is_ignored_and_one_sequence_is_not_a_source(tmp_path: Path) -> None:
    folder = write_sequence(tmp_path / "src" / "walk")
    for sub in ("frames", "labels"):
        (folder / sub / "Thumbs.db").write_bytes(b"x")
        (folder / sub / "desktop.ini").write_text("x")
        (folder / sub / "._000000.png").write_bytes(b"\x00\x05\x16\x07")  # macOS's resource fork
    (tmp_path / "src" / "__MACOSX").mkdir()
    assert [p.name for p in sequence_folders(tmp_path / "src")] == ["walk"]
    assert scan_sequence(folder, OPTS).frames == 6
    # data.pack.source pointed at the one sequence of a long video, not the folder above it
    with pytest.raises(BadInputError, match=r"src/walk: is one sequence .* here its parent"):
        sequence_folders(folder)


def test_16_bit_grey_frames_are_scaled_not_clipped(tmp_path: Path) -> None:
    folder = write_sequence(tmp_path / "deep")
    ramp = np.tile(np.linspace(0, 65535, W).astype(np.uint16), (H, 1))
    for path in (folder / "frames").iterdir():
        Image.fromarray(ramp).save(path)  # mode I;16
    clip = read_clip(scan_sequence(folder, OPTS), 0, 4, OPTS)
    assert clip.frames[0, 0, 0].tolist() == [0, 0, 0] and clip.frames[0, 0, -1].tolist() == [255, 255, 255]
    assert abs(int(clip.frames[0, 0, W // 2, 0]) - 127) <= 3  # Pillow's own conversion gave 255 here


def test_a_resize_too_small_for_the_flow_is_a_config_error() -> None:
    from dataio.config import PackConfig
    with pytest.raises(ValueError, match=r"resize must be \[height, width\], even and >= 16, got \[8, 16\]"):
        PackConfig(resize=[8, 16])


def test_label_map_outside_the_classes_is_a_config_error() -> None:
    with pytest.raises(ValueError, match=r"data.pack.label_map: 255 -> 4"):
        ReadOptions(num_classes=4, clip_frames=4, label_map=((255, 4),))


# ---------------------------------------------------------------------------------------------
# bad inputs: each names the offending file or folder


def corrupt(folder: Path, problem: str) -> str:
    """Damage a good sequence; returns the path fragment the error must name."""
    if problem == "count":
        (folder / "labels" / "000005.png").unlink()
        return "bad/labels: 5 label maps but 6 frames in bad/frames: frame 000005.png has no partner numbered 5"
    if problem == "gap":
        (folder / "labels" / "000002.png").unlink()
        return "bad/labels: 5 label maps but 6 frames in bad/frames: frame 000002.png has no partner numbered 2"
    if problem == "extra":
        (folder / "frames" / "000003.png").unlink()
        return "bad/labels: 6 label maps but 5 frames in bad/frames: 000003.png has no frame numbered 3"
    if problem == "label size":
        Image.fromarray(np.zeros((H, W + 2), np.uint8)).save(folder / "labels" / "000002.png")
        return "bad/labels/000002.png: size 50x32 differs"
    if problem == "frame size":
        Image.fromarray(rgb_frames(1, H + 2)[0]).save(folder / "frames" / "000004.png")
        return "bad/frames/000004.png: size 48x34 differs"
    if problem == "truncated":
        data = (folder / "frames" / "000003.png").read_bytes()
        (folder / "frames" / "000003.png").write_bytes(data[: len(data) // 2])
        return "bad/frames/000003.png: unreadable image"
    if problem == "not an image":
        (folder / "labels" / "000001.png").write_text("hello")
        return "bad/labels/000001.png: unreadable image"
    if problem == "class":
        labels = np.zeros((H, W), np.uint8)
        labels[3, 5] = 9
        Image.fromarray(labels).save(folder / "labels" / "000004.png")
        return "bad/labels/000004.png: label value 9 at x=5, y=3 is not a class below data.num_classes=4"
    if problem == "short":
        for t in (3, 4, 5):
            (folder / "frames" / f"{t:06d}.png").unlink()
            (folder / "labels" / f"{t:06d}.png").unlink()
        return "bad/frames: 3 frames, fewer than one clip"
    if problem == "cityscapes gap":  # every frame's name ends in the 8 of leftImg8bit
        for sub, suffix in (("frames", "leftImg8bit"), ("labels", "gtFine_labelIds")):
            for path in sorted((folder / sub).iterdir()):
                path.rename(path.with_name(f"stuttgart_00_000000_{path.stem}_{suffix}.png"))
        (folder / "labels" / "stuttgart_00_000000_000003_gtFine_labelIds.png").unlink()
        return ("bad/labels: 5 label maps but 6 frames in bad/frames: frame "
                "stuttgart_00_000000_000003_leftImg8bit.png has no partner numbered 3")
    if problem == "stray file":
        (folder / "frames" / "notes.txt").write_text("x")
        return "bad/frames/notes.txt: not a PNG/JPG/JPEG file"
    if problem == "no labels":
        for path in (folder / "labels").iterdir():
            path.unlink()
        (folder / "labels").rmdir()
        return "bad: no labels/ folder"
    if problem == "frames and video":
        (folder / "rgb.mp4").write_bytes(b"")
        return "bad: holds both frames/ and rgb.mp4"
    if problem == "bad video":
        for path in (folder / "frames").iterdir():
            path.unlink()
        (folder / "frames").rmdir()
        (folder / "rgb.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 100)
        return "bad/rgb.mp4: unreadable video"
    raise AssertionError(problem)


@pytest.mark.parametrize("problem", ["count", "gap", "cityscapes gap", "extra", "label size", "frame size", "truncated",
                                     "not an image", "class", "short", "stray file", "no labels",
                                     "frames and video", "bad video"])
def test_bad_input_names_the_file(tmp_path: Path, problem: str) -> None:
    folder = write_sequence(tmp_path / "bad")
    expected = corrupt(folder, problem)
    with pytest.raises(BadInputError) as caught:
        scan_sequence(folder, OPTS)
    assert expected in str(caught.value).replace(str(tmp_path) + "/", "")
