"""The Python side of loading: shard listing, the rank split, tar reading, shuffling.

It hands DALI encoded bytes (see ``dataio/loader.py`` for why DALI does not read the tars itself).
Everything that can be checked without decoding is checked here, so that a bad sample costs a
``Skip`` record instead of a dead DALI pipeline:

- a missing member (``rgb.webm``, ``label.webm``, ``flow.webm``, ``json``) or unreadable metadata;
- a truncated or corrupt tar. ``tarfile`` in stream mode ends silently when a tar is cut at (or
  inside) a header, or at a header it cannot parse, so the reader also checks for the end-of-archive
  blocks and that only zeros follow them, and, when the ``.idx`` that ``wds2idx`` writes beside each
  shard is there, names every sample the tar lost;
- a shard that cannot be opened.

A shard is read front to back in one sequential stream (on S3, s3fs fetches it in 50 MB ranges).
"""
from __future__ import annotations

import collections
import dataclasses
import queue
import re
import tarfile
import threading
from collections.abc import Iterable, Iterator
from typing import IO, Generic, TypeVar

import numpy as np

from dataio import format as fmt
from dataio.config import DataConfig
from dataio.errors import UserInputError
from dataio.manifest import Manifest, read_manifest
from dataio.storage import Destination, describe

_KEY_SUFFIX = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset's key / suffix split
_TAR_BLOCK = 512


@dataclasses.dataclass
class Sample:
    """One clip's encoded members, as read from its shard."""
    shard: str
    key: str
    streams: dict[str, bytes]
    """Member suffix (``rgb.webm``, ``label.webm``, ``flow.webm``, ``edge.webm``) -> encoded bytes."""
    meta: fmt.ClipMeta


@dataclasses.dataclass(frozen=True)
class Skip:
    """A sample (or the rest of a shard) that was not used, and why."""
    shard: str
    key: str
    reason: str


# ---------------------------------------------------------------------------------------------
# Where the shards are


class ShardsMismatchError(UserInputError, ValueError):
    """The shards cannot give what the configuration asks: clips as long, as many classes, full batches."""


@dataclasses.dataclass(frozen=True)
class Layout:
    """What the label tensor looks like for a split: fixed when a loader is built."""
    label_kind: str
    has_edges: bool
    """True when any sample of the dataset carries ``edge.webm`` (the others get a zero edge channel)."""
    num_classes: int
    min_height: int
    min_width: int
    """The smallest stored frame size among the split's clips (NVDEC has a minimum)."""
    min_frames: int
    """The shortest clip of the split."""
    shard_clips: tuple[int, ...] | None
    """The clips of each of the split's shards, fewest first (None without a manifest)."""


def manifest_or_none(url: str) -> Manifest | None:
    """The location's ``manifest.parquet``, or None when it has none (hand-made shards)."""
    try:
        return read_manifest(url)
    except FileNotFoundError:
        return None


def list_shards(url: str, split: str, manifest: Manifest | None = None) -> list[str]:
    """The shard URLs of ``split``: from the manifest (which the packer writes last, so it lists
    finished shards only) or, without one, every ``{split}-*.tar`` in the folder."""
    dest = Destination(url)
    if manifest is not None:
        names = manifest.shards(split)
    else:
        names = sorted(path.rsplit("/", 1)[-1] for path in dest.fs.glob(dest.uri(f"{split}-*.tar")))
    if not names:
        raise FileNotFoundError(f"no {split} shards under {describe(url)}")
    return [dest.uri(name) for name in names]


def layout(url: str, split: str, shards: list[str], manifest: Manifest | None = None) -> Layout:
    """The split's label layout, from the manifest when there is one, else from its first sample."""
    if manifest is not None:
        rows = [row for row in manifest.rows if row.split == split]
        per_shard = collections.Counter(row.shard for row in rows)
        return Layout(manifest.label_kind, manifest.has_edges, manifest.num_classes,
                      min(row.height for row in rows), min(row.width for row in rows),
                      min(row.frames for row in rows), tuple(sorted(per_shard.values())))
    meta = first_sample(url, shards).meta
    return Layout(meta.label_kind, meta.has_edges, meta.num_classes, meta.height, meta.width, meta.frames, None)


