"""The root of the config tree (one YAML file holds every section) and the trainer's own sections."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Sequence

from dataio.config import DataConfig
from models.config import ModelConfig
from trainer.config_tree import load_config


@dataclass
class ScheduleConfig:
    """The progressive curriculum (see trainer/schedule.py for the rules)."""
    epochs_per_scale: int = 10
    """Epochs before the next finer generator scale is added (the finest keeps training to the end)."""
    fix_coarse_epochs: int = 2
    """Epochs a newly added scale trains alone, the coarser scales frozen; then all train jointly."""
    start_frames: int = 2
    """Clip length at the start of each spatial scale."""
    frames_double_every: int = 2
    """Epochs between doublings of the clip length."""
    max_frames: int = 8
    """Longest clip; also bounded by data.clip_frames."""

    def __post_init__(self) -> None:
        if self.epochs_per_scale < 1 or self.frames_double_every < 1:
            raise ValueError("epochs_per_scale and frames_double_every must be >= 1")
        if not 0 <= self.fix_coarse_epochs <= self.epochs_per_scale:
            raise ValueError(f"fix_coarse_epochs must be in [0, epochs_per_scale], got {self.fix_coarse_epochs}")
        if not 1 <= self.start_frames <= self.max_frames:
            raise ValueError(f"need 1 <= start_frames <= max_frames, got {self.start_frames}, {self.max_frames}")


@dataclass
class EngineConfig:
    """One DeepSpeed engine (the generator's or the discriminators')."""
    zero_stage: int = 0
    """ZeRO stage 0, 1 or 2. Stage 3 is refused: it hung in our 2-rank test (see README)."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """`auto`: bf16 on a GPU, fp32 on CPU (DeepSpeed refuses fp16 on CPU; bf16 there is slow)."""
    lr: float = 2e-4
    betas: list[float] = field(default_factory=lambda: [0.5, 0.999])
    """Adam betas; the GAN-standard (0.5, 0.999) of the reference code."""
    weight_decay: float = 0.0
    grad_clip: float = 0.0
    """Global gradient-norm clip; 0 turns it off (DeepSpeed's own default would silently be 1.0)."""
    check_grad_overflow: bool = True
    """bf16 under ZeRO 1/2: an inf/NaN check of every gradient before each step, which skips a step
    whose gradients are not finite (DeepSpeed's default). The engines make it one pass over all of them
    (DeepSpeed's own runs about 13 operators per gradient tensor: the demo step on bf16 ZeRO 2 dispatches
    4183 operators that are not views with the one-pass check, 12705 with DeepSpeed's, 4131 without:
    benchmarks/op_count.py). ``false`` drops it and its host read every step; then nothing skips a step
    whose loss is finite and whose gradients are not (with ``grad_clip`` > 0 DeepSpeed's invalid-norm skip
    goes too, in bf16 only): they reach the weights (never a checkpoint: ``trainer.step.check_weights``)."""

    def __post_init__(self) -> None:
        if self.zero_stage == 3:
            # Tried: a 2-rank run hung in ZeRO 3's cross-rank order check (gloo timeout after 600 s);
            # engine rebuilds over already-partitioned parameters are untested too.
            raise ValueError("zero_stage 3 is not supported by the trainer yet; use 2 (see README)")
        if self.zero_stage not in (0, 1, 2):
            raise ValueError(f"zero_stage must be 0, 1 or 2, got {self.zero_stage}")
        if self.lr <= 0 or self.weight_decay < 0 or self.grad_clip < 0:
            raise ValueError("lr must be > 0, weight_decay and grad_clip >= 0")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas}")


