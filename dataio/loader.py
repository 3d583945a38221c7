"""The training loader: shards -> DALI decode -> crop/flip/resize -> torch batches ``[B, T, C, H, W]``.

Design (the why; numbers from this machine, 2 cores, no GPU, see ``benchmarks/decode.py``):

- **Python reads, DALI decodes.** ``dataio.reader`` streams each tar front to back (local or
  ``s3://``, in a thread ahead of decoding) and feeds the encoded members to ``fn.external_source``.
  Not ``fn.readers.webdataset``: a truncated tar or a missing member stops a DALI pipeline for good
  (docs/platform.md), with no handle on which samples were lost. In Python those faults are found while
  the bytes pass by and each costs one ``Skip`` record; the ``.idx`` beside a shard names the
  samples a truncated tar lost. Reading costs ~0.05 ms per clip frame, next to 2.6 ms of decoding.
- **A decode error costs a rebuild, not the run.** Bytes that do not decode fail a DALI run and
  leave the pipeline dead; ``dataio.pipeline.Decoder`` builds a new one (~10 ms) and decodes that
  run's samples one by one, so only the bad ones are skipped, and the batch is filled from the next
  samples: batches stay full. Decoded streams whose shape or class ids disagree with the metadata
  are skipped the same way. Common path cost: none.
- **Augmentation** on ``cpu``: OpenCV in a thread pool writing straight into the batch tensors
  (``dataio.augment``, which says why not DALI's CPU operators); on ``mixed``: inside the DALI graph
  on the GPU. One DALI run is in flight while the previous one is augmented, and while the
  consumer holds the batch just yielded, so decode, augmentation and training overlap.
- **Every random choice is drawn here**, per sample, from ``(loader.seed, epoch, key)``: window start
  in ``[0, frames_in_clip - T]``, a crop of the output's aspect ratio whose side is a fraction in
  ``[min_scale, 1]`` of the largest such box, a left-right flip. The draw reaches the rgb, label,
  edge and flow streams alike. Keying it on the sample rather than its position makes it
  independent of read order and of retries after a decode error. The shard order is drawn from
  ``(seed, epoch)`` (the same on every rank, which then takes every ``world_size``-th shard) and the
  shuffle buffer from ``(seed, epoch, rank)``. ``split != "train"`` (or ``augment=False``, for
  evaluating training clips) gets no augmentation and no shuffle: the full frame (centre box of the output's aspect), frames ``[0, T)``, shard order.
- **Flow** is dequantized, scaled by the resize factor and negated in x for a mirrored sample.
  ``flow[:, 0]`` and ``flow_conf[:, 0]`` are zero, as in the shard format: the frame before the
  window's first frame is not in the batch.
- **Skips and the limit.** ``stats`` counts, per epoch, the samples read and skipped and keeps
  ``(shard, key, reason)`` of each skip (also logged as a warning). Loading stops with
  ``BadDataError`` when ``skipped / read`` passes ``loader.max_bad_fraction``: checked after each
  skip once ``_MIN_READ`` samples were read (one bad clip among the first three must not stop a
  run whose limit is 5%), and at the end of the epoch. A limit of 0 stops at the first bad sample.
- The last, short batch of an epoch is dropped for ``train`` (engines are set up for one micro
  batch size) and kept for other splits.
"""
from __future__ import annotations

import dataclasses
import logging
import zlib
from collections.abc import Iterator

import numpy as np
import torch

from dataio import format as fmt
from dataio import reader
from dataio.augment import Arenas, BatchTensors, Writer
from dataio.config import DataConfig
from dataio.errors import UserInputError
from dataio.labels import LabelSpec
from dataio.batch import ClipBatch, Draw
from dataio.pipeline import Decoded, Decoder, GraphSpec
from dataio.storage import describe

log = logging.getLogger(__name__)

_MIN_READ = 32
"""Samples read before the bad fraction is checked mid-epoch (see the module docstring)."""
_PREFETCH = 64
"""Samples the reader thread may hold ahead of decoding."""
NVDEC_MIN_SIDE = 128
"""NVDEC refuses smaller VP9 frames ("Video is too small ... supported: 128x128", H200, DALI 2.4):
every sample would be skipped as bad, so ``mixed`` on such shards is refused up front."""


class BadDataError(UserInputError, RuntimeError):
    """Too many corrupt samples: the share of skipped samples passed ``loader.max_bad_fraction``."""


@dataclasses.dataclass
class LoaderStats:
    """What one epoch read and skipped."""
    read: int = 0
    """Samples taken from the shards, good and bad."""
    skipped: int = 0
    skips: list[reader.Skip] = dataclasses.field(default_factory=list)

    @property
    def bad_fraction(self) -> float:
        return self.skipped / self.read if self.read else 0.0