def planned(cfg: DataConfig, split: str, frames: int, world_size: int = 1, full_batches: bool = False
            ) -> tuple[list[str], Layout]:
    """The shards of ``split`` and their layout, refused (``ShardsMismatchError``) where they cannot give
    clips of ``frames`` frames, the configured classes, or (``full_batches``: training drops a short
    last batch) a full batch to each of ``world_size`` ranks in every epoch. Reads the manifest
    (without one, the split's first sample, and no batch is checked): the launcher asks this before any
    worker starts."""
    where = describe(cfg.shards)
    if not 1 <= frames <= cfg.clip_frames:
        raise ShardsMismatchError(f"{frames} frames per clip asked, outside [1, data.clip_frames={cfg.clip_frames}]")
    manifest = manifest_or_none(cfg.shards)
    shards = list_shards(cfg.shards, split, manifest)
    shape = layout(cfg.shards, split, shards, manifest)
    if shape.label_kind == "classes" and shape.num_classes > cfg.num_classes:
        raise ShardsMismatchError(f"{where}: shards were packed with num_classes={shape.num_classes}, "
                                  f"more than data.num_classes={cfg.num_classes}: set data.num_classes="
                                  f"{shape.num_classes}")
    if frames > shape.min_frames:
        raise ShardsMismatchError(f"{where}: its {split} clips hold {shape.min_frames} frames, {frames} are asked "
                                  f"(train.schedule.max_frames, eval.frames or data.clip_frames): pack them again "
                                  f"with data.clip_frames={frames}, or ask for fewer")
    # A rank reads whole shards, every world_size-th of a shuffled list: the fewest clips it can get are
    # those of the smallest shards, as many as the rank with the fewest shards takes.
    batch, taken = cfg.loader.batch_size, len(shards) // world_size
    if full_batches and shape.shard_clips is not None and taken:
        fewest = sum(shape.shard_clips[:taken])
        if fewest < batch:
            raise ShardsMismatchError(
                f"{where}: a rank may get {fewest} train clip(s) (ranks read whole shards: {taken} of the "
                f"{len(shards)} for each of {world_size}), fewer than a batch of data.loader.batch_size={batch} "
                "(an epoch keeps full batches only): lower the batch size, or pack more clips "
                "(data.pack.clip_stride, data.pack.clips_per_shard)")
    return shards, shape


def shards_for_rank(shards: list[str], rank: int, world_size: int, seed: int, epoch: int,
                    shuffle: bool) -> list[str]:
    """This rank's shards for one epoch: one permutation shared by all ranks, then every
    ``world_size``-th shard, so ranks read disjoint shards and together read all of them."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    if world_size > len(shards):
        raise ValueError(f"{len(shards)} shards cannot be split over {world_size} ranks: "
                         "pack with fewer clips_per_shard")
    order = list(shards)
    if shuffle:
        order = [order[i] for i in np.random.default_rng([seed, epoch]).permutation(len(order))]
    return order[rank::world_size]


# ---------------------------------------------------------------------------------------------
# Reading one shard


class _CountingReader:
    """A file wrapper that counts the bytes handed to ``tarfile`` (to find a missing end) and keeps
    the last few reads: ``tarfile`` reads ahead (one 10 KiB record at a time), so the bytes after the
    point where it stopped are already gone from the file when we want to look at them."""

    _RECENT = 4  # reads kept; tarfile holds back less than one of its 10 KiB reads

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw, self.position = raw, 0
        self._recent: list[tuple[int, bytes]] = []  # (offset, data) of the latest reads

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self._recent = [*self._recent[1 - self._RECENT:], (self.position, data)]
        self.position += len(data)
        return data

    def bytes_from(self, offset: int) -> bytes | None:
        """What was read from ``offset`` on, or None when it is no longer kept."""
        if not self._recent or self._recent[0][0] > offset:
            return None
        joined = b"".join(data for _, data in self._recent)
        return joined[offset - self._recent[0][0]:]

    def drain(self) -> bool:
        """Read to the end of the file; True when any byte read was not zero."""
        nonzero = False
        while chunk := self.read(1 << 16):
            nonzero = nonzero or chunk.count(0) != len(chunk)
        return nonzero


def _has_data_after(counter: _CountingReader, end: int) -> bool:
    """True when a non-zero byte follows ``end``, where ``tarfile`` stopped (reads the file to its end).

    A tar ends with zero blocks (and zero padding); ``tarfile`` also stops, silently, at a header it
    cannot parse, and then the samples after it follow.
    """
    rest = counter.bytes_from(end)
    unknown = rest is None  # cannot happen with tarfile's read-ahead; treat it as damage, not as clean
    return counter.drain() or unknown or rest.count(0) != len(rest)


def expected_keys(fs, shard: str) -> list[str] | None:
    """Sample keys listed by the shard's ``.idx`` (``wds2idx`` format), or None without one."""
    index = shard[:-len(".tar")] + ".idx"
    try:
        with fs.open(index, "rb") as handle:
            lines = handle.read().decode().splitlines()
    except OSError:  # missing (or unreadable): the loss of a truncated tar is then counted, not named
        return None
    keys = []
    for line in lines[1:]:  # the first line is "v1.2 <count>"
        fields = line.split()  # "<suffix> <offset> <size> <member name>" per member
        match = _KEY_SUFFIX.match(fields[3]) if len(fields) >= 4 else None
        if match:
            keys.append(match.group(1))
    return keys


