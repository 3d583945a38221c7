"""The packing input layouts, read into arrays and validated.

``pack.source`` is a folder of sequences (hidden folders and loose files are ignored), laid out as
``pack.layout`` says. ``ours``, one sub-folder per sequence::

    source/
      street_0001/
        frames/      000000.png 000001.png ...   RGB frames, PNG or JPEG
        labels/      000000.png 000001.png ...   label maps, PNG (always a folder)
        instances/   000000.png ...              optional instance ids (8- or 16-bit PNG, or RGB colours)
      street_0002/
        rgb.mp4                                  or the RGB frames as one video (mp4 webm mkv avi mov,
        labels/ ...                              any codec PyAV reads: H.264 is transcoded when packing)

``vid2vid``, the reference code's (NVIDIA/vid2vid ``datasets/Cityscapes``): ``train_A/<seq>/`` label
maps, ``train_B/<seq>/`` frames, optional ``train_inst/<seq>/`` instance maps (``test_*`` when there is
no ``train_A``). ``davis``, the DAVIS benchmark's: ``JPEGImages/<resolution>/<seq>/`` frames and
``Annotations/<resolution>/<seq>/`` object masks (palette indices; 0/255 masks need
``pack.label_map``), with ``480p`` taken when several resolutions are there.

Files pair up by position in natural sort order (``2.png`` before ``10.png``), not by name; every
stream of a sequence must hold the same number of frames, all of the frames' size. Label maps hold
class ids (8- or 16-bit greyscale or palette PNG; a palette image's indices are the ids), remapped by
``pack.label_map`` and refused when not below ``data.num_classes``; with ``pack.label_kind: rgb`` they
are 3-channel renderings (pose, edges) kept as they are. Frames are packed at their size with a trailing
odd row or column cropped (VP9 needs even sizes), or resized to ``pack.resize`` (frames with area or
bilinear filtering, labels and instances nearest). EXIF orientation is not applied, to frames or labels.

Everything wrong with a sequence raises ``BadInputError`` whose message starts with the file or folder.
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from collections.abc import Sequence as Sequence_  # "Sequence" is our sequence folder below
from typing import Literal

import cv2
import numpy as np
from PIL import Image

from dataio import video
from dataio.config import MIN_SIDE
from dataio.errors import UserInputError
from dataio.labels import LabelSpec

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
VIDEO_SUFFIXES = (".mp4", ".webm", ".mkv", ".avi", ".mov")
OS_LITTER = {"thumbs.db", "ehthumbs.db", "desktop.ini", "__macosx"}
"""Files and folders that file managers and archivers leave beside a user's own (with every name
starting with ``.``: ``.DS_Store``, macOS's ``._*`` resource forks)."""


Layout = Literal["ours", "vid2vid", "davis"]


class BadInputError(UserInputError, ValueError):
    """An input that cannot be packed. ``path`` is the offending file or folder; the message starts with it."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path, self.problem = str(path), problem
        super().__init__(f"{path}: {problem}")

    def __reduce__(self):  # keep both arguments across the process pool's pickling
        return (BadInputError, (self.path, self.problem))


@dataclasses.dataclass(frozen=True)
class ReadOptions:
    """What reading needs from the config (``ReadOptions.from_config``); small and picklable."""
    num_classes: int
    clip_frames: int
    label_kind: Literal["classes", "rgb"] = "classes"
    label_map: tuple[tuple[int, int], ...] = ()
    """(stored value, class id) pairs."""
    resize: tuple[int, int] | None = None
    """(height, width), or None to keep each sequence's size (odd trailing row/column cropped)."""
    remedy: str = "remap them with data.pack.label_map"
    """What a label value that is no class asks of the user (generating: the model's classes are fixed)."""

    def __post_init__(self) -> None:
        for stored, class_id in self.label_map:
            if not 0 <= stored <= 65535:
                raise ValueError(f"data.pack.label_map: stored value {stored} is not a 16-bit label value")
            if not 0 <= class_id < self.num_classes:
                raise ValueError(f"data.pack.label_map: {stored} -> {class_id}, but class ids must be in "
                                 f"[0, data.num_classes={self.num_classes})")
        if self.label_map and self.label_kind != "classes":
            raise ValueError("data.pack.label_map applies to class-id labels; label_kind is 'rgb'")

    @classmethod
    def from_config(cls, cfg) -> "ReadOptions":
        """From a ``DataConfig`` (typed loosely to keep this module free of the config tree)."""
        labels = LabelSpec.from_data(cfg, has_edges=False)
        return cls(num_classes=labels.num_classes, clip_frames=cfg.clip_frames, label_kind=labels.kind,
                   label_map=labels.label_map, resize=tuple(cfg.pack.resize) if cfg.pack.resize else None)

    def lookup(self) -> np.ndarray:
        """A table stored value -> class id for every 16-bit value (identity where not remapped)."""
        table = np.arange(65536, dtype=np.int32)
        for stored, class_id in self.label_map:
            table[stored] = class_id
        return table


