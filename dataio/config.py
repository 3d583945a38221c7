"""The ``data`` section of the config tree: synthetic data, packing and loading."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


MIN_SIDE = 16
"""Smallest packed side: DIS flow works on 8x8 patches over an image pyramid."""


@dataclass
class SynthConfig:
    """`vid2vid data synth`: procedural paired label/RGB sequences."""
    out: str = "data/synth"
    """Folder that receives one sub-folder per sequence (the layout `pack` reads)."""
    sequences: int = 8
    """Number of sequences."""
    frames: int = 24
    """Frames per sequence."""
    height: int = 128
    width: int = 256
    seed: int = 0
    """Everything generated is a pure function of this seed."""

    def __post_init__(self) -> None:
        if self.sequences < 1 or self.frames < 2:
            raise ValueError("sequences must be >= 1 and frames >= 2")
        if self.height < 32 or self.width < 32 or self.height % 2 or self.width % 2:
            raise ValueError(f"height and width must be even and >= 32, got {self.height}x{self.width}")


@dataclass
class PackConfig:
    """`vid2vid data pack`: input folders or videos -> WebDataset shards."""
    source: str = "data/synth"
    """Folder of sequences (sub-folders with frames/ and labels/, or videos); see the README."""
    layout: Literal["ours", "vid2vid", "davis"] = "ours"
    """How `source` is laid out: `ours` (above), `vid2vid` (the reference code's train_A/ label maps,
    train_B/ frames, train_inst/ instance maps, one sub-folder per sequence each) or `davis`
    (JPEGImages/480p/<seq>/ frames, Annotations/480p/<seq>/ masks)."""
    clips_per_shard: int = 16
    """Samples per tar shard."""
    clip_stride: int = 8
    """Frames between the starts of consecutive clips of one sequence."""
    rgb_crf: int = 18
    """VP9 constant-quality level of the RGB stream (lower is better; 0-63)."""
    flow: Literal["dis", "farneback"] = "dis"
    """Optical-flow target method (OpenCV, CPU)."""
    label_map: dict[int, int] = field(default_factory=dict)
    """Remap stored label values to class ids, e.g. {255: 1} for a 0/255 mask; unlisted values keep theirs."""
    label_kind: Literal["classes", "rgb"] = "classes"
    """`classes`: single-channel class ids; `rgb`: 3-channel renderings (pose, edges)."""
    val_fraction: float = 0.1
    """Share held out in the `val` split: of the sequences (``split: sequence``) or of each sequence's
    frames (``split: time``)."""
    split: Literal["sequence", "time"] = "sequence"
    """`sequence`: whole sequences go to `val`, chosen by a stable hash of the name (nothing of a val
    sequence is trained on). `time`: the last `val_fraction` of every sequence's frames (at least one
    clip) is held out, and train clips end before it: for one long sequence, or a few."""
    resize: list[int] = field(default_factory=list)
    """Optional [height, width] every sequence is resized to before packing (labels nearest)."""
    workers: int = 0
    """Packing processes; 0 means one per core."""
    skip_bad: bool = False
    """Skip a bad sequence and list it in the report instead of stopping with an error."""

    def __post_init__(self) -> None:
        if self.clips_per_shard < 1 or self.clip_stride < 1:
            raise ValueError("clips_per_shard and clip_stride must be >= 1")
        if not 0 <= self.rgb_crf <= 63:
            raise ValueError(f"rgb_crf must be in [0, 63], got {self.rgb_crf}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.resize and (len(self.resize) != 2 or any(v < MIN_SIDE or v % 2 for v in self.resize)):
            raise ValueError(f"resize must be [height, width], even and >= {MIN_SIDE}, got {self.resize}")


@dataclass
class LoaderConfig:
    """The DALI pipeline that feeds training."""
    device: Literal["cpu", "mixed"] = "cpu"
    """`mixed` decodes video with NVDEC on the GPU; `cpu` decodes on the host (VP9 only)."""
    label_device: Literal["same", "cpu"] = "cpu"
    """Where the lossless label/flow/edge streams decode under `mixed`. Only `cpu` is accepted: NVDEC
    decodes their 4:4:4 VP9 wrongly (`benchmarks/gpu_check.sh` probes it; docs/performance.md)."""
    batch_size: int = 2
    threads: int = 2
    """DALI CPU threads per pipeline."""
    shuffle_buffer: int = 32
    """Samples held for shuffling; 1 reads in shard order."""
    min_scale: float = 0.8
    """Random crop side as a fraction of the clip's side, drawn in [min_scale, 1]."""
    flip: bool = True
    """Random horizontal flip."""
    max_bad_fraction: float = 0.05
    """Corrupt samples are skipped and counted; past this share of those read, loading stops."""
    seed: int = 0

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.threads < 1 or self.shuffle_buffer < 1:
            raise ValueError("batch_size, threads and shuffle_buffer must be >= 1")
        if not 0.0 < self.min_scale <= 1.0:
            raise ValueError(f"min_scale must be in (0, 1], got {self.min_scale}")
        if not 0.0 <= self.max_bad_fraction <= 1.0:
            raise ValueError(f"max_bad_fraction must be in [0, 1], got {self.max_bad_fraction}")
        if self.label_device != "cpu":
            # Seen on an H200 with DALI 2.4: class ids 128-255 out of 8 in half of the clips.
            raise ValueError(f"label_device={self.label_device!r} is refused: NVDEC decodes the lossless "
                             "4:4:4 label/flow streams wrongly; use 'cpu' (RGB still decodes on the GPU)")


@dataclass
class DataConfig:
    shards: str = "data/shards"
    """Shard location: a local folder or s3://bucket/prefix (endpoint and keys from the AWS_* variables)."""
    num_classes: int = 8
    """Label classes; packing refuses larger label values, the loader one-hot encodes to this many."""
    clip_frames: int = 16
    """Frames per packed clip (one shard sample)."""
    synth: SynthConfig = field(default_factory=SynthConfig)
    pack: PackConfig = field(default_factory=PackConfig)
    loader: LoaderConfig = field(default_factory=LoaderConfig)

    def __post_init__(self) -> None:
        if not 1 <= self.num_classes <= 256:
            raise ValueError(f"num_classes must be in [1, 256], got {self.num_classes}")
        if self.clip_frames < 2:
            raise ValueError(f"clip_frames must be >= 2, got {self.clip_frames}")
        if self.pack.label_map and self.pack.label_kind == "rgb":
            raise ValueError("pack.label_map remaps class ids; it does not apply to label_kind 'rgb'")
        for stored, class_id in self.pack.label_map.items():
            if not 0 <= stored < 65536 or not 0 <= class_id < self.num_classes:
                raise ValueError(f"pack.label_map {{{stored}: {class_id}}}: stored values are 0..65535 and "
                                 f"class ids 0..{self.num_classes - 1} (num_classes)")