@dataclass
class TrainConfig:
    height: int = 128
    """Full (finest-scale) training resolution; coarser scales halve it per scale."""
    width: int = 256
    epochs: int = 20
    decay_epochs: int = 0
    """The learning rate stays constant, then decays linearly over the last `decay_epochs` epochs (towards 0,
    which no epoch reaches: ``trainer.schedule.lr_factor``)."""
    steps_per_epoch: int = 0
    """Batches per epoch; 0 reads the loader's whole epoch. Must be set when ranks see uneven shards."""
    frames_per_step: int = 2
    """Frames generated between optimizer updates: each chunk of a clip gets one D then one G update."""
    seed: int = 0
    """Seeds weights, noise and the data order; runs with the same seed and world size are repeatable."""
    max_bad_steps: int = 3
    """Consecutive steps with a non-finite loss (each skipped and counted) before training stops."""
    log_every: int = 1
    """Steps between metric rows sent to tracking (they are batched anyway)."""
    weight_average: float = 0.999
    """Decay of the running average of the generator's weights that is evaluated, sampled and
    exported (trainer/average.py; it warms up, so short runs average over their last ~10%); 0: the
    last weights instead."""
    time_budget_s: float = 0.0
    """Wall-clock seconds of training after which the run stops at the next batch boundary (all ranks
    together), then saves, exports and ends as if its epochs were done; 0: no limit. Counted from the
    start of this process's first epoch, so a resumed run gets the whole budget again. For comparisons
    at equal training time (benchmarks/quality.py)."""
    compile: Literal["off", "default", "reduce-overhead", "max-autotune"] = "off"
    """``torch.compile`` mode of the generator's frame step (each scale's networks; the flow prior and
    the warp between them stay eager) and of the discriminators (each PatchGAN; the pooling and the
    temporal windows stay eager): fewer, fused kernels. Each new input shape compiles once more (the
    first frame, the label-only path, each update's set of frames, a stage change, evaluation), which
    costs minutes at the start of a run on a CPU, where it did not make the step faster; it is meant
    for GPUs, where ``reduce-overhead`` adds CUDA graphs (1.34x faster steps on an H200 after 195 s of
    compiling, the generator alone). ``off``: eager (docs/performance.md has the measurements)."""
    channels_last: bool = False
    """With ``compile``: the compiled graphs run their convolutions channels-last (NHWC), the layout
    bf16 convolutions on GPUs compute in, to spare cuDNN's conversions to and from NCHW around them
    (all convolutions' conversions were 14% of the paper model's kernel time on an H200; VGG stays
    eager NCHW, and each graph's outputs return in NCHW). Inductor lays the graphs out; on a GPU its
    rule for training graphs declined every graph probed (it found this layout slower for
    pix2pix-like networks), so this forces it (``models/compiling.py``). The weights keep their layout
    (any ZeRO stage). Refused without ``compile``: eager CUDA kernels for reflection padding and group
    norm take NCHW only. Not yet timed on a GPU (``benchmarks/gpu_check.sh`` check 5)."""
    merge_passes: bool = True
    """One image-discriminator pass over every set of frames an update judges (real, output, raw
    hallucinated and label-only frames: four passes in each update otherwise; the G update's real
    frames judged in the same pass, their outputs detached), one temporal-discriminator pass over the
    real and fake windows of each update, and one VGG pass over
    the output and the extra frames, the real frames' features computed once. In the generator, a
    chunk's label-only frames in one pass, and what the label maps alone decide for a chunk's frames
    (each scale's label encoder and SPADE modulations, ``models/chunk_labels.py``) in one pass, not one
    per frame (not with ``compile``, whose graphs take one frame). Fewer, larger kernels, and the same
    losses and gradients as a pass per set (to float rounding) where the networks judge each sample on
    its own; with ``norm: batch`` or spectral norm (statistics across the batch, a power iteration per
    pass) those passes stay separate whatever this says. ``false``: a pass per set
    (benchmarks/op_count.py compares the two)."""
    generator: EngineConfig = field(default_factory=EngineConfig)
    discriminator: EngineConfig = field(default_factory=EngineConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)

    def __post_init__(self) -> None:
        if self.height < 8 or self.width < 8:
            raise ValueError(f"height and width must be >= 8, got {self.height}x{self.width}")
        if self.epochs < 1 or not 0 <= self.decay_epochs <= self.epochs:
            raise ValueError(f"need epochs >= 1 and 0 <= decay_epochs <= epochs, "
                             f"got {self.epochs}, {self.decay_epochs}")
        if self.steps_per_epoch < 0 or self.frames_per_step < 1 or self.max_bad_steps < 1 or self.log_every < 1:
            raise ValueError("steps_per_epoch must be >= 0; frames_per_step, max_bad_steps, log_every >= 1")
        if not 0.0 <= self.weight_average < 1.0:
            raise ValueError(f"weight_average must be in [0, 1) (0: off), got {self.weight_average}")
        if not self.time_budget_s >= 0:
            raise ValueError(f"time_budget_s must be >= 0 (0: no limit), got {self.time_budget_s}")
        if self.channels_last and self.compile == "off":
            raise ValueError("channels_last needs compile (not off): the compiled graphs are what it lays out")


EVAL_METRICS = {"eval/psnr": "max", "eval/ssim": "max", "eval/warp_error": "min", "eval/warp_ratio": "min"}
"""The held-out scores logged during training (``trainer/validation.py``) that a sweep or
``model publish --best`` can rank by, and which way is better."""


@dataclass
class CheckpointConfig:
    dir: str = "checkpoints"
    """Folder (shared by every rank) that holds `step-*/` checkpoints and the `latest` pointer."""
    every_steps: int = 0
    """Save every this many optimizer steps; 0 saves only at epoch ends."""
    keep: int = 3
    """Complete checkpoints kept; older ones are deleted after a newer one is complete."""
    keep_best: str = ""
    """A held-out score (``eval/psnr`` ...; with ``eval.at_checkpoint``): the checkpoint with its best
    recorded value is kept as well (``vid2vid model publish --best``), and Ray keeps its copies by it."""
    resume: bool = True
    """Continue from `dir`'s latest complete checkpoint when there is one."""

    def __post_init__(self) -> None:
        if self.every_steps < 0 or self.keep < 1:
            raise ValueError(f"every_steps must be >= 0 and keep >= 1, got {self.every_steps}, {self.keep}")
        if self.keep_best and self.keep_best not in EVAL_METRICS:
            raise ValueError(f"keep_best: {self.keep_best!r} is not a held-out score (known: {', '.join(EVAL_METRICS)})")