@dataclasses.dataclass(frozen=True)
class Sequence:
    """A validated input sequence: where its streams are and what they hold."""
    name: str
    folder: Path
    frames: int
    height: int
    """Source size; ``packed_size`` gives the size after cropping or resizing."""
    width: int
    fps: float
    frame_files: tuple[Path, ...] = ()
    """Empty when the frames come from ``video``."""
    video: Path | None = None
    video_pts: tuple[int, ...] | None = None
    label_files: tuple[Path, ...] = ()
    instance_files: tuple[Path, ...] = ()

    @property
    def has_instances(self) -> bool:
        return bool(self.instance_files)

    @property
    def key_name(self) -> str:
        """The name as used in sample keys: characters other than letters, digits, ``-``, ``_`` become ``-``."""
        return re.sub(r"[^A-Za-z0-9_-]+", "-", self.name)

    def packed_size(self, opts: ReadOptions) -> tuple[int, int]:
        if opts.resize:
            return opts.resize
        return self.height - self.height % 2, self.width - self.width % 2


@dataclasses.dataclass
class ClipArrays:
    """Frames ``[start, stop)`` of a sequence at packing size."""
    frames: np.ndarray
    """uint8 [T, H, W, 3] RGB."""
    labels: np.ndarray
    """uint8 [T, H, W] class ids, or [T, H, W, 3] for ``label_kind: rgb``."""
    instances: np.ndarray | None
    """int32 [T, H, W] instance ids, or None."""


@dataclasses.dataclass(frozen=True)
class SequenceSource:
    """Where one input sequence's streams are, as its layout names them (checked when it is scanned)."""
    name: str
    folder: Path
    """What an error about the sequence as a whole names (ours: the sequence folder)."""
    labels: Path
    """Folder of label maps."""
    frames: Path | None = None
    """Folder of frames; None in our layout, where ``folder`` holds ``frames/`` or ``rgb.<ext>``."""
    instances: Path | None = None


def ignored(path: Path) -> bool:
    """Whether a file or folder in an input folder is an operating system's, not the user's."""
    return path.name.startswith(".") or path.name.lower() in OS_LITTER


def sequence_sources(root: Path, layout: Layout = "ours") -> list[SequenceSource]:
    """The input sequences under ``root`` (``data.pack.source``) in ``layout``, in natural order."""
    if not root.is_dir():
        raise BadInputError(root, "data.pack.source is not a folder")
    if layout == "vid2vid":
        phase = next((p for p in ("train", "test") if (root / f"{p}_A").is_dir()), None)
        if phase is None:
            raise BadInputError(root, "no train_A/ (or test_A/) folder of label maps: not the vid2vid layout "
                                      "(data.pack.layout=vid2vid)")
        labels, frames, instances = (root / f"{phase}_{s}" for s in ("A", "B", "inst"))
        return [SequenceSource(f.name, frames / f.name, f, frames / f.name,
                               instances / f.name if (instances / f.name).is_dir() else None)
                for f in _sub_folders(labels, "sequence folders of label maps")]
    if layout == "davis":
        resolution = _davis_resolution(root)
        frames, labels = root / "JPEGImages" / resolution, root / "Annotations" / resolution
        return [SequenceSource(f.name, f, labels / f.name, f) for f in _sub_folders(frames, "sequence folders")]
    return [SequenceSource(f.name, f, f / "labels", None, f / "instances" if (f / "instances").is_dir() else None)
            for f in sequence_folders(root)]


def _davis_resolution(root: Path) -> str:
    images, masks = root / "JPEGImages", root / "Annotations"
    if not images.is_dir() or not masks.is_dir():
        raise BadInputError(root, "no JPEGImages/ and Annotations/ folders: not the DAVIS layout "
                                  "(data.pack.layout=davis)")
    both = sorted(p.name for p in images.iterdir() if p.is_dir() and (masks / p.name).is_dir())
    if not both:
        raise BadInputError(images, "no resolution folder (480p, Full-Resolution) found in both JPEGImages/ "
                                    "and Annotations/")
    return "480p" if "480p" in both else both[0]


