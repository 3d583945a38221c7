"""LabelSpec: the one description of how label maps are read, stored with exports and models."""
from __future__ import annotations

import numpy as np
import pytest

from dataio.config import DataConfig, PackConfig
from dataio.labels import LabelSpec


def test_spec_from_the_data_config_and_back() -> None:
    data = DataConfig(num_classes=2, pack=PackConfig(label_map={255: 1}))
    spec = LabelSpec.from_data(data, has_edges=True)
    assert spec == LabelSpec(2, "classes", ((255, 1),), True) and spec.channels == 3
    assert LabelSpec.from_dict(spec.to_dict()) == spec
    # The dict form of a saved config (checkpoints, MLflow) gives the same spec.
    assert LabelSpec.from_data({"num_classes": 2, "pack": {"label_map": {255: 1}}}, True) == spec
    assert LabelSpec(8, "rgb", has_edges=False).channels == 3
    with pytest.raises(ValueError, match="label kind"):
        LabelSpec(2, "masks")


def test_encode_one_frame_as_the_loader_lays_it_out() -> None:
    ids = np.array([[0, 1], [2, 1]], np.uint8)
    edges = np.array([[255, 0], [0, 0]], np.uint8)
    planes = LabelSpec(3, has_edges=True).encode(ids, edges)
    assert planes.shape == (4, 2, 2) and planes.dtype == np.float32
    assert np.array_equal(planes[:3].argmax(0), ids) and planes[:3].sum(0).min() == 1.0
    assert planes[3].tolist() == [[1.0, 0.0], [0.0, 0.0]]
    assert LabelSpec(3, has_edges=True).encode(ids)[3].max() == 0.0  # no instance maps: a zero edge channel
    rgb = np.full((2, 2, 3), 255, np.uint8)
    assert LabelSpec(8, "rgb").encode(rgb).tolist() == np.ones((3, 2, 2)).tolist()
    with pytest.raises(ValueError, match="class id 2 but the model knows 2 classes"):
        LabelSpec(2).encode(ids)


def test_compact_encoding_holds_the_same_values_in_uint8() -> None:
    ids = np.array([[0, 1], [2, 1]], np.uint8)
    edges = np.array([[255, 0], [0, 255]], np.uint8)
    spec = LabelSpec(3, has_edges=True)
    compact = spec.encode(ids, edges, compact=True)
    assert compact.dtype == np.uint8 and compact.nbytes * 4 == spec.encode(ids, edges).nbytes
    assert np.array_equal(compact.astype(np.float32), spec.encode(ids, edges))
    assert spec.encode(ids, compact=True)[3].max() == 0
    assert LabelSpec(8, "rgb").encode(np.full((2, 2, 3), 255, np.uint8), compact=True).dtype == np.float32
    soft = np.array([[128, 0], [0, 255]], np.uint8)  # not 0/255: kept as the float fraction
    assert np.array_equal(spec.encode(ids, soft, compact=True), spec.encode(ids, soft))
    assert spec.encode(ids, soft, compact=True)[3, 0, 0] == np.float32(128 / 255)
