"""`vid2vid data pack`: input sequences -> WebDataset shards, a DALI index per shard, a manifest.

The run, in order:

1. **Scan** every sequence folder fully (in the process pool): counts, sizes, readable files, label
   values. Nothing is written before this passes, so a bad input never costs finished work. With
   ``pack.skip_bad`` a bad sequence is left out and listed in the report instead.
2. **Plan** clips (``data.clip_frames`` long, every ``pack.clip_stride`` frames; a shorter tail is
   dropped), splits (a stable hash of the sequence name against ``pack.val_fraction``) and shards
   (``{split}-{index:06d}.tar``, ``pack.clips_per_shard`` clips each, in sequence order). The plan is a
   pure function of the inputs and the settings.
3. **Resume**: a shard whose ``.idx`` exists is finished (the index is published after its tar). Its
   keys must be the planned ones, and the settings must match those recorded in ``pack.json``;
   otherwise packing stops rather than mix two datasets in one place.
4. **Encode** the remaining clips in worker processes (runs of overlapping clips of one sequence, so a
   frame's flow is computed once per run), and write each shard as soon as its clips are in: the tar
   under a temporary name, then renamed (or uploaded), then its index.
5. Write ``manifest.parquet`` and ``pack_report.json``.
"""
from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import hashlib
import json
import multiprocessing
import os
import shutil
import sys
import time
from collections import deque
from pathlib import Path

from tqdm import tqdm

from dataio import format as fmt
from dataio.config import DataConfig
from dataio.errors import UserInputError
from dataio.flow import backward_flow
from dataio.manifest import Manifest, ManifestRow, write_manifest
from dataio.sources import (BadInputError, ReadOptions, Sequence, SequenceSource, read_clip, scan_sequence,
                            sequence_sources)
from dataio.storage import Destination, describe
from dataio.video import encode_lossless, encode_rgb

SETTINGS = "pack.json"
REPORT = "pack_report.json"
RUN_PIXELS = 16 * 2 ** 20
"""Most frame pixels one worker task reads (frames x height x width; a single clip is always allowed).
A task encodes a run of overlapping clips of one sequence, computing each frame pair's flow once; about
20 bytes per pixel are held (RGB, labels, float flow and confidence), so 16 Mi pixels is ~320 MB per
worker. At 256x128 that is a whole 24-frame sequence; at 2048x1024 one 8-frame clip."""

__all__ = ["BadInputError", "PackReport", "SkippedSequence", "clip_starts", "pack", "split_of"]


class SettingsMismatchError(UserInputError, ValueError):
    """The destination already holds shards packed from other settings or other inputs."""


@dataclasses.dataclass(frozen=True)
class SkippedSequence:
    name: str
    reason: str


@dataclasses.dataclass
class PackReport:
    """What a ``pack`` run did."""
    destination: str
    sequences: int
    """Sequences packed (scanned and not skipped)."""
    skipped: list[SkippedSequence]
    clips: int
    """Clips (samples) in the whole dataset, resumed shards included."""
    shards_written: int
    shards_resumed: int
    bytes: int
    """Bytes this run wrote (tars and indexes)."""
    seconds: float
    warnings: list[str] = dataclasses.field(default_factory=list)
    """E.g. a split that got no clips."""

    def summary(self) -> str:
        lines = [f"packed {self.clips} clips of {self.sequences} sequences into {describe(self.destination)}: "
                 f"{self.shards_written} shards written ({self.bytes / 1e6:.1f} MB), "
                 f"{self.shards_resumed} resumed, in {self.seconds:.1f} s"]
        lines += [f"skipped {s.name}: {s.reason}" for s in self.skipped]
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def split_of(sequence: str, val_fraction: float) -> str:
    """``val`` or ``train``: a stable hash of the sequence name (the same on every machine and run)."""
    digest = int.from_bytes(hashlib.sha256(sequence.encode()).digest()[:8], "big")
    return "val" if digest / 2 ** 64 < val_fraction else "train"


@dataclasses.dataclass(frozen=True)
class _Clip:
    key: str
    sequence: int
    """Index into the scanned sequences."""
    start: int