def _sub_folders(root: Path, what: str) -> list[Path]:
    if not root.is_dir():
        raise BadInputError(root, "not a folder")
    folders = [p for p in root.iterdir() if p.is_dir() and not ignored(p)]
    if not folders:
        raise BadInputError(root, f"no {what}")
    return sorted(folders, key=lambda p: natural_key(p.name))


def sequence_folders(root: Path) -> list[Path]:
    """The sequence folders of a source folder in our layout, in natural order."""
    if not root.is_dir():
        raise BadInputError(root, "data.pack.source is not a folder")
    if (root / "labels").is_dir() and ((root / "frames").is_dir() or any(root.glob("rgb.*"))):
        raise BadInputError(root, "is one sequence (it holds labels/ beside its frames): data.pack.source is "
                                  "the folder of sequence folders, here its parent")
    folders = [p for p in root.iterdir() if p.is_dir() and not ignored(p)]
    if not folders:
        raise BadInputError(root, "no sequence folders (expected sub-folders with frames/ or rgb.<ext>, "
                                  "and labels/)")
    return sorted(folders, key=lambda p: natural_key(p.name))


def natural_key(name: str) -> list:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def scan_sequence(source: SequenceSource | Path, opts: ReadOptions) -> Sequence:
    """Find and fully read a sequence's files once, checking counts, sizes and label values. A plain
    folder is a sequence of our layout."""
    if isinstance(source, Path):
        source = SequenceSource(source.name, source, source / "labels", None,
                                source / "instances" if (source / "instances").is_dir() else None)
    folder = source.folder
    if source.frames is None:
        video_file, frames_folder = _find_video(folder), folder / "frames"
    elif not source.frames.is_dir():
        raise BadInputError(source.frames, f"no folder of frames for the label maps in {source.labels}")
    else:
        video_file, frames_folder = None, source.frames
    if not source.labels.is_dir():
        raise BadInputError(folder, "no labels/ folder" if source.frames is None
                            else f"no folder of label maps ({source.labels}) for these frames")
    label_files = list_images(source.labels, (".png",))
    instance_files = list_images(source.instances, (".png",)) if source.instances is not None else ()
    if video_file is not None:
        try:
            info = video.scan(video_file)
        except video.VideoError as err:
            raise BadInputError(video_file, f"unreadable video: {err}") from err
        frame_files, count, size, fps, pts = (), info.frames, (info.height, info.width), info.fps, info.pts
        reference = video_file
    else:
        frame_files = list_images(frames_folder, IMAGE_SUFFIXES)
        count, size, fps, pts = len(frame_files), _read_rgb(frame_files[0]).shape[:2], 30.0, None
        reference = frame_files[0]
        for path in frame_files[1:]:
            _check_size(path, _read_rgb(path), size, reference)

    for name, files in (("label maps", label_files), ("instance maps", instance_files)):
        if files and len(files) != count:
            raise BadInputError(files[0].parent, f"{len(files)} {name} but {count} frames in "
                                                 f"{video_file or frames_folder}: "
                                                 f"{_first_unpartnered(files, frame_files, count)}")
    if count < opts.clip_frames:
        raise BadInputError(video_file or frames_folder,
                            f"{count} frames, fewer than one clip (data.clip_frames={opts.clip_frames})")
    lookup = opts.lookup() if opts.label_map else None
    for path in label_files:
        _check_size(path, read_label(path, opts, lookup), size, reference)
    for path in instance_files:
        _check_size(path, read_instances(path), size, reference)

    sequence = Sequence(name=source.name, folder=folder, frames=count, height=size[0], width=size[1], fps=fps,
                        frame_files=frame_files, video=video_file, video_pts=pts, label_files=label_files,
                        instance_files=instance_files)
    if min(sequence.packed_size(opts)) < MIN_SIDE:
        raise BadInputError(reference, f"frames of {size[1]}x{size[0]} are smaller than {MIN_SIDE} pixels a side")
    return sequence


