"""What the shards can give against what the config asks, read from the manifest before a loader (or a
worker) starts: clips as long as asked, the classes, a full batch per rank, one label layout per dataset."""
from __future__ import annotations

from pathlib import Path

import pytest

from dataio.config import DataConfig, LoaderConfig
from dataio.errors import UserInputError
from dataio.manifest import Manifest, ManifestRow, write_manifest
from dataio.reader import ShardsMismatchError, planned
from dataio.storage import Destination


def shards_of(folder: Path, *, frames: int = 4, classes: int = 8, train: int = 4, train_edges: bool = True,
              val: int = 2, val_edges: bool = False, clips_per_shard: int = 1000) -> str:
    """A manifest of ``train`` and ``val`` clips, each split with or without instance edges."""
    def row(split: str, index: int, edges: bool) -> ManifestRow:
        return ManifestRow(shard=f"{split}-{index % 100 // clips_per_shard:06d}.tar", key=f"s{index}_000000", sequence=f"s{index}", start_frame=0,
                           frames=frames, height=32, width=64, classes=classes, bytes=1, split=split,
                           has_edges=edges)

    rows = [row("train", i, train_edges) for i in range(train)] + [row("val", 100 + i, val_edges) for i in range(val)]
    folder.mkdir(parents=True)
    write_manifest(Manifest(rows, num_classes=classes, clip_frames=frames), Destination(str(folder)))
    return str(folder)


def test_shards_that_fit_are_listed_with_one_label_layout_for_every_split(tmp_path: Path) -> None:
    cfg = DataConfig(shards=shards_of(tmp_path / "s"), num_classes=8, clip_frames=8)
    shards, train = planned(cfg, "train", 4, world_size=2)
    assert [Path(s).name for s in shards] == ["train-000000.tar"] and train.shard_clips == (4,) and train.min_frames == 4
    # The networks are sized from the training split: its held-out clips without instance maps still
    # get the edge channel (zero), or scoring during training would not fit the generator.
    _, val = planned(cfg, "val", 4)
    assert val.has_edges and train.has_edges
    # Scoring the training clips keeps a short last batch: 4 clips against batches of 8 are not refused.
    eight = DataConfig(shards=cfg.shards, num_classes=8, clip_frames=8, loader=LoaderConfig(batch_size=8))
    planned(eight, "train", 4)
    with pytest.raises(ShardsMismatchError, match="a rank may get 4 train clip"):
        planned(eight, "train", 4, full_batches=True)


@pytest.mark.parametrize("change, asked, message", [
    ({}, 8, r"s: its train clips hold 4 frames, 8 are asked .*pack them again with data.clip_frames=8"),
    ({"classes": 35}, 4, r"s: shards were packed with num_classes=35, more than data.num_classes=8: "
                         r"set data.num_classes=35$"),
    # 8 clips, enough for 2 ranks of batch 3, but in shards of 3, 3 and 2: a rank with one shard may get 2.
    ({"train": 8, "clips_per_shard": 3}, 4, r"s: a rank may get 2 train clip\(s\) \(ranks read whole shards: 1 "
                                           r"of the 3 for each of 2\), fewer than a batch of data.loader.batch_size=3"),
])
def test_what_the_shards_cannot_give_is_refused_in_one_line(tmp_path: Path, change: dict, asked: int,
                                                            message: str) -> None:
    cfg = DataConfig(shards=shards_of(tmp_path / "s", **change), num_classes=8, clip_frames=8,
                     loader=LoaderConfig(batch_size=3))
    with pytest.raises(ShardsMismatchError, match=message) as refused:
        planned(cfg, "train", asked, world_size=2, full_batches=True)
    assert isinstance(refused.value, UserInputError) and "\n" not in str(refused.value)