def build_loader(cfg: DataConfig, height: int, width: int, frames: int, *, split: str = "train",
                 rank: int = 0, world_size: int = 1, epoch_seed: int | None = None,
                 augment: bool | None = None) -> ClipLoader:
    """A loader of ``split`` clips at ``height`` x ``width`` x ``frames`` for one rank.

    ``epoch_seed`` is the epoch the first ``iter()`` draws its shuffle and augmentation from (the
    trainer passes its epoch so a resumed run sees what it would have seen); each later ``iter()``
    takes the next. Reads the manifest (without one, the first sample) to learn the label layout.
    """
    augment = split == "train" if augment is None else augment
    shards, layout = reader.planned(cfg, split, frames, world_size, full_batches=augment)
    loader_cfg = cfg.loader
    device_id = None
    if loader_cfg.device == "mixed":
        if min(layout.min_height, layout.min_width) < NVDEC_MIN_SIDE:
            raise ValueError(f"data.loader.device=mixed decodes with NVDEC, which refuses VP9 frames under "
                             f"{NVDEC_MIN_SIDE}x{NVDEC_MIN_SIDE}; {split} clips under "
                             f"{describe(cfg.shards)} are stored as small as "
                             f"{layout.min_width}x{layout.min_height}: use data.loader.device=cpu")
        if not torch.cuda.is_available():
            raise RuntimeError("loader.device is 'mixed' but no CUDA device is visible; use 'cpu'")
        device_id = torch.cuda.current_device()
    spec = GraphSpec(height=height, width=width, frames=frames, batch_size=loader_cfg.batch_size,
                     threads=loader_cfg.threads, num_classes=cfg.num_classes,
                     label_kind=layout.label_kind, has_edges=layout.has_edges,
                     device=loader_cfg.device, label_device=loader_cfg.label_device,
                     device_id=device_id, seed=loader_cfg.seed)
    return ClipLoader(cfg, spec, shards, split=split, rank=rank, world_size=world_size,
                      epoch=epoch_seed or 0, augment=augment)