def _first_unpartnered(files: Sequence_[Path], frame_files: Sequence_[Path], count: int) -> str:
    """Where pairing by position first goes wrong, for a person to fix: by the frame numbers in the
    names when both sides have them (a gap in one numbering), else the first file past the shorter list."""
    ours, theirs = _frame_numbers(files), _frame_numbers(frame_files)
    if ours is not None and theirs is not None and len(ours[0]) == len(theirs[0]):
        frames_have, files_have = set(theirs), set(ours)
        for path, n in zip(files, ours):
            if n not in frames_have:
                return f"{path.name} has no frame numbered {_shown(n)}"
        for path, n in zip(frame_files, theirs):
            if n not in files_have:
                return f"frame {path.name} has no partner numbered {_shown(n)}"
    if len(files) > count:
        return f"{files[count].name} and after have no frame"
    return f"frames from number {len(files)} (counting from 0) have no partner"


def _frame_numbers(paths: Sequence_[Path]) -> list[tuple[int, ...]] | None:
    """Each name's numbers that change along the list (Cityscapes' ``..._000008_leftImg8bit.png``: the
    frame's, not the 8 of every name), or None where names differ in shape or no number changes."""
    groups = [re.findall(r"\d+", p.stem) for p in paths]
    if len(groups) < 2 or len({len(g) for g in groups}) != 1:
        return None
    changing = [i for i in range(len(groups[0])) if len({g[i] for g in groups}) > 1]
    return [tuple(int(g[i]) for i in changing) for g in groups] if changing else None


def _shown(number: tuple[int, ...]) -> str:
    return "_".join(str(n) for n in number)


def _find_video(folder: Path) -> Path | None:
    """The sequence's ``rgb.<ext>`` video, or None when it has a ``frames/`` folder instead."""
    videos = sorted(p for p in folder.glob("rgb.*") if p.suffix.lower() in VIDEO_SUFFIXES)
    has_frames = (folder / "frames").is_dir()
    if has_frames and videos:
        raise BadInputError(folder, f"holds both frames/ and {videos[0].name}; keep one")
    if len(videos) > 1:
        raise BadInputError(folder, f"several RGB videos: {', '.join(p.name for p in videos)}")
    if not has_frames and not videos:
        raise BadInputError(folder, f"no frames/ folder and no rgb.<ext> video ({', '.join(VIDEO_SUFFIXES)})")
    return videos[0] if videos else None


def read_clip(sequence: Sequence, start: int, stop: int, opts: ReadOptions) -> ClipArrays:
    """Frames ``[start, stop)`` of every stream, at packing size, labels remapped. Each frame is brought
    to that size as it is read, so a run of full-size frames (2048x1024) is never held at once."""
    height, width = sequence.packed_size(opts)
    if opts.resize:
        def smooth(frame: np.ndarray) -> np.ndarray:
            return _resize_smooth(frame, height, width)

        def nearest(ids: np.ndarray) -> np.ndarray:
            return _resize_nearest(ids, height, width)
    else:
        def smooth(frame: np.ndarray) -> np.ndarray:  # the trailing odd row or column, cropped
            return frame[:height, :width]
        nearest = smooth
    if sequence.video is not None:
        try:
            frames = video.decode_range(sequence.video, start, stop, sequence.video_pts, each=smooth)
        except video.VideoError as err:
            raise BadInputError(sequence.video, f"unreadable video: {err}") from err
    else:
        frames = np.stack([smooth(_read_rgb(p)) for p in sequence.frame_files[start:stop]])
    lookup = opts.lookup() if opts.label_map else None
    labels = np.stack([nearest(read_label(p, opts, lookup)) for p in sequence.label_files[start:stop]])
    instances = (np.stack([nearest(read_instances(p)) for p in sequence.instance_files[start:stop]])
                 if sequence.instance_files else None)
    return ClipArrays(np.ascontiguousarray(frames), np.ascontiguousarray(labels),
                      None if instances is None else np.ascontiguousarray(instances))


def read_label(path: Path, opts: ReadOptions, lookup: np.ndarray | None = None) -> np.ndarray:
    """One label map: uint8 [H, W] class ids (remapped, checked) or uint8 [H, W, 3] for ``rgb``."""
    image = _open(path)
    if opts.label_kind == "rgb":
        return np.asarray(image.convert("RGB"))
    values = _single_channel(path, image)
    wide = values.dtype not in (np.uint8, np.uint16)  # 32-bit modes: the lookup table covers 16 bits
    if wide and (values.min(initial=0) < 0 or values.max(initial=0) > 65535):
        raise BadInputError(path, f"label values outside 0..65535 (mode {image.mode})")
    if opts.label_map:
        values = (opts.lookup() if lookup is None else lookup)[values]
    if values.max(initial=0) >= opts.num_classes:
        raise BadInputError(path, _class_problem(path, image, values, opts))
    return values.astype(np.uint8, copy=False)