@dataclass
class TrackingConfig:
    uri: str = "sqlite:///mlflow.db"
    """MLflow tracking URI: the embedded sqlite store, or a server `http://host:port`."""
    experiment: str = "vid2vid"
    artifact_location: str = ""
    """Where a newly created experiment stores artifacts (sample videos); empty: MLflow's default
    (`./mlruns` of the process that creates it, or the server's artifact root)."""
    run_name: str = ""
    """Name of a new run; empty lets MLflow pick one. A resumed run continues its checkpoint's run."""
    enabled: bool = True
    flush_every_s: float = 5.0
    """Seconds between batched metric uploads (done off the training thread)."""
    max_buffered: int = 100_000
    """Metric values held while the server is unreachable; the oldest are dropped past this."""
    sample_video: bool = True
    """Log a labels | generated | real mp4 at the end of each stage."""

    def __post_init__(self) -> None:
        if self.flush_every_s <= 0 or self.max_buffered < 1:
            raise ValueError("flush_every_s must be > 0 and max_buffered >= 1")


@dataclass
class EvalConfig:
    """`vid2vid eval`, the held-out scores during training and benchmarks/quality.py: which clips, at
    what size, with which feature networks, and how often during training."""
    split: Literal["train", "val"] = "val"
    """Manifest split whose clips are evaluated (all of them)."""
    frames: int = 0
    """Frames per clip, from the first; 0: the packed clip length."""
    height: int = 0
    """Evaluation size; 0: the packed size, rounded down to what the generator's scales need."""
    width: int = 0
    batch_size: int = 1
    max_clips: int = 0
    """Stop after this many clips; 0: every clip of the split."""
    inception: str = ""
    """Local TorchScript Inception for FID (StyleGAN2-ADA's ``inception-2015-12-05.pt`` for numbers
    comparable with the literature, or any module mapping frames to features); empty: FID skipped."""
    i3d: str = ""
    """Local TorchScript I3D for FVD (StyleGAN-V's ``i3d_torchscript.pt``, or any module mapping clips to
    features); empty: FVD skipped."""
    device: str = "auto"
    """``auto`` (a GPU when there is one), ``cpu``, ``cuda``, ``cuda:1`` ..."""
    every_steps: int = 0
    """During training: score the held-out clips (PSNR, SSIM, warping error; FID/FVD are left to
    `vid2vid eval`) every this many optimizer steps, at the current stage's size unless height/width
    are set, and log them as ``eval/*`` at that step; 0: never."""
    every_s: float = 0.0
    """The same every this many seconds of training (the evaluation's own time is not counted, and
    neither does it count against ``train.time_budget_s``); 0: never. Learning curves of
    benchmarks/quality.py use this."""
    at_checkpoint: bool = False
    """The same right before each checkpoint: the checkpoint records the scores, and a cluster run
    reports them to Ray with it (a sweep's ``eval/*`` metric needs them in every report)."""

    def __post_init__(self) -> None:
        if self.frames < 0 or self.height < 0 or self.width < 0 or self.max_clips < 0:
            raise ValueError("frames, height, width and max_clips must be >= 0 (0: the default)")
        if self.every_steps < 0 or not self.every_s >= 0:
            raise ValueError(f"every_steps and every_s must be >= 0 (0: never), got {self.every_steps}, {self.every_s}")
        if (self.height == 0) != (self.width == 0):
            raise ValueError(f"set height and width together (got {self.height}x{self.width})")
        if self.frames == 1:
            raise ValueError("frames must be >= 2: temporal consistency needs a previous frame")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        # Cross-section limits: each section alone cannot see them.
        if self.checkpoint.keep_best and not self.eval.at_checkpoint:
            raise ValueError(f"checkpoint.keep_best={self.checkpoint.keep_best} needs eval.at_checkpoint: true "
                             "(checkpoints record their scores only then)")
        if self.train.schedule.max_frames > self.data.clip_frames:
            raise ValueError(f"train.schedule.max_frames ({self.train.schedule.max_frames}) exceeds "
                             f"data.clip_frames ({self.data.clip_frames}): clips are not that long")
        gen = self.model.generator
        # Stage s trains at the size halved (num_scales-1-s) times, with a generator that downsamples
        # 2**(n_downsample+s) times: every stage fits exactly when the full size is a multiple of this.
        factor = 2 ** (gen.n_downsample + gen.num_scales - 1)
        if self.train.height % factor or self.train.width % factor:
            coarsest = (self.train.height >> (gen.num_scales - 1), self.train.width >> (gen.num_scales - 1))
            raise ValueError(f"train.height x train.width ({self.train.height}x{self.train.width}) must be "
                             f"multiples of 2**(model.generator.n_downsample + num_scales - 1) = {factor}: the "
                             f"coarsest stage trains at {coarsest[0]}x{coarsest[1]} with a generator that "
                             f"downsamples {2 ** gen.n_downsample}x")


def load(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """The resolved config: ``path`` (or the defaults) with dotted ``overrides`` applied."""
    return load_config(Config, path, overrides)