def read_shard(fs, shard: str) -> Iterator[Sample | Skip]:
    """The samples of one tar, in tar order, and a ``Skip`` for each one that is unusable."""
    expected = expected_keys(fs, shard)
    seen: list[str] = []
    try:
        handle = fs.open(shard, "rb")
    except OSError as err:
        yield from _lost(shard, expected, seen, f"cannot open the shard: {err}")
        return
    with handle:
        counter = _CountingReader(handle)
        key, members = None, {}
        try:
            with tarfile.open(fileobj=counter, mode="r|") as tar:
                for info in tar:
                    if not info.isfile():
                        continue
                    match = _KEY_SUFFIX.match(info.name)
                    if not match:
                        continue
                    member_key, suffix = match.groups()
                    if member_key != key:
                        if key is not None:
                            seen.append(key)
                            yield _sample(shard, key, members)
                        key, members = member_key, {}
                    members[suffix] = tar.extractfile(info).read()
                end = tar.offset
            # A complete tar ends with two zero blocks after the last member; tarfile stops at the
            # first one, or silently at a cut or a corrupt header, so read the rest, count and look.
            damaged = _has_data_after(counter, end)
            complete = counter.position >= end + 2 * _TAR_BLOCK
        except (tarfile.TarError, EOFError, OSError) as err:
            if key is not None:
                yield Skip(shard, key, f"truncated or corrupt tar inside this sample: {err}")
                seen.append(key)
            yield from _lost(shard, expected, seen, f"truncated or corrupt tar: {err}")
            return
        if key is not None:
            seen.append(key)
            yield _sample(shard, key, members)  # all of its bytes were read
        if not complete:
            yield from _lost(shard, expected, seen, "truncated tar: the archive ends without its end blocks")
        elif damaged:
            yield from _lost(shard, expected, seen,
                             f"corrupt tar {f'after key {key}' if key else 'before its first sample'}: "
                             f"an unreadable header at byte {end} of {shard}, and data after it")
        elif expected is not None:
            yield from _lost(shard, expected, seen, "listed in the .idx but not in the tar")


def _lost(shard: str, expected: list[str] | None, seen: list[str], reason: str) -> Iterator[Skip]:
    """Skips for the samples a broken shard did not deliver: named from its .idx when it has one."""
    if expected is None:
        yield Skip(shard, "<rest of shard>", reason + " (no .idx: the lost samples are not known)")
        return
    done = set(seen)
    for key in expected:
        if key not in done:
            yield Skip(shard, key, reason)


def _sample(shard: str, key: str, members: dict[str, bytes]) -> Sample | Skip:
    missing = [name for name in fmt.REQUIRED if name not in members]
    if missing:
        return Skip(shard, key, f"missing member{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
    try:
        meta = fmt.ClipMeta.from_json(members[fmt.META], f"{key}.json")
    except ValueError as err:
        return Skip(shard, key, str(err))
    streams = {name: data for name, data in members.items() if name.endswith(".webm")}
    if not all(streams[name] for name in (fmt.RGB, fmt.LABEL, fmt.FLOW)):
        return Skip(shard, key, "an empty video member")
    return Sample(shard, key, streams, meta)


def read_shards(url: str, shards: Iterable[str]) -> Iterator[Sample | Skip]:
    fs = Destination(url).fs
    for shard in shards:
        yield from read_shard(fs, shard)


def first_sample(url: str, shards: list[str]) -> Sample:
    """The first good sample of the first shards (what the loader builds its graph for)."""
    skips = []
    for item in read_shards(url, shards):
        if isinstance(item, Sample):
            return item
        skips.append(item)
        if len(skips) >= 16:
            break
    raise ValueError(f"no readable sample at the start of {shards[0]}: "
                     + "; ".join(f"{s.key}: {s.reason}" for s in skips[:3]))


# ---------------------------------------------------------------------------------------------
# Shuffling and prefetching

T = TypeVar("T")


def shuffled(items: Iterable[Sample | Skip], size: int, rng: np.random.Generator
             ) -> Iterator[Sample | Skip]:
    """A shuffle buffer of ``size`` samples (1 keeps the order). Skips pass straight through."""
    buffer: list[Sample] = []
    for item in items:
        if isinstance(item, Skip) or size <= 1:
            yield item
            continue
        if len(buffer) < size:
            buffer.append(item)
            continue
        index = int(rng.integers(len(buffer)))
        buffer[index], item = item, buffer[index]
        yield item
    for index in rng.permutation(len(buffer)):
        yield buffer[index]


class Prefetch(Generic[T]):
    """Runs an iterator in a thread, ``depth`` items ahead: shard I/O (S3 GETs) overlaps decoding.

    Order is preserved, so results stay deterministic. An exception in the thread is raised in
    the consumer. ``close()`` stops the thread (a loader abandoned mid-epoch).
    """
    _END = object()

    def __init__(self, items: Iterator[T], depth: int) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(items,), daemon=True,
                                        name="dataio-reader")
        self._thread.start()

    def _run(self, items: Iterator[T]) -> None:
        try:
            for item in items:
                if not self._put(item):
                    return
            self._put(self._END)
        except BaseException as err:  # handed to the consumer, raised there
            self._put(err)
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()  # a generator left mid-shard closes its file now, not at GC

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        item = self._queue.get()
        if item is self._END or isinstance(item, BaseException):
            self._queue.put(item)  # the thread is done: later calls see the same end
        if item is self._END:
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
