"""One spatial scale of the coarse-to-fine generator: the global generator or a local enhancer.

Both have the same shape (vid2vid's CompositeGenerator / CompositeLocalGenerator):

    labels of frames t-L..t ─ label encoder ─┐
                                             + ─┬─ image decoder ─ tanh ─────────────▶ hallucinated h
    previous L outputs ───── image encoder ──┘  └─ flow decoder ─┬─ conv ─ x mult ──▶ flow w (pixels)
                          (+ coarser scale's decoder features)   └─ conv ─ sigmoid ─▶ mask m

The flow conv starts at zero (the identity warp), so an untrained generator copies its previous frame
where the mask says so instead of sampling it pixels away.

The first frame has no previous output: the label features alone are decoded (``first_frame:
shared``), or a first-frame image generator of the same shape (an encoder of the current label map,
an image decoder, a head) makes it (``first_frame: own``).

The global scale downsamples ``n_downsample`` times and holds the residual blocks; a local enhancer
downsamples once, adds the decoder features of the next coarser scale (same width and resolution
after its one downsampling) and upsamples back, doubling the output resolution.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from models.config import GeneratorConfig
from models.layers import CondSequential, ConvBlock, OutputConv, ResBlock, conv_factory, output_convs

if TYPE_CHECKING:
    from models.chunk_labels import ScaleLabels

IMAGE_CHANNELS = 3


@dataclass
class ScaleResult:
    """What one scale produces at its resolution; the features feed the next finer scale. The images, the
    flow and the mask come from the finest active scale only (None at the others)."""
    hallucinated: Tensor | None
    flow: Tensor | None
    mask: Tensor | None
    image_features: Tensor
    flow_features: Tensor | None
    label_only: Tensor | None = None
    """The image the labels alone give (the first frame's path), when asked for with previous frames."""
    label_only_features: Tensor | None = None


class GeneratorScale(nn.Module):
    """Scale ``scale`` (0 = global, coarsest) of the generator described by ``cfg``."""

    def __init__(self, cfg: GeneratorConfig, label_channels: int, scale: int) -> None:
        super().__init__()
        self.scale = scale
        self.temporal = not cfg.per_frame
        self.flow_multiplier = cfg.flow_multiplier * 2 ** scale
        conv = conv_factory(cfg.spectral_norm)
        plain = "instance" if cfg.norm == "spade" else cfg.norm
        if scale == 0:
            widths = [min(cfg.ngf * 2 ** i, cfg.max_channels) for i in range(cfg.n_downsample + 1)]
            enc_blocks, dec_blocks = cfg.n_blocks - cfg.n_blocks // 2, cfg.n_blocks // 2
        else:
            ngf = cfg.ngf // 2 ** scale
            widths, enc_blocks, dec_blocks = [ngf, 2 * ngf], 0, cfg.n_blocks_local
        self.widths = widths

        def encoder(c_in: int) -> CondSequential:
            layers = [ConvBlock(c_in, widths[0], 7, plain, conv=conv)]
            layers += [ConvBlock(widths[i], widths[i + 1], 3, plain, stride=2, conv=conv)
                       for i in range(len(widths) - 1)]
            layers += [ResBlock(widths[-1], plain, conv=conv) for _ in range(enc_blocks)]
            return CondSequential(layers)

        def decoder(norm: str) -> CondSequential:
            extra = {"cond_channels": label_channels, "hidden": cfg.spade_hidden, "conv": conv}
            layers = [ResBlock(widths[-1], norm, **extra) for _ in range(dec_blocks)]
            layers += [ConvBlock(widths[i + 1], widths[i], 3, norm, upsample=True, **extra)
                       for i in reversed(range(len(widths) - 1))]
            return CondSequential(layers)

        self.label_encoder = encoder(label_channels * cfg.label_frames)
        self.image_decoder = decoder(cfg.norm)
        self.image_head = OutputConv(widths[0], IMAGE_CHANNELS, conv)
        if self.temporal:
            self.prev_encoder = encoder(IMAGE_CHANNELS * cfg.prev_frames)
            self.flow_decoder = decoder(plain)
            # The flow starts at the identity warp: with default init the head predicted 9-12 px at
            # 64x128 against sub-pixel targets, so the first warps smeared every frame.
            self.flow_head = OutputConv(widths[0], 2, zero_init=True)
            self.mask_head = OutputConv(widths[0], 1, conv)
        self.first_frame: nn.ModuleDict | None = None
        if self.temporal and cfg.first_frame == "own":
            self.first_frame = nn.ModuleDict({"encoder": encoder(label_channels), "decoder": decoder(cfg.norm),
                                              "head": OutputConv(widths[0], IMAGE_CHANNELS, conv)})

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        if "first_frame" not in self.__dict__ and "first_frame" not in self._modules:
            self.first_frame = None  # pickled before the first frame could have networks of its own

    def heads(self) -> list[nn.Module]:
        """The output convolutions: unused (no gradient) when a finer scale is active."""
        own = [] if self.first_frame is None else [self.first_frame["head"]]
        return [self.image_head] + ([self.flow_head, self.mask_head] if self.temporal else []) + own

    def forward(self, labels: Tensor, prev: Tensor | None, cond: Tensor,
                coarse: ScaleResult | None = None, label_only: bool = False,
                chunk: ScaleLabels | None = None, finest: bool = True) -> ScaleResult:
        """``labels`` [B, (L+1)*C, h, w], ``prev`` [B, L*3, h, w] or None (first frame), ``cond``
        the current label map [B, C, h, w] for SPADE. ``label_only``: also make the image the labels
        alone give, as the first frame is made (``model.generator.first_frame``). ``chunk``: the same
        label maps as one frame of a chunk (``models/chunk_labels.py``): with previous frames, the label
        encoder and the image decoder's SPADE modulations come from one pass over the chunk. ``finest``: whether
        this is the finest active scale; the others run no output head (a finer scale's output replaces
        theirs, and their heads are frozen)."""
        if prev is None:
            features, image = self._labels_alone(labels, cond, None if coarse is None else coarse.image_features,
                                                  finest=finest)
            return ScaleResult(image, None, None, features, None)
        if not self.temporal:
            raise ValueError("the per-frame generator takes no previous frames")
        label_features = self.label_encoder(labels) if chunk is None else chunk.encoded(self.label_encoder)
        features = label_features + self.prev_encoder(prev)
        image_features, hallucinated = self._image(features, None if coarse is None else coarse.image_features,
                                                   cond if chunk is None else chunk, finest)
        flow_in = features if coarse is None or coarse.flow_features is None \
            else features + coarse.flow_features
        flow_features = self.flow_decoder(flow_in, cond)
        flow = mask = None
        if finest:
            flow, mask = output_convs([self.flow_head, self.mask_head], flow_features)
            flow, mask = flow * self.flow_multiplier, torch.sigmoid(mask)
        alone_features = alone = None
        if label_only:
            alone_features, alone = self._labels_alone(
                labels, cond, None if coarse is None else coarse.label_only_features, label_features, finest)
        return ScaleResult(hallucinated, flow, mask, image_features, flow_features, alone, alone_features)

    def _labels_alone(self, labels: Tensor, cond: Tensor, coarse_features: Tensor | None,
                      label_features: Tensor | None = None, finest: bool = True) -> tuple[Tensor, Tensor | None]:
        """The decoder features and (at the finest scale) the image the labels alone give: the first
        frame's path (``label_features``: the shared label encoder's output, when already computed)."""
        if self.first_frame is not None:
            features = self.first_frame["encoder"](cond)
            decoded = self.first_frame["decoder"](
                features if coarse_features is None else features + coarse_features, cond)
            return decoded, torch.tanh(self.first_frame["head"](decoded)) if finest else None
        return self._image(self.label_encoder(labels) if label_features is None else label_features,
                           coarse_features, cond, finest)

    def _image(self, features: Tensor, coarse_features: Tensor | None, cond: Tensor | ScaleLabels,
               finest: bool = True) -> tuple[Tensor, Tensor | None]:
        """The image decoder's features and (at the finest scale) the image (tanh) from encoder
        ``features``; ``cond`` goes to its SPADE norms."""
        decoded = self.image_decoder(features if coarse_features is None else features + coarse_features, cond)
        return decoded, torch.tanh(self.image_head(decoded)) if finest else None