@dataclasses.dataclass(frozen=True)
class _Shard:
    name: str
    split: str
    clips: tuple[_Clip, ...]


@dataclasses.dataclass(frozen=True)
class _Encoding:
    """Everything a worker needs besides the sequence; small and picklable."""
    opts: ReadOptions
    crf: int
    flow: str


def pack(cfg: DataConfig, progress: bool = True) -> PackReport:
    """Pack ``cfg.pack.source`` into shards at ``cfg.shards``; resumes a run that stopped part-way.

    Raises ``BadInputError`` (message starting with the bad file) for bad input unless
    ``cfg.pack.skip_bad``, and ``SettingsMismatchError`` when the destination holds another pack.
    With ``pack.workers`` other than 1 the workers are spawned processes, so a script that calls this
    needs the usual ``if __name__ == "__main__":`` guard.
    """
    began = time.monotonic()
    opts = ReadOptions.from_config(cfg)
    encoding = _Encoding(opts, cfg.pack.rgb_crf, cfg.pack.flow)
    dest = Destination(cfg.shards)
    folders = sequence_sources(Path(cfg.pack.source), cfg.pack.layout)
    settings = _settings(cfg)
    _check_settings(dest, settings)
    workers = cfg.pack.workers or _cores()
    with _executor(workers) as pool:
        sequences, skipped = _scan(folders, opts, pool, cfg.pack.skip_bad, progress)
        shards = _plan(sequences, cfg)
        warnings = _empty_splits(shards, len(sequences), cfg)
        dest.prepare()
        dest.remove_partial()
        dest.write_bytes(SETTINGS, json.dumps(settings, indent=1, sort_keys=True).encode())
        finished = _finished_shards(dest, shards)
        todo = [shard for shard in shards if shard.name not in finished]
        written = _encode_shards(todo, sequences, encoding, dest, pool, 2 * workers, progress)
    sizes = {**finished, **written.indexes}
    rows = [_row(shard, clip, sequences[clip.sequence], sizes[shard.name][i], cfg, opts)
            for shard in shards for i, clip in enumerate(shard.clips)]
    write_manifest(Manifest(rows, cfg.num_classes, cfg.clip_frames, cfg.pack.label_kind), dest)
    report = PackReport(destination=dest.url, sequences=len(sequences), skipped=skipped, clips=len(rows),
                        shards_written=len(todo), shards_resumed=len(finished), bytes=written.bytes,
                        seconds=time.monotonic() - began, warnings=warnings)
    dest.write_bytes(REPORT, json.dumps(dataclasses.asdict(report), indent=1).encode())
    return report


# ---------------------------------------------------------------------------------------------
# scan and plan


def _scan(folders: list[SequenceSource], opts: ReadOptions, pool: cf.Executor, skip_bad: bool, progress: bool
          ) -> tuple[list[Sequence], list[SkippedSequence]]:
    futures = [pool.submit(_scan_one, source, opts) for source in folders]
    results: list[Sequence | BadInputError] = []
    with tqdm(total=len(futures), desc="scan", unit="seq", file=sys.stderr, disable=not progress) as bar:
        for future in futures:
            results.append(future.result())
            bar.update()
    sequences: list[Sequence] = []
    bad: list[tuple[SequenceSource, BadInputError]] = []
    taken: dict[str, Path] = {}
    for folder, result in zip(folders, results):
        if isinstance(result, Sequence):
            result = _check_key(result, taken)
        if isinstance(result, BadInputError):
            bad.append((folder, result))
        else:
            taken[result.key_name] = result.folder
            sequences.append(result)
    errors = [err for _, err in bad]
    if errors and not skip_bad:
        more = "".join(f"\n  and {err}" for err in errors[1:])
        raise BadInputError(errors[0].path, errors[0].problem + more)
    if not sequences:
        raise BadInputError(folders[0].folder.parent, "no sequence could be packed:" +
                            "".join(f"\n  {err}" for err in errors))
    return sequences, [SkippedSequence(folder.name, str(err)) for folder, err in bad]


