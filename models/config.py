"""The ``model`` section of the config tree: generator, discriminators and loss weights.

Pure dataclasses (no torch import): the CLI loads and validates this before anything heavy starts.
Label channels are not here: they are a property of the data (``num_classes``, plus one when
instance edges are present) and are passed to the builders in ``models/build.py``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

NormKind = Literal["spade", "instance", "batch"]
DiscriminatorNorm = Literal["instance", "batch", "none"]
GanMode = Literal["hinge", "lsgan", "nonsaturating"]
MaskTarget = Literal["occlusion", "output"]
MaskCriterion = Literal["l1", "bce"]
FlowPrior = Literal["labels", "none"]
FirstFrame = Literal["shared", "own"]

# VGG19 relu1_1 .. relu5_1, weighted as in pix2pixHD / vid2vid.
PAPER_VGG_LAYER_WEIGHTS = [1.0 / 32, 1.0 / 16, 1.0 / 8, 1.0 / 4, 1.0]


@dataclass
class GeneratorConfig:
    """The sequential flow-warping generator. Defaults: the small CPU demo model (paper widths in
    ``configs/paper.yaml``)."""
    prev_frames: int = 2
    """L: frame t is generated from the labels of frames t-L..t and the L previous outputs."""
    num_scales: int = 1
    """Spatial scales: a global generator at the coarsest one, a local enhancer for each finer one
    (each doubles the resolution). The trainer activates them one by one."""
    ngf: int = 16
    """Width of the global generator's first layer; local enhancer s has ``ngf // 2**s`` (paper: 128)."""
    max_channels: int = 1024
    """Cap on the width of the global generator's deepest layers."""
    n_downsample: int = 3
    """Stride-2 convolutions in the global generator (its bottleneck is 2**n_downsample smaller)."""
    n_blocks: int = 4
    """Residual blocks of the global generator: the label encoder has ``n_blocks - n_blocks // 2``,
    the image and flow decoders ``n_blocks // 2`` each."""
    n_blocks_local: int = 3
    """Residual blocks in each branch of a local enhancer."""
    norm: NormKind = "spade"
    """Normalization of the image decoder: ``spade`` modulates it with the current label map (so
    normalization cannot wash out the layout); ``instance``/``batch`` are plain. The encoders and
    the flow decoder use ``instance`` when this is ``spade``, otherwise this."""
    spade_hidden: int = 32
    """Hidden width of each SPADE's label embedding."""
    spectral_norm: bool = False
    """Spectral normalization on every generator convolution."""
    flow_multiplier: float = 20.0
    """Output scale of the flow head at the coarsest scale (doubled per finer scale), so that a
    freshly initialised head predicts flows of a few pixels rather than a fraction of one."""
    flow_prior: FlowPrior = "labels"
    """What the flow head starts from. ``labels``: the flow between the label maps of frames t and t-1
    (``models/label_flow.py``), computed on the CPU from the inputs; the head predicts a correction.
    ``none``: the head predicts the whole flow, as in the paper (it did not learn within CPU budgets:
    docs/performance.md)."""
    first_frame: FirstFrame = "own"
    """How a frame without a previous output (the first of a video) is made. ``own``: an image
    generator of its own (an encoder of the current label map and a SPADE image decoder, the width of
    the sequential one), as the reference code makes the first frame with a separate single-image
    generator; it is trained on every frame by ``loss.label_only`` and the image decoder serves the
    hallucinated frame h alone. ``shared``: the label encoder and image decoder of the sequential
    generator decode the labels alone. Every later frame is carried forward from the first, so its
    quality sets the clip's: on the quality benchmark ``own`` lifted PSNR by 0.19 dB on every frame
    index (docs/performance.md)."""
    per_frame: bool = False
    """Ablation: the image-to-image baseline. No previous frames, no flow, no mask (m = 1), labels
    of the current frame only; the flow and previous-frame modules are not built."""

    def __post_init__(self) -> None:
        if not 0 <= self.prev_frames <= 8:
            raise ValueError(f"prev_frames must be in [0, 8], got {self.prev_frames}")
        if self.prev_frames == 0 and not self.per_frame:
            raise ValueError("prev_frames = 0 leaves nothing to warp: set per_frame: true instead")
        if not 1 <= self.num_scales <= 4:
            raise ValueError(f"num_scales must be in [1, 4], got {self.num_scales}")
        if self.ngf < 2 ** self.num_scales or self.ngf % 2 ** (self.num_scales - 1):
            raise ValueError(f"ngf ({self.ngf}) must be divisible by 2**(num_scales-1) and leave >= 2 "
                             f"channels at the finest of {self.num_scales} scales")
        if self.max_channels < self.ngf:
            raise ValueError(f"max_channels ({self.max_channels}) must be >= ngf ({self.ngf})")
        if not 1 <= self.n_downsample <= 6:
            raise ValueError(f"n_downsample must be in [1, 6], got {self.n_downsample}")
        if self.n_blocks < 2 or self.n_blocks_local < 1:
            raise ValueError("n_blocks must be >= 2 and n_blocks_local >= 1")
        if self.spade_hidden < 1:
            raise ValueError(f"spade_hidden must be >= 1, got {self.spade_hidden}")
        if self.flow_prior not in ("labels", "none"):
            raise ValueError(f"flow_prior must be 'labels' or 'none', got {self.flow_prior!r}")
        if self.first_frame not in ("shared", "own"):
            raise ValueError(f"first_frame must be 'shared' or 'own', got {self.first_frame!r}")
        if self.flow_multiplier <= 0:
            raise ValueError(f"flow_multiplier must be > 0, got {self.flow_multiplier}")

    @property
    def label_frames(self) -> int:
        """How many label maps one frame's generation reads (1 for the per-frame ablation)."""
        return 1 if self.per_frame else self.prev_frames + 1


