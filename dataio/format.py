"""The shard sample format: one clip per WebDataset sample.

Members of sample ``KEY`` (a tar member is ``KEY.<suffix>``):

| suffix       | content |
| ---          | --- |
| `rgb.webm`   | RGB frames, lossy VP9 yuv420p |
| `label.webm` | lossless VP9 gbrp: class id in R=G=B (``label_kind: classes``) or a 3-channel rendering (``rgb``) |
| `flow.webm`  | lossless VP9 gbrp: backward flow target, quantized (below); R=dx, G=dy, B=confidence |
| `edge.webm`  | optional, lossless VP9 gbrp: instance boundaries, 255 on an edge, 0 elsewhere |
| `json`       | metadata (`ClipMeta`) |

Flow convention (the generator's warp uses the same one): ``flow[t]`` gives, for each pixel ``p`` of
frame t, the displacement to where that content was in frame t-1, in pixels:
``frame[t](p) ~= frame[t-1](p + flow[t](p))``. ``flow[0]`` is zero with zero confidence. Components
are stored as ``round(v * FLOW_STEPS) + FLOW_ZERO`` clipped to [0, 255]: a quarter pixel steps over
+-32 px; a clipped vector gets confidence 0.
"""
from __future__ import annotations

import dataclasses
import json
import tarfile
from pathlib import Path
from typing import Iterable, Literal

import numpy as np

RGB, LABEL, FLOW, EDGE, META = "rgb.webm", "label.webm", "flow.webm", "edge.webm", "json"
REQUIRED = (RGB, LABEL, FLOW, META)
MEMBER_ORDER = (META, RGB, LABEL, FLOW, EDGE)
"""Order of a sample's members inside a tar (readers look members up by suffix; the order only keeps
shards byte-for-byte reproducible)."""
INDEX_VERSION = "v1.2"
"""Version line of DALI's webdataset index (`wds2idx`), the format `write_shard` writes."""
MAX_MEMBER_NAME = 99
"""Longest tar member name: ustar headers hold 100 bytes, and a single header per member keeps every
member's data at ``header + 512``, which is what the index records."""
FLOW_STEPS = 4
FLOW_ZERO = 128
FLOW_LIMIT = (255 - FLOW_ZERO) / FLOW_STEPS  # largest representable |component|, 31.75 px


@dataclasses.dataclass
class ClipMeta:
    """What a sample's ``json`` member holds."""
    key: str
    sequence: str
    start_frame: int
    frames: int
    height: int
    width: int
    num_classes: int
    label_kind: Literal["classes", "rgb"] = "classes"
    has_edges: bool = False
    fps: float = 30.0
    split: Literal["train", "val"] = "train"
    flow_steps: int = FLOW_STEPS
    flow_zero: int = FLOW_ZERO

    def to_json(self) -> bytes:
        return json.dumps(dataclasses.asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes | str, name: str = "json") -> "ClipMeta":
        try:
            raw = json.loads(data)
            return cls(**raw)
        except (ValueError, TypeError) as err:
            raise ValueError(f"{name}: bad clip metadata: {err}") from err


def quantize_flow(flow: np.ndarray, confidence: np.ndarray) -> np.ndarray:
    """float flow [T, H, W, 2] (pixels) and confidence [T, H, W] in [0, 1] -> uint8 [T, H, W, 3]."""
    steps = np.rint(flow * FLOW_STEPS) + FLOW_ZERO
    clipped = ((steps < 0) | (steps > 255)).any(axis=-1)
    out = np.empty(flow.shape[:-1] + (3,), np.uint8)
    out[..., :2] = np.clip(steps, 0, 255).astype(np.uint8)
    conf = np.where(clipped, 0.0, np.clip(confidence, 0.0, 1.0))
    out[..., 2] = np.rint(conf * 255).astype(np.uint8)
    return out