def _scan_one(source: SequenceSource, opts: ReadOptions) -> Sequence | BadInputError:
    try:
        return scan_sequence(source, opts)
    except BadInputError as err:
        return err


def _check_key(sequence: Sequence, taken: dict[str, Path]) -> Sequence | BadInputError:
    name = sequence.key_name
    if name in taken:
        return BadInputError(sequence.folder, f"its sample key name '{name}' is also that of {taken[name]}; "
                                              "rename one of the folders")
    longest = len(fmt.sample_key(name, 0)) + 1 + max(len(s) for s in fmt.MEMBER_ORDER)
    if longest > fmt.MAX_MEMBER_NAME:
        return BadInputError(sequence.folder, f"folder name too long for tar member names "
                                              f"(at most {len(name) - longest + fmt.MAX_MEMBER_NAME} characters)")
    return sequence


def _plan(sequences: list[Sequence], cfg: DataConfig) -> list[_Shard]:
    clips: dict[str, list[_Clip]] = {"train": [], "val": []}
    for index, sequence in enumerate(sequences):
        for split, starts in clip_starts(sequence.name, sequence.frames, cfg).items():
            clips[split] += [_Clip(fmt.sample_key(sequence.key_name, start), index, start) for start in starts]
    per_shard = cfg.pack.clips_per_shard
    return [_Shard(fmt.shard_name(split, i // per_shard), split, tuple(items[i:i + per_shard]))
            for split, items in clips.items() for i in range(0, len(items), per_shard)]


def _empty_splits(shards: list[_Shard], sequences: int, cfg: DataConfig) -> list[str]:
    """A warning for each split that got no clips, saying how to fill it."""
    found = {shard.split for shard in shards}
    how = (f"data.pack.split={cfg.pack.split}, data.pack.val_fraction={cfg.pack.val_fraction}, "
           f"{sequences} sequence{'s' if sequences != 1 else ''}")
    warnings = []
    if "val" not in found and cfg.pack.val_fraction > 0:
        hint = ("data.pack.split=time holds out the end of every sequence instead" if cfg.pack.split == "sequence"
                else "the sequences are too short for a clip on each side")
        warnings.append(f"no val clips ({how}): {hint}")
    if "train" not in found:
        hint = ("data.pack.split=time keeps the start of every sequence for training"
                if cfg.pack.split == "sequence" else "lower data.pack.val_fraction")
        warnings.append(f"no train clips ({how}): training needs some; {hint}")
    return warnings


def clip_starts(name: str, frames: int, cfg: DataConfig) -> dict[str, range]:
    """First frames of the train and val clips of a sequence (``data.pack.split``).

    By time, the val part is the last ``val_fraction`` of the frames, at least one clip long, and train
    clips end where it begins, so no frame is in both splits; a sequence too short for a clip on each
    side stays whole in train.
    """
    length, stride, pack = cfg.clip_frames, cfg.pack.clip_stride, cfg.pack
    if pack.split == "sequence" or pack.val_fraction == 0:
        split = split_of(name, pack.val_fraction)
        return {split: range(0, frames - length + 1, stride), ("val" if split == "train" else "train"): range(0)}
    held = frames - max(length, round(frames * pack.val_fraction))
    if held < length:
        return {"train": range(0, frames - length + 1, stride), "val": range(0)}
    return {"train": range(0, held - length + 1, stride), "val": range(held, frames - length + 1, stride)}


def _settings(cfg: DataConfig) -> dict:
    """What the shard contents depend on; a rerun must match it to resume."""
    pack = cfg.pack
    return {"num_classes": cfg.num_classes, "clip_frames": cfg.clip_frames, "clip_stride": pack.clip_stride,
            "clips_per_shard": pack.clips_per_shard, "rgb_crf": pack.rgb_crf, "flow": pack.flow,
            "label_map": {str(k): v for k, v in sorted(pack.label_map.items())}, "label_kind": pack.label_kind,
            "val_fraction": pack.val_fraction, "split": pack.split, "resize": list(pack.resize)}


_ADDED_SETTINGS = {"split": "sequence"}


def _check_settings(dest: Destination, settings: dict) -> None:
    try:
        recorded = json.loads(dest.read_bytes(SETTINGS))
    except FileNotFoundError:
        return
    recorded = {**_ADDED_SETTINGS, **recorded}  # packs made before a setting existed used its default
    changed = [f"{key}: {recorded.get(key)!r} there, {value!r} now" for key, value in settings.items()
               if recorded.get(key) != value]
    if changed:
        raise SettingsMismatchError(f"{dest.uri(SETTINGS)}: the shards there were packed with other settings "
                                    f"({'; '.join(changed)}); pack into another location or delete it")


def _finished_shards(dest: Destination, shards: list[_Shard]) -> dict[str, list[int]]:
    """Shards already at the destination -> their samples' byte sizes (after checking their keys)."""
    present = dest.names()
    finished = {}
    for shard in shards:
        if f"{shard.name}.idx" not in present or f"{shard.name}.tar" not in present:
            continue
        index_name = dest.uri(f"{shard.name}.idx")
        samples = fmt.parse_index(dest.read_bytes(f"{shard.name}.idx").decode(), index_name)
        planned = [clip.key for clip in shard.clips]
        if [s.key for s in samples] != planned:
            raise SettingsMismatchError(
                f"{index_name}: holds samples {[s.key for s in samples][:3]}..., the inputs now give "
                f"{planned[:3]}...: the source changed since it was packed; pack into another location")
        finished[shard.name] = [s.bytes for s in samples]
    return finished


def _row(shard: _Shard, clip: _Clip, sequence: Sequence, size: int, cfg: DataConfig, opts: ReadOptions
         ) -> ManifestRow:
    height, width = sequence.packed_size(opts)
    return ManifestRow(shard=f"{shard.name}.tar", key=clip.key, sequence=sequence.name, start_frame=clip.start,
                       frames=cfg.clip_frames, height=height, width=width, classes=cfg.num_classes, bytes=size,
                       split=shard.split, has_edges=sequence.has_instances)


# ---------------------------------------------------------------------------------------------
# encode and write


@dataclasses.dataclass
class _Written:
    indexes: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    bytes: int = 0


def _runs(shard: _Shard, sequences: list[Sequence], opts: ReadOptions) -> list[list[_Clip]]:
    """Split a shard's clips into worker tasks: runs of overlapping clips of one sequence.

    A run is read once and each frame pair's flow computed once. Clips that do not overlap share no
    frames, so a run never spans a gap; nor does it grow past ``RUN_PIXELS``.
    """
    runs: list[list[_Clip]] = []
    for clip in shard.clips:
        run = runs[-1] if runs else None
        if run is not None and run[-1].sequence == clip.sequence and clip.start < run[-1].start + opts.clip_frames:
            height, width = sequences[clip.sequence].packed_size(opts)
            if (clip.start + opts.clip_frames - run[0].start) * height * width <= RUN_PIXELS:
                run.append(clip)
                continue
        runs.append([clip])
    return runs


def _encode_shards(shards: list[_Shard], sequences: list[Sequence], encoding: _Encoding, dest: Destination,
                   pool: cf.Executor, in_flight_limit: int, progress: bool) -> _Written:
    runs = {shard.name: _runs(shard, sequences, encoding.opts) for shard in shards}
    tasks = deque((name, run) for name, shard_runs in runs.items() for run in shard_runs)
    pending = {name: len(shard_runs) for name, shard_runs in runs.items()}
    by_name = {shard.name: shard for shard in shards}
    encoded: dict[str, dict[str, dict[str, bytes]]] = {name: {} for name in pending}
    written = _Written()
    scratch = dest.scratch() if shards else None
    in_flight: dict[cf.Future, tuple[str, list[_Clip]]] = {}
    try:
        with tqdm(total=sum(len(s.clips) for s in shards), desc="pack", unit="clip", file=sys.stderr,
                  disable=not progress) as bar:
            while tasks or in_flight:
                while tasks and len(in_flight) < in_flight_limit:
                    name, run = tasks.popleft()
                    sequence = sequences[run[0].sequence]
                    future = pool.submit(_encode_run, sequence, [c.start for c in run],
                                         by_name[name].split, encoding)
                    in_flight[future] = (name, run)
                done, _ = cf.wait(in_flight, return_when=cf.FIRST_COMPLETED)
                for future in done:
                    name, run = in_flight.pop(future)
                    encoded[name].update(future.result())
                    bar.update(len(run))
                    pending[name] -= 1
                    if pending[name] == 0:
                        done_clips = encoded.pop(name)
                        samples = [(c.key, done_clips[c.key]) for c in by_name[name].clips]
                        written.bytes += _write_shard(name, samples, dest, scratch)  # type: ignore[arg-type]
                        written.indexes[name] = [sum(map(len, m.values())) for _, m in samples]
    finally:
        for future in in_flight:
            future.cancel()
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    return written


def _write_shard(name: str, samples: list[tuple[str, dict[str, bytes]]], dest: Destination,
                 scratch: Path) -> int:
    """Tar first, index last: a shard counts as finished only once its index exists (locally, the
    tar is fsynced and its rename flushed before the index is written: see ``Destination.publish``)."""
    tar = scratch / f"{name}.tar"
    index = fmt.write_shard(samples, tar).encode()
    size = tar.stat().st_size
    dest.publish(tar, f"{name}.tar")
    dest.write_bytes(f"{name}.idx", index)
    return size + len(index)


def _encode_run(sequence: Sequence, starts: list[int], split: str, encoding: _Encoding
                ) -> dict[str, dict[str, bytes]]:
    """Encode overlapping clips of one sequence; returns key -> {member suffix: bytes}."""
    opts, length = encoding.opts, encoding.opts.clip_frames
    first = starts[0]
    arrays = read_clip(sequence, first, starts[-1] + length, opts)
    flow, confidence = backward_flow(arrays.frames, encoding.flow)  # type: ignore[arg-type]
    edges = None if arrays.instances is None else fmt.instance_edges(arrays.instances)
    height, width = arrays.frames.shape[1:3]
    out = {}
    for start in starts:
        window = slice(start - first, start - first + length)
        clip_flow, clip_confidence = flow[window].copy(), confidence[window].copy()
        clip_flow[0], clip_confidence[0] = 0.0, 0.0  # frame 0 of a clip has no previous frame in it
        key = fmt.sample_key(sequence.key_name, start)
        meta = fmt.ClipMeta(key=key, sequence=sequence.name, start_frame=start, frames=length, height=height,
                            width=width, num_classes=opts.num_classes, label_kind=opts.label_kind,
                            has_edges=edges is not None, fps=sequence.fps, split=split)  # type: ignore[arg-type]
        members = {fmt.META: meta.to_json(),
                   fmt.RGB: encode_rgb(arrays.frames[window], crf=encoding.crf, fps=sequence.fps),
                   fmt.LABEL: encode_lossless(arrays.labels[window], fps=sequence.fps),
                   fmt.FLOW: encode_lossless(fmt.quantize_flow(clip_flow, clip_confidence), fps=sequence.fps)}
        if edges is not None:
            members[fmt.EDGE] = encode_lossless(edges[window], fps=sequence.fps)
        out[key] = members
    return out


# ---------------------------------------------------------------------------------------------
# processes


def _executor(workers: int) -> cf.Executor:
    """A process pool of ``workers``; with one worker, everything runs in this process instead."""
    if workers <= 1:
        return _InlineExecutor()
    # spawn, not fork: the parent may run s3fs's event-loop thread (and others); a forked child gets a
    # copy of the process without those threads but with any lock they held at that instant.
    return cf.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                  initializer=_init_worker)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))  # the cores this process may use (containers, taskset)
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _init_worker() -> None:
    import cv2
    cv2.setNumThreads(1)  # one process per core already


class _InlineExecutor(cf.Executor):
    """Runs each task when submitted (one worker: no processes to start, plain tracebacks)."""

    def submit(self, fn, /, *args, **kwargs) -> cf.Future:
        future: cf.Future = cf.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as err:  # handed to the caller through the future, as a pool would
            future.set_exception(err)
        return future