@dataclass
class DiscriminatorConfig:
    """Multi-scale PatchGAN image discriminator and the temporal (video) discriminators.
    Defaults: the CPU demo model (the paper's widths are in ``configs/paper.yaml``)."""
    ndf: int = 32
    """Width of each PatchGAN's first layer, doubling per layer, capped at 512 (paper: 64)."""
    n_layers: int = 3
    """Stride-2 layers of each PatchGAN."""
    num_D: int = 2
    """Spatial scales: PatchGANs on the input downsampled 1, 2, 4, ... times (image and temporal)."""
    norm: DiscriminatorNorm = "instance"
    spectral_norm: bool = False
    """Spectral normalization on every discriminator convolution (the SPADE recipe with hinge)."""
    temporal_frames: int = 3
    """K: consecutive frames (and the K-1 flows between them) the temporal discriminator sees."""
    temporal_scales: int = 2
    """Temporal discriminators at frame strides 1, K, K**2, ...; 0 disables the temporal loss.
    A scale whose window (``(K-1) * K**s + 1`` frames) is longer than the clip is skipped."""

    def __post_init__(self) -> None:
        if self.ndf < 1 or not 1 <= self.n_layers <= 6 or not 1 <= self.num_D <= 6:
            raise ValueError(f"need ndf >= 1, n_layers in [1, 6], num_D in [1, 6]; got "
                             f"ndf={self.ndf}, n_layers={self.n_layers}, num_D={self.num_D}")
        if self.temporal_frames < 2:
            raise ValueError(f"temporal_frames must be >= 2, got {self.temporal_frames}")
        if not 0 <= self.temporal_scales <= 4:
            raise ValueError(f"temporal_scales must be in [0, 4], got {self.temporal_scales}")

    def temporal_stride(self, scale: int) -> int:
        """Frame stride of temporal scale ``scale``: 1, K, K**2, ..."""
        return self.temporal_frames ** scale