def _class_problem(path: Path, image: Image.Image, classes: np.ndarray, opts: ReadOptions) -> str:
    stored = _single_channel(path, image)
    bad = classes >= opts.num_classes
    y, x = np.argwhere(bad)[0]
    found = np.unique(stored[bad])
    return (f"label value {stored[y, x]} at x={x}, y={y} is not a class below data.num_classes="
            f"{opts.num_classes} (offending stored values: {', '.join(map(str, found[:10]))}); {opts.remedy}")


def read_instances(path: Path) -> np.ndarray:
    """One instance map as int32 [H, W] ids; an RGB map's colours become ids (only equality matters)."""
    image = _open(path)
    if image.mode in ("RGB", "RGBA"):
        rgb = np.asarray(image.convert("RGB")).astype(np.int32)
        return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    return _single_channel(path, image).astype(np.int32)


def list_images(folder: Path, suffixes: tuple[str, ...]) -> tuple[Path, ...]:
    """The images of an input folder in natural order; any other file of the user's is refused."""
    files = []
    for path in folder.iterdir():
        if ignored(path):
            continue
        if not path.is_file() or path.suffix.lower() not in suffixes:
            raise BadInputError(path, f"not a {'/'.join(s[1:].upper() for s in suffixes)} file; "
                                      f"{folder.name}/ must hold only those")
        files.append(path)
    if not files:
        raise BadInputError(folder, "empty folder")
    return tuple(sorted(files, key=lambda p: natural_key(p.name)))


def _open(path: Path) -> Image.Image:
    """Open and fully decode an image (a truncated file fails here, not later)."""
    try:
        image = Image.open(path)
        image.load()
        return image
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise BadInputError(path, f"unreadable image: {err}") from err


def _read_rgb(path: Path) -> np.ndarray:
    """uint8 [H, W, 3]; a 16-bit grey frame scaled to 8 bits (Pillow's conversion would clip it to white)."""
    image = _open(path)
    if image.mode not in _WIDE_GREY:
        return np.asarray(image.convert("RGB"))
    values = np.asarray(image).astype(np.int64)
    if values.min(initial=0) < 0 or values.max(initial=0) > 65535:
        raise BadInputError(path, f"grey values outside 0..65535 (mode {image.mode}): not a 16-bit frame")
    grey = ((values * 255 + 32767) // 65535).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


_WIDE_GREY = ("I;16", "I;16B", "I;16L", "I")


def _single_channel(path: Path, image: Image.Image) -> np.ndarray:
    """The ids of a single-channel image (uint8, or wider for 16/32-bit modes), or of a grey RGB image."""
    if image.mode in ("L", "P", "I", "I;16", "I;16B", "I;16L"):
        return np.asarray(image)
    if image.mode == "1":
        return np.asarray(image).astype(np.uint8)  # a 1-bit PNG stores 0/1
    if image.mode in ("RGB", "RGBA", "LA"):
        channels = np.asarray(image)[..., :3 if image.mode != "LA" else 1]
        if (channels == channels[..., :1]).all():
            return channels[..., 0]
        raise BadInputError(path, f"a colour image ({image.mode}) where class ids are expected; save ids "
                                  "as a single-channel PNG, or set data.pack.label_kind=rgb for renderings")
    raise BadInputError(path, f"unsupported image mode {image.mode} for an id map")


def _check_size(path: Path, array: np.ndarray, size: tuple[int, int], reference: Path) -> None:
    if array.shape[:2] != size:
        raise BadInputError(path, f"size {array.shape[1]}x{array.shape[0]} differs from the frames' "
                                  f"{size[1]}x{size[0]} ({reference})")


def _resize_smooth(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    shrink = height * width < frame.shape[0] * frame.shape[1]
    return cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def _resize_nearest(ids: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of one map [H, W, ...] by index (any dtype; ids are never blended)."""
    rows = np.minimum(((np.arange(height) + 0.5) * ids.shape[0] / height).astype(np.int64), ids.shape[0] - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * ids.shape[1] / width).astype(np.int64), ids.shape[1] - 1)
    return ids[rows][:, cols]
