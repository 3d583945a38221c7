"""`vid2vid generate`: a registered model turns label maps into a video.

Labels come from a folder of label maps (PNG class ids, sorted by name; a sequence folder with
``labels/`` and optional ``instances/`` also works), a label video (class id in the red channel, as
in the shards' lossless ``label.webm``), or a shard (``.tar``: one clip, the first or ``--key``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

VIDEO_SUFFIXES = {".mp4", ".webm", ".mkv", ".avi", ".mov"}
IMAGE_SUFFIXES = {".png"}


class LabelInputError(ValueError):
    """Labels that cannot be read or do not fit the model; the message names the file."""


@dataclass
class LabelClip:
    ids: np.ndarray
    """uint8 [T, H, W] class ids, or [T, H, W, 3] renderings for ``label_kind: rgb``."""
    edges: np.ndarray | None
    """uint8 [T, H, W], 255 on instance boundaries; None when the source has no instance maps."""
    source: str


def read_labels(path: str | Path, label_kind: str = "classes", key: str | None = None) -> LabelClip:
    path = Path(path)
    if path.is_dir():
        return _from_folder(path, label_kind)
    if not path.is_file():
        raise LabelInputError(f"labels {path}: no such file or folder")
    if path.suffix == ".tar":
        return _from_shard(path, label_kind, key)
    if path.suffix.lower() in VIDEO_SUFFIXES:
        from dataio.video import decode
        frames = decode(path)
        return LabelClip(frames if label_kind == "rgb" else frames[..., 0], None, str(path))
    raise LabelInputError(f"labels {path}: expected a folder of PNG label maps, a video "
                          f"({', '.join(sorted(VIDEO_SUFFIXES))}) or a shard (.tar)")


def _from_folder(folder: Path, label_kind: str) -> LabelClip:
    from PIL import Image

    from dataio.format import instance_edges

    labels_dir = folder / "labels" if (folder / "labels").is_dir() else folder
    files = sorted(p for p in labels_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise LabelInputError(f"labels {labels_dir}: no PNG label maps in the folder")
    maps = [np.asarray(Image.open(p)) for p in files]
    if label_kind == "rgb":
        ids = np.stack([m[..., :3] if m.ndim == 3 else np.repeat(m[..., None], 3, -1) for m in maps])
    else:
        ids = np.stack([m[..., 0] if m.ndim == 3 else m for m in maps])
    edges = None
    instances_dir = folder / "instances"
    if labels_dir != folder and instances_dir.is_dir():
        inst = sorted(p for p in instances_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if len(inst) == len(files):
            edges = instance_edges(np.stack([np.asarray(Image.open(p)) for p in inst]))
    return LabelClip(ids.astype(np.uint8) if label_kind == "rgb" else _as_ids(ids, labels_dir), edges, str(labels_dir))


def _as_ids(ids: np.ndarray, source: Path | str) -> np.ndarray:
    if ids.max(initial=0) > 255:
        raise LabelInputError(f"labels {source}: class ids above 255")
    return ids.astype(np.uint8)


def _from_shard(path: Path, label_kind: str, key: str | None) -> LabelClip:
    from dataio import format as fmt
    from dataio.reader import Sample, read_shard
    from dataio.storage import Destination
    from dataio.video import decode

    for item in read_shard(Destination(str(path.parent)).fs, str(path)):
        if isinstance(item, Sample) and (key is None or item.key == key):
            labels = decode(item.streams[fmt.LABEL], f"{path}:{item.key}.{fmt.LABEL}")
            edges = item.streams.get(fmt.EDGE)
            return LabelClip(labels if label_kind == "rgb" else labels[..., 0],
                             None if edges is None else decode(edges, f"{path}:{item.key}.{fmt.EDGE}")[..., 0],
                             f"{path}:{item.key}")
    raise LabelInputError(f"labels {path}: no readable sample" + (f" with key {key!r}" if key else ""))


def label_tensor(clip: LabelClip, model, size: tuple[int, int] | None = None):
    """float32 [1, T, C, H, W] as the model takes it; resized (nearest) to ``size``, or down to the
    nearest multiple of what the model needs when the maps do not fit."""
    import torch
    import torch.nn.functional as F

    if model.label_kind == "rgb":
        labels = torch.from_numpy(clip.ids).float().div(255).permute(0, 3, 1, 2)
    else:
        top = int(clip.ids.max(initial=0))
        if top >= model.num_classes:
            raise LabelInputError(f"labels {clip.source}: class id {top} but the model knows "
                                  f"{model.num_classes} classes (0..{model.num_classes - 1})")
        labels = F.one_hot(torch.from_numpy(clip.ids).long(), model.num_classes).permute(0, 3, 1, 2).float()
    if model.has_edges:
        edges = np.zeros(clip.ids.shape[:3], np.uint8) if clip.edges is None else clip.edges
        labels = torch.cat([labels, torch.from_numpy(edges).float().div(255).unsqueeze(1)], dim=1)
    height, width = labels.shape[-2:]
    step = model.divisor
    target = size or (max(step, height // step * step), max(step, width // step * step))
    if target[0] % step or target[1] % step:
        raise LabelInputError(f"size {target[0]}x{target[1]}: the model needs multiples of {step}")
    if tuple(target) != (height, width):
        labels = F.interpolate(labels, size=tuple(target), mode="nearest")
    return labels.unsqueeze(0)


def colour_labels(labels) -> np.ndarray:
    """uint8 [T, H, W, 3] picture of float labels [T, C, H, W] (fixed colour per class)."""
    ids = labels.argmax(dim=1).cpu().numpy() if labels.shape[1] != 3 else None
    if ids is None:
        return (labels.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    palette = np.random.default_rng(12345).integers(40, 256, size=(labels.shape[1], 3)).astype(np.uint8)
    palette[0] = 0
    return palette[ids]


def generate(model_uri: str, labels: str | Path, out: str | Path, *, side_by_side: bool = False,
             size: tuple[int, int] | None = None, key: str | None = None, fps: int = 8,
             device: str = "auto", progress: bool = True) -> Path:
    """Write ``out`` (mp4): the generated video, or labels | generated with ``side_by_side``.
    ``model_uri``: an MLflow model URI or a local checkpoint (``cluster.registry.load_video_model``)."""
    from tqdm import tqdm

    from cluster.registry import load_video_model
    from cluster.video_model import pick_device
    from trainer.samples import write_mp4

    device = pick_device(device)
    model = load_video_model(model_uri, device)
    clip = read_labels(labels, model.label_kind, key)
    tensor = label_tensor(clip, model, size).to(device)
    frames = [f[0].cpu().numpy() for f in tqdm(model.frames(tensor), total=tensor.shape[1], unit="frame",
                                             desc="generate", disable=not progress)]
    video = np.stack(frames)
    if side_by_side:
        video = np.concatenate([colour_labels(tensor[0]), video], axis=2)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    return write_mp4(video, out, fps=fps)