def dequantize_flow(packed: np.ndarray, steps: int = FLOW_STEPS, zero: int = FLOW_ZERO
                    ) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [..., 3] -> (flow [..., 2] float32 pixels, confidence [...] float32 in [0, 1])."""
    flow = (packed[..., :2].astype(np.float32) - zero) / steps
    return flow, packed[..., 2].astype(np.float32) / 255.0


def instance_edges(instances: np.ndarray) -> np.ndarray:
    """Boundaries of an instance-id map [..., H, W]: 255 where a 4-neighbour has another id."""
    edges = np.zeros(instances.shape, bool)
    dx = instances[..., :, 1:] != instances[..., :, :-1]
    dy = instances[..., 1:, :] != instances[..., :-1, :]
    edges[..., :, 1:] |= dx
    edges[..., :, :-1] |= dx
    edges[..., 1:, :] |= dy
    edges[..., :-1, :] |= dy
    return edges.astype(np.uint8) * 255


def shard_name(split: str, index: int) -> str:
    """``{split}-{index:06d}``: the tar is ``NAME.tar``, its DALI index ``NAME.idx``."""
    return f"{split}-{index:06d}"


def sample_key(sequence: str, start_frame: int) -> str:
    """``{sequence}_{start_frame:06d}``; ``sequence`` must hold no dot (WebDataset splits there)."""
    if "." in sequence or "/" in sequence:
        raise ValueError(f"sequence name {sequence!r} holds a dot or slash; it cannot key a sample")
    return f"{sequence}_{start_frame:06d}"


def write_shard(samples: Iterable[tuple[str, dict[str, bytes]]], path: str | Path) -> str:
    """Write ``(key, {suffix: bytes})`` samples as a tar at ``path``; return its DALI index text.

    The index is exactly what DALI's ``wds2idx`` writes for the same tar (``v1.2 N`` then one line per
    sample: ``suffix offset size name`` for each member), computed while writing, so packing needs no
    second pass over the tar and no ``tar`` program. Members carry fixed owner and time so that the same
    clips give the same bytes.
    """
    lines = []
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for key, members in samples:
            entries = []
            for suffix in sorted(members, key=_member_rank):
                data = members[suffix]
                name = f"{key}.{suffix}"
                if len(name) > MAX_MEMBER_NAME:
                    raise ValueError(f"tar member name too long ({len(name)} > {MAX_MEMBER_NAME}): {name}")
                info = tarfile.TarInfo(name)
                info.size, info.mode, info.mtime = len(data), 0o644, 0
                header_at = tar.offset
                tar.addfile(info, _Reader(data))
                entries.append(f"{suffix} {header_at + tarfile.BLOCKSIZE} {len(data)} {name}")
            if not entries:
                raise ValueError(f"sample {key} has no members")
            lines.append(" ".join(entries))
    if not lines:
        raise ValueError(f"{path}: a shard needs at least one sample")
    return f"{INDEX_VERSION} {len(lines)}\n" + "".join(line + "\n" for line in lines)


@dataclasses.dataclass(frozen=True)
class IndexedSample:
    """One sample of a DALI index: its key and, per member suffix, (data offset, size) in the tar."""
    key: str
    members: dict[str, tuple[int, int]]

    @property
    def bytes(self) -> int:
        return sum(size for _, size in self.members.values())


def parse_index(text: str, name: str = "index") -> list[IndexedSample]:
    """Read a ``wds2idx`` v1.2 index; errors name ``name`` and the line."""
    lines = text.splitlines()
    head = lines[0].split() if lines else []
    if len(head) != 2 or head[0] != INDEX_VERSION or not head[1].isdigit():
        raise ValueError(f"{name}: not a DALI webdataset index {INDEX_VERSION} (first line {lines[:1]})")
    samples = []
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split()
        if not fields or len(fields) % 4:
            raise ValueError(f"{name}:{number}: expected 'suffix offset size name' groups")
        members, key = {}, None
        for i in range(0, len(fields), 4):
            suffix, offset, size, member = fields[i:i + 4]
            member_key = member[:member.find(".")]
            if key is not None and member_key != key:
                raise ValueError(f"{name}:{number}: members of two samples on one line ({key}, {member_key})")
            key = member_key
            members[suffix] = (int(offset), int(size))
        samples.append(IndexedSample(key, members))  # type: ignore[arg-type]
    if len(samples) != int(head[1]):
        raise ValueError(f"{name}: header says {head[1]} samples, found {len(samples)}")
    return samples


def _member_rank(suffix: str) -> tuple[int, str]:
    return (MEMBER_ORDER.index(suffix) if suffix in MEMBER_ORDER else len(MEMBER_ORDER), suffix)


class _Reader:
    """A minimal file object over bytes for ``TarFile.addfile`` (avoids copying into a BytesIO)."""

    def __init__(self, data: bytes) -> None:
        self.view, self.pos = memoryview(data), 0

    def read(self, size: int = -1) -> bytes:
        end = len(self.view) if size < 0 else min(len(self.view), self.pos + size)
        chunk, self.pos = self.view[self.pos:end], end
        return bytes(chunk)
