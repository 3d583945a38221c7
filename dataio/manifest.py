"""``manifest.parquet``: one row per packed sample, at the root of the shard location.

The loader reads it to list the shards of a split and to know the class count and clip length without
opening a tar. Dataset-wide facts (class count, clip length, label kind) also travel in the parquet
schema metadata under the key ``vid2vid``, so a manifest with zero rows of some split still carries them.
"""
from __future__ import annotations

import dataclasses
import io
import json
from typing import Literal

import pyarrow as pa
import pyarrow.parquet as pq

from dataio.storage import Destination

MANIFEST = "manifest.parquet"
_META_KEY = b"vid2vid"


@dataclasses.dataclass(frozen=True)
class ManifestRow:
    """One sample (one clip)."""
    shard: str
    """Tar file name relative to the manifest, e.g. ``train-000000.tar``."""
    key: str
    """Sample key ``{sequence}_{start_frame:06d}``."""
    sequence: str
    """The source sequence folder's name."""
    start_frame: int
    frames: int
    height: int
    width: int
    classes: int
    """Class count of the label stream (``data.num_classes`` at packing time)."""
    bytes: int
    """Sum of the sample's member sizes in the tar."""
    split: Literal["train", "val"]
    has_edges: bool


_SCHEMA = pa.schema([
    ("shard", pa.string()), ("key", pa.string()), ("sequence", pa.string()),
    ("start_frame", pa.int32()), ("frames", pa.int32()), ("height", pa.int32()), ("width", pa.int32()),
    ("classes", pa.int32()), ("bytes", pa.int64()), ("split", pa.string()), ("has_edges", pa.bool_()),
])


@dataclasses.dataclass
class Manifest:
    rows: list[ManifestRow]
    num_classes: int
    clip_frames: int
    label_kind: Literal["classes", "rgb"] = "classes"

    def shards(self, split: str) -> list[str]:
        """Tar names of ``split``, sorted."""
        return sorted({row.shard for row in self.rows if row.split == split})

    def samples(self, split: str) -> int:
        return sum(row.split == split for row in self.rows)

    @property
    def has_edges(self) -> bool:
        """Whether the label input has an instance-edge channel: one answer for every split (the
        networks are sized from the training split's input, and judged on the held-out one)."""
        return any(row.has_edges for row in self.rows)

    def to_table(self) -> pa.Table:
        columns = {name: [getattr(row, name) for row in self.rows] for name in _SCHEMA.names}
        meta = {"num_classes": self.num_classes, "clip_frames": self.clip_frames,
                "label_kind": self.label_kind}
        return pa.table(columns, schema=_SCHEMA.with_metadata({_META_KEY: json.dumps(meta).encode()}))


def write_manifest(manifest: Manifest, dest: Destination) -> None:
    """Write ``manifest.parquet`` at the root of ``dest``, atomically."""
    buf = io.BytesIO()
    pq.write_table(manifest.to_table(), buf)
    dest.write_bytes(MANIFEST, buf.getvalue())


def read_manifest(location: str | Destination) -> Manifest:
    """Read ``manifest.parquet`` from a shard location (local folder or ``s3://bucket/prefix``)."""
    dest = location if isinstance(location, Destination) else Destination(location)
    name = dest.uri(MANIFEST)
    try:
        table = pq.read_table(io.BytesIO(dest.read_bytes(MANIFEST)))
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{name}: no manifest; run `vid2vid data pack` first") from err
    except pa.ArrowInvalid as err:
        raise ValueError(f"{name}: not a readable parquet file: {err}") from err
    missing = set(_SCHEMA.names) - set(table.column_names)
    raw_meta = (table.schema.metadata or {}).get(_META_KEY)
    if missing or raw_meta is None:
        raise ValueError(f"{name}: not a vid2vid manifest (missing columns {sorted(missing)} "
                         f"or '{_META_KEY.decode()}' metadata)")
    meta = json.loads(raw_meta)
    rows = [ManifestRow(**{k: record[k] for k in _SCHEMA.names}) for record in table.to_pylist()]
    return Manifest(rows=rows, num_classes=int(meta["num_classes"]), clip_frames=int(meta["clip_frames"]),
                    label_kind=meta.get("label_kind", "classes"))
