"""What a model needs to read label maps, in one place: ``LabelSpec``.

The kind of map (class ids, or 3-channel renderings of poses or edges), how many classes, how stored
values map to class ids (``data.pack.label_map``, e.g. ``{255: 1}`` for a 0/255 mask) and whether an
instance-edge channel follows the classes. Packing reads maps with it, the loader lays out its label
channels by it, the export and the registered model store it (so ``vid2vid generate`` reads the same
raw maps the data was packed from), and ``encode`` turns one frame's maps into the model's input.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Literal

import numpy as np

LabelKind = Literal["classes", "rgb"]


@dataclasses.dataclass(frozen=True)
class LabelSpec:
    num_classes: int
    """One-hot channels for ``classes``; for ``rgb`` the class count the config named (unused)."""
    kind: LabelKind = "classes"
    label_map: tuple[tuple[int, int], ...] = ()
    """(stored value, class id) pairs applied to raw label maps; packed shards hold class ids already."""
    has_edges: bool = False
    """An instance-edge channel (1 on instance boundaries) follows the label channels."""

    def __post_init__(self) -> None:
        if self.kind not in ("classes", "rgb"):
            raise ValueError(f"label kind must be 'classes' or 'rgb', got {self.kind!r}")
        if not 1 <= self.num_classes <= 256:
            raise ValueError(f"num_classes must be in [1, 256], got {self.num_classes}")

    @property
    def channels(self) -> int:
        """Channels of the model's label input."""
        return (3 if self.kind == "rgb" else self.num_classes) + int(self.has_edges)

    @classmethod
    def from_data(cls, data: Any, has_edges: bool) -> LabelSpec:
        """From the ``data`` config section (a ``DataConfig``, or its dict form in a saved config)."""
        if isinstance(data, dict):
            pack = data.get("pack", {})
            return cls(int(data.get("num_classes", 8)), pack.get("label_kind", "classes"),
                       _pairs(pack.get("label_map", {})), has_edges)
        return cls(data.num_classes, data.pack.label_kind, _pairs(data.pack.label_map), has_edges)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types (stored with the export and the registered model)."""
        return {"num_classes": self.num_classes, "kind": self.kind,
                "label_map": {str(k): v for k, v in self.label_map}, "has_edges": self.has_edges}

    @classmethod
    def from_dict(cls, value: dict[str, Any]) -> LabelSpec:
        return cls(int(value["num_classes"]), value.get("kind", "classes"), _pairs(value.get("label_map", {})),
                   bool(value.get("has_edges", False)))

    def encode(self, ids: np.ndarray, edges: np.ndarray | None = None, compact: bool = False) -> np.ndarray:
        """float32 [C, H, W] model input of one frame: ``ids`` uint8 [H, W] class ids (already remapped)
        or [H, W, 3] renderings, and ``edges`` uint8 [H, W] (255 on instance boundaries) when the model
        has an edge channel (a frame without instance maps gets zeros there). The training loader lays
        out the same channels (dataio/augment.py, dataio/pipeline.py).

        ``compact``: class maps as uint8 0/1 planes, the same values in a quarter of the memory; the
        generator reads either (models/stripes.py). Renderings, and edge maps other than 0/255 (what
        ``dataio.format.instance_edges`` makes), stay float32."""
        if self.kind == "rgb":
            return ids.astype(np.float32).transpose(2, 0, 1) / 255.0
        if int(ids.max(initial=0)) >= self.num_classes:
            raise ValueError(f"class id {int(ids.max())} but the model knows {self.num_classes} classes "
                             f"(0..{self.num_classes - 1})")
        if compact and edges is not None and self.has_edges and ((edges != 0) & (edges != 255)).any():
            compact = False  # a fraction of an edge is no 0/1 value
        dtype = np.uint8 if compact else np.float32
        planes = (ids[None] == np.arange(self.num_classes, dtype=ids.dtype)[:, None, None]).astype(dtype)
        if not self.has_edges:
            return planes
        if edges is None:
            edge = np.zeros(ids.shape[:2], dtype)
        else:
            edge = (edges == 255).astype(dtype) if compact else edges.astype(np.float32) / 255.0
        return np.concatenate([planes, edge[None]], axis=0)


def _pairs(label_map: Any) -> tuple[tuple[int, int], ...]:
    items = label_map.items() if isinstance(label_map, dict) else label_map
    return tuple(sorted((int(k), int(v)) for k, v in items))
