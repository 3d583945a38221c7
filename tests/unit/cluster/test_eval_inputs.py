"""`vid2vid eval` against shards that do not fit the model: refused in one line that says how they differ."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cluster.config import load
from cluster.evaluate import EvalInputError, _data_for
from cluster.video_model import VideoGenerator
from dataio.labels import LabelSpec
from tests.unit.dataio.test_planned import shards_of

REPO = Path(__file__).resolve().parents[3]


def model(labels: LabelSpec) -> VideoGenerator:
    from models.build import build_generator
    cfg = load(REPO / "configs" / "tiny_train.yaml")
    torch.manual_seed(0)
    return VideoGenerator(build_generator(cfg.model, labels.channels), labels)


@pytest.mark.parametrize("classes, labels, message", [
    (8, LabelSpec(2, has_edges=False), r"packed with 8 classes, the model knows 2$"),  # said 3 channels, not 9
    (8, LabelSpec(8, has_edges=False), r"the shards have instance edges, the model was trained without them$"),
    (2, LabelSpec(8, has_edges=True), r"the shards have no instance edges, the model was trained with them$"),
])
def test_shards_unlike_the_model_are_named_by_how_they_differ(tmp_path: Path, classes: int, labels: LabelSpec,
                                                              message: str) -> None:
    shards = shards_of(tmp_path / "s", classes=classes, train_edges=classes == 8)
    cfg = load(REPO / "configs" / "tiny_train.yaml", [f"data.shards={shards}", "eval.split=val"])
    with pytest.raises(EvalInputError, match=message):
        _data_for(cfg, model(labels))