@dataclass
class LossConfig:
    """Weights of the spatio-temporal objective; a weight of 0 turns its term off."""
    gan_mode: GanMode = "hinge"
    """GAN loss of the image and temporal discriminators."""
    gan: float = 1.0
    """Image discriminator, generator side."""
    temporal_gan: float = 1.0
    """Temporal discriminators (summed over temporal scales), generator side."""
    feature_matching: float = 10.0
    """L1 between the image discriminator's intermediate features on fake and real frames."""
    temporal_feature_matching: float = 10.0
    """The same for the temporal discriminators."""
    perceptual: float = 10.0
    """VGG19 perceptual loss; only computed when a VGG19 network is present (see ``vgg_weights``)."""
    perceptual_layers: list[float] = field(default_factory=lambda: list(PAPER_VGG_LAYER_WEIGHTS))
    """Weights of relu1_1, relu2_1, relu3_1, relu4_1, relu5_1."""
    style: float = 0.0
    """Gram-matrix style loss on the same VGG19 features (0: off)."""
    hallucinated: float = 1.0
    """The image terms (GAN, feature matching, perceptual) applied once more to the raw hallucinated
    frame h of every frame that has a flow, at this fraction of their weights; the image
    discriminator also learns to reject h. Without it h is trained only through the composite, so
    where the mask is small h gets almost no gradient (the reference codes use 1)."""
    label_only: float = 1.0
    """The image terms on the frame the labels alone give, generated beside every frame that has
    previous frames (by the path ``generator.first_frame`` names), at this fraction of their weights;
    the image discriminator also learns to reject it. That path makes the first frame, which seeds
    every later one, but is otherwise trained on 1 frame of T. 0: off (only with ``first_frame: shared``)."""
    flow: float = 10.0
    """L1 between predicted and target flow, weighted by the target's confidence."""
    warp: float = 10.0
    """L1 between the real previous frame warped by the predicted flow and the real frame."""
    output_warp: float = 10.0
    """L1 between each output frame and the previous output warped by the target flow (detached),
    weighted by the flow's confidence: the output's own temporal inconsistency (reference: 10)."""
    mask: float = 10.0
    """Pushes the occlusion mask to 0 (warp) or 1 (hallucinate) as ``mask_target`` says (imaginaire's
    weight)."""
    mask_target: MaskTarget = "occlusion"
    """Where the mask should hallucinate. ``occlusion``: where the data says the content is new: the
    target flow is not trusted (low forward-backward confidence: occlusions, content entering the
    frame) or does not carry the previous label map onto the current one (an uncovered surface of
    another class); independent of how good the output already is. ``output``: where the previous
    output warped by the predicted flow differs from the real frame (imaginaire's rule): while the
    output is still far from the real frames that is almost everywhere."""
    mask_criterion: MaskCriterion = "bce"
    """How the mask is pushed to its target. ``bce``: binary cross-entropy (its minimum is the
    probability that the pixel is new). ``l1``: imaginaire's masked L1, whose minimum is the median:
    where the network cannot tell whether a pixel is new with better than even odds it learns 0, and on
    the quality benchmark the mask stayed near 0.02-0.04 everywhere (1.2x higher on disoccluded
    pixels than on visible ones; ``bce``: 2.7x, docs/performance.md)."""
    vgg_weights: str = ""
    """Local file with torchvision's VGG19 state dict (``vgg19-dcbb9e9d.pth`` layout). Nothing is
    downloaded. Empty means NO perceptual or style loss: a randomly initialised VGG is never used
    in its place; only tests pass a random network to the loss functions explicitly."""

    def __post_init__(self) -> None:
        for name in ("gan", "temporal_gan", "feature_matching", "temporal_feature_matching",
                     "perceptual", "style", "hallucinated", "label_only", "flow", "warp", "output_warp", "mask"):
            if getattr(self, name) < 0:
                raise ValueError(f"loss weight '{name}' must be >= 0, got {getattr(self, name)}")
        if len(self.perceptual_layers) != 5 or any(w < 0 for w in self.perceptual_layers):
            raise ValueError(f"perceptual_layers must be 5 weights >= 0 (relu1_1..relu5_1), "
                             f"got {self.perceptual_layers}")
        if self.mask_criterion not in ("l1", "bce"):
            raise ValueError(f"mask_criterion must be 'l1' or 'bce', got {self.mask_criterion!r}")

    @property
    def uses_vgg(self) -> bool:
        """Whether the configured objective has a VGG term (needs ``vgg_weights``)."""
        return bool(self.vgg_weights) and (self.perceptual > 0 or self.style > 0)


@dataclass
class ModelConfig:
    """The ``model`` section. The per-frame baseline of the paper also drops the temporal
    discriminator: set ``discriminator.temporal_scales: 0`` with ``generator.per_frame: true``."""
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    loss: LossConfig = field(default_factory=LossConfig)

    def __post_init__(self) -> None:
        if self.generator.first_frame == "own" and not self.generator.per_frame and self.loss.label_only == 0:
            # Its only other training would be the first frame of each clip, so most updates would
            # leave its parameters without a gradient, which the ZeRO engines do not accept.
            raise ValueError("model.generator.first_frame: own trains the first-frame generator on every frame "
                             "through model.loss.label_only, which is 0: set it > 0 or first_frame: shared")


def per_sample(cfg: GeneratorConfig | DiscriminatorConfig) -> bool:
    """Whether these networks treat each sample of a batch on its own, so that one pass over several
    sets of frames gives each set what a pass of its own would: not with batch norm (statistics across
    the batch) nor spectral norm (a power iteration on every pass in training)."""
    return cfg.norm != "batch" and not cfg.spectral_norm