class ClipLoader:
    """An iterable over one epoch of ``ClipBatch``es; each ``iter()`` starts the next epoch."""

    def __init__(self, cfg: DataConfig, spec: GraphSpec, shards: list[str], *, split: str,
                 rank: int, world_size: int, epoch: int, augment: bool | None = None) -> None:
        reader.shards_for_rank(shards, rank, world_size, 0, 0, False)  # refuses a bad split now
        self.cfg, self.spec, self.shards = cfg, spec, shards
        self.split, self.rank, self.world_size = split, rank, world_size
        self.epoch = epoch
        """The epoch the next ``iter()`` reads."""
        self.stats = LoaderStats()
        """The current (or last) epoch's counts."""
        self.augment = split == "train" if augment is None else augment
        """Random windows, crops, flips and shuffling (training); else full frames from frame 0, in order."""
        self.device = torch.device("cuda", spec.device_id) if spec.device == "mixed" else torch.device("cpu")
        self._decoder = Decoder(spec)
        self._writer = Writer(spec, spec.threads)
        self._arenas = Arenas()

    @property
    def seed(self) -> int:
        return self.cfg.loader.seed

    @property
    def label_channels(self) -> int:
        return self.spec.label_channels

    @property
    def labels(self) -> LabelSpec:
        """How this data's label maps are read and laid out (stored with the exported generator)."""
        spec = LabelSpec.from_data(self.cfg, self.spec.has_edges)
        return dataclasses.replace(spec, kind=self.spec.label_kind)  # the shards' kind, not the config's

    def close(self) -> None:
        """Stop the augmentation threads (also done when the loader is garbage-collected)."""
        self._writer.close()

    def __del__(self) -> None:
        if hasattr(self, "_writer"):
            self.close()

    def __iter__(self) -> Iterator[ClipBatch]:
        epoch, self.epoch = self.epoch, self.epoch + 1
        self.stats = LoaderStats()
        return self._batches(epoch)

    # ------------------------------------------------------------------------------------------
    # One epoch

    def _batches(self, epoch: int) -> Iterator[ClipBatch]:
        shards = reader.shards_for_rank(self.shards, self.rank, self.world_size, self.seed, epoch,
                                        shuffle=self.augment)
        buffer = self.cfg.loader.shuffle_buffer if self.augment else 1
        rng = np.random.default_rng([self.seed, epoch, self.rank])
        items = reader.Prefetch(reader.shuffled(reader.read_shards(self.cfg.shards, shards), buffer, rng),
                                depth=_PREFETCH)
        try:
            yield from self._assemble(items, epoch)
            self._check_limit(final=True)
        finally:
            items.close()
            self._decoder.drain()

    def _assemble(self, items: Iterator[reader.Sample | reader.Skip], epoch: int) -> Iterator[ClipBatch]:
        """Fill batches run by run; run k+1 decodes while run k is augmented and batch j is used."""
        size = self.spec.batch_size
        batch = BatchTensors(self.spec, self.device, self._arenas)
        run = self._submit(items, size, epoch)
        while run:
            good = []
            for sample, draw, result in zip(*run, self._decoder.collect()):
                if isinstance(result, Decoded):
                    good.append((result, draw, sample.meta, bool(sample.streams.get(fmt.EDGE))))
                    batch.keys.append(sample.key)
                    batch.draws.append(draw)
                else:
                    self._skip(reader.Skip(sample.shard, sample.key, result.reason))
            free = size - batch.filled - len(good)
            run = self._submit(items, free or size, epoch)
            self._writer.write(batch, good)
            if batch.filled == size:
                yield self._clip_batch(batch)
                batch = BatchTensors(self.spec, self.device, self._arenas)
        if batch.filled and not self.augment:
            yield self._clip_batch(batch)

    def _submit(self, items: Iterator[reader.Sample | reader.Skip], count: int, epoch: int
                ) -> tuple[list[reader.Sample], list[Draw]] | None:
        """Take up to ``count`` usable samples, draw their augmentation, start decoding them."""
        samples = self._take(items, count)
        if not samples:
            return None
        draws = [self._draw(sample, epoch) for sample in samples]
        self._decoder.submit([s.streams for s in samples], draws, [s.meta for s in samples])
        return samples, draws

    @staticmethod
    def _clip_batch(batch: BatchTensors) -> ClipBatch:
        return ClipBatch(**batch.finish(), keys=batch.keys, draws=batch.draws)

    def _take(self, items: Iterator[reader.Sample | reader.Skip], count: int) -> list[reader.Sample]:
        samples: list[reader.Sample] = []
        for item in items:
            self.stats.read += 1
            if isinstance(item, reader.Skip):
                self._skip(item)
                continue
            reason = self._unusable(item)
            if reason:
                self._skip(reader.Skip(item.shard, item.key, reason))
                continue
            samples.append(item)
            if len(samples) == count:
                break
        return samples

    def _unusable(self, sample: reader.Sample) -> str | None:
        """Why a sample cannot go into this loader's graph (checked before decoding), or None."""
        meta, spec = sample.meta, self.spec
        if meta.frames < spec.frames:
            return f"the clip has {meta.frames} frames, the loader takes {spec.frames}"
        if meta.label_kind != spec.label_kind:
            return f"label_kind={meta.label_kind}, the split's is {spec.label_kind}"
        if spec.has_edges and meta.has_edges and not sample.streams.get(fmt.EDGE):
            return f"missing member {fmt.EDGE} (its metadata says has_edges)"
        if meta.label_kind == "classes" and meta.num_classes > spec.num_classes:
            return f"packed with num_classes={meta.num_classes} > data.num_classes={spec.num_classes}"
        if meta.height < 2 or meta.width < 2:
            return f"metadata size {meta.width}x{meta.height}"
        return None

    def _draw(self, sample: reader.Sample, epoch: int) -> Draw:
        meta, spec, cfg = sample.meta, self.spec, self.cfg.loader
        rng = np.random.default_rng([self.seed, epoch, zlib.crc32(sample.key.encode())])
        # The largest box of the output's aspect ratio: a crop never stretches the image.
        if meta.width * spec.height > meta.height * spec.width:
            box_h, box_w = meta.height, meta.height * spec.width / spec.height
        else:
            box_h, box_w = meta.width * spec.height / spec.width, meta.width
        scale = rng.uniform(cfg.min_scale, 1.0) if self.augment else 1.0
        crop_h = min(meta.height, max(1, round(box_h * scale)))
        crop_w = min(meta.width, max(1, round(box_w * scale)))
        if self.augment:
            y0 = int(rng.integers(0, meta.height - crop_h + 1))
            x0 = int(rng.integers(0, meta.width - crop_w + 1))
            start = int(rng.integers(0, meta.frames - spec.frames + 1))
            flip = bool(cfg.flip and rng.random() < 0.5)
        else:
            y0, x0, start, flip = (meta.height - crop_h) // 2, (meta.width - crop_w) // 2, 0, False
        return Draw(start=start, box=(y0, x0, y0 + crop_h, x0 + crop_w), flip=flip)

    # ------------------------------------------------------------------------------------------
    # Skips and the limit

    def _skip(self, skip: reader.Skip) -> None:
        self.stats.skipped += 1
        self.stats.skips.append(skip)
        log.warning("skipping sample %s of %s: %s", skip.key, skip.shard, skip.reason)
        self._check_limit(final=False)

    def _check_limit(self, final: bool) -> None:
        stats, limit = self.stats, self.cfg.loader.max_bad_fraction
        if not stats.skipped or stats.bad_fraction <= limit:
            return
        if not final and limit > 0 and stats.read < _MIN_READ:
            return
        last = "; ".join(f"{s.shard}: {s.key} ({s.reason})" for s in stats.skips[-3:])
        raise BadDataError(f"{self.split} data under {self.cfg.shards}: {stats.skipped} of "
                           f"{stats.read} samples read were bad ({stats.bad_fraction:.1%}), over "
                           f"loader.max_bad_fraction={limit}. Last bad: {last}")
