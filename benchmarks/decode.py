"""Frames per second of the training loader against the raw decode rate of the same streams.

For each size (default 256x128 and 512x256, width x height) it synthesizes and packs a small set
(``dataio.synth`` + ``dataio.pack``, kept under ``--data`` and reused by later runs), then times,
in interleaved repeats (the best of each counts: on a shared machine other work only slows a run):

- **loader**: ``dataio.loader`` over every clip, ``--epochs`` times: tar reading, decode of every
  stream a sample carries (rgb, label, flow and, as synth sequences have instances, edge), one
  random crop + flip + resize back to the packed size, one-hot labels, flow scaling, written into
  torch tensors. DALI and the augmentation get one thread per core each.
- **dali**: the loader's DALI graph alone on the same samples (decode, no augmentation).
- **ffmpeg**: the CLI (``imageio_ffmpeg``'s binary) decoding the *same* member files, all four
  kinds, like with like, ``-f null -`` (decode only: no colour conversion, no scaling; the
  practical limit), in two layouts: one process per stream kind over a concat list with
  ``-threads <cores>``, run one after another; and ``<cores>`` processes side by side with
  ``-threads 1``, each over a share of the files. The faster layout is the reference.
- **pyav**: a plain PyAV loop, one process: open each member, decode every frame to an RGB array.

A frame is one time step of one clip with all of its streams. Prints frames/s and CPU time per
frame for each, and the ratios loader/ffmpeg (goal >= 0.8) and loader/pyav (goal > 1), by wall
clock and by CPU time (the latter is what a loaded machine distorts least).
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import av  # noqa: E402
import imageio_ffmpeg  # noqa: E402

from dataio import format as fmt  # noqa: E402
from dataio import reader  # noqa: E402
from dataio.config import DataConfig, LoaderConfig, PackConfig, SynthConfig  # noqa: E402

KINDS = (fmt.RGB, fmt.LABEL, fmt.FLOW, fmt.EDGE)


class Clock:
    """Wall time and CPU time (this process and its finished children) of a block."""

    def __enter__(self) -> "Clock":
        self.wall, self.cpu = time.perf_counter(), self._cpu()
        return self

    def __exit__(self, *_: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, self._cpu() - self.cpu

    @staticmethod
    def _cpu() -> float:
        own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="256x128,512x256", help="WIDTHxHEIGHT,... (default %(default)s)")
    parser.add_argument("--data", default=str(REPO / "data" / "bench"), help="where the packed sets live")
    parser.add_argument("--sequences", type=int, default=4)
    parser.add_argument("--frames", type=int, default=32, help="frames per synthetic sequence")
    parser.add_argument("--clip-frames", type=int, default=16)
    parser.add_argument("--clip-stride", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=2, help="passes over the set per timing")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved repeats; the best counts")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="cores to use")
    return parser.parse_args(argv)


def prepare(args: argparse.Namespace, width: int, height: int) -> DataConfig:
    """Synthesize and pack the set for one size (both steps resume: a second run is quick)."""
    from dataio import synth
    from dataio.pack import pack

    root = Path(args.data) / f"{width}x{height}"
    cfg = DataConfig(
        shards=str(root / "shards"), clip_frames=args.clip_frames,
        synth=SynthConfig(out=str(root / "source"), sequences=args.sequences, frames=args.frames,
                          height=height, width=width, seed=0),
        pack=PackConfig(source=str(root / "source"), clips_per_shard=8, clip_stride=args.clip_stride,
                        val_fraction=0.0, workers=args.threads),
        loader=LoaderConfig(batch_size=args.batch_size, threads=args.threads, shuffle_buffer=16))
    if not (root / "shards" / "manifest.parquet").exists():
        began = time.perf_counter()
        synth.generate(cfg.synth)
        report = pack(cfg, progress=False)
        shutil.rmtree(root / "source")  # the frames and flow .npy files are only needed to pack
        print(f"  packed {report.clips} clips in {time.perf_counter() - began:.0f} s", flush=True)
    return cfg


def members(cfg: DataConfig) -> list[reader.Sample]:
    """Every train sample, read once (the loader reads them from the tars itself)."""
    samples = reader.read_shards(cfg.shards, reader.list_shards(cfg.shards, "train"))
    return [item for item in samples if isinstance(item, reader.Sample)]


def time_loader(cfg: DataConfig, width: int, height: int, epochs: int) -> tuple[Clock, int]:
    """The loader over every clip, ``epochs`` times (after one warm-up pass)."""
    from dataio.loader import build_loader

    loader = build_loader(cfg, height, width, cfg.clip_frames)  # random crop, flip and resize
    for _ in loader:  # warm-up: first allocations, page cache
        pass
    frames = 0
    with Clock() as clock:
        for _ in range(epochs):
            for batch in loader:
                frames += batch.rgb.shape[0] * batch.rgb.shape[1]
    if loader.stats.skipped:
        raise RuntimeError(f"the loader skipped samples: {loader.stats.skips[:3]}")
    loader.close()
    return clock, frames


def time_dali_decode(cfg: DataConfig, clips: list[reader.Sample], epochs: int) -> tuple[Clock, int]:
    """The loader's DALI graph alone (decode, no augmentation), fed the same clips in batches."""
    from dataio.batch import Draw
    from dataio.pipeline import Decoded, Decoder, GraphSpec

    meta = clips[0].meta
    spec = GraphSpec(height=meta.height, width=meta.width, frames=cfg.clip_frames,
                     batch_size=cfg.loader.batch_size, threads=cfg.loader.threads,
                     num_classes=cfg.num_classes, label_kind=meta.label_kind, has_edges=meta.has_edges)
    decoder, size, frames = Decoder(spec), cfg.loader.batch_size, 0
    draw = Draw(start=0, box=(0, 0, meta.height, meta.width), flip=False)
    with Clock() as clock:
        for _ in range(epochs):
            for i in range(0, len(clips), size):
                run = clips[i:i + size]
                decoder.submit([c.streams for c in run], [draw] * len(run), [c.meta for c in run])
                frames += cfg.clip_frames * sum(isinstance(r, Decoded) for r in decoder.collect())
    return clock, frames


def time_ffmpeg(clips: list[dict[str, bytes]], epochs: int, threads: int, folder: Path) -> tuple[Clock, Clock]:
    """One process per stream kind with ``-threads N``, run in turn; N processes with ``-threads 1``."""
    exe = imageio_ffmpeg.get_ffmpeg_exe()
    files: dict[str, list[Path]] = {kind: [] for kind in KINDS}
    for index, streams in enumerate(clips):
        for kind in KINDS:
            if kind in streams:
                path = folder / f"{index:05d}.{kind}"
                path.write_bytes(streams[kind])
                files[kind].append(path)

    def command(paths: list[Path], name: str, decoder_threads: int) -> list[str]:
        listing = folder / f"{name}.txt"
        listing.write_text("".join(f"file '{p}'\n" for p in paths) * epochs)
        return [exe, "-nostdin", "-hide_banner", "-loglevel", "error", "-threads", str(decoder_threads),
                "-f", "concat", "-safe", "0", "-i", str(listing), "-an", "-f", "null", "-"]

    with Clock() as per_kind:
        for kind, paths in files.items():
            if paths:
                subprocess.run(command(paths, kind, threads), check=True, stderr=subprocess.DEVNULL)
    everything = [p for paths in files.values() for p in paths]
    commands = [command(everything[i::threads], f"share{i}", 1) for i in range(threads)]
    with Clock() as side_by_side:
        # stderr dropped: the concat demuxer's "non monotonically increasing dts" notes at each file
        # boundary are harmless for -f null.
        running = [subprocess.Popen(c, stderr=subprocess.DEVNULL) for c in commands]
        if any(p.wait() for p in running):
            raise RuntimeError("ffmpeg failed")
    return per_kind, side_by_side


def time_pyav(clips: list[dict[str, bytes]]) -> Clock:
    with Clock() as clock:
        for streams in clips:
            for kind in KINDS:
                if kind not in streams:
                    continue
                with av.open(io.BytesIO(streams[kind])) as container:
                    stream = container.streams.video[0]
                    stream.thread_type = "AUTO"
                    for frame in container.decode(stream):
                        frame.to_ndarray(format="rgb24")
    return clock


@dataclasses.dataclass
class Rate:
    """One measured way of decoding: frames, wall and CPU seconds of its best (fastest) repeat."""
    name: str
    note: str
    frames: int = 0
    wall: float = float("inf")
    cpu: float = 0.0

    def add(self, clock: Clock, frames: int) -> None:
        if frames / clock.wall > self.fps:
            self.frames, self.wall, self.cpu = frames, clock.wall, clock.cpu

    @property
    def fps(self) -> float:
        return self.frames / self.wall if self.frames else 0.0

    @property
    def cpu_ms(self) -> float:
        return 1e3 * self.cpu / self.frames


def measure(args: argparse.Namespace, cfg: DataConfig, width: int, height: int) -> None:
    samples = members(cfg)
    clips = [sample.streams for sample in samples]
    kinds = sorted({kind for c in clips for kind in c if kind in KINDS})
    print(f"  {len(clips)} clips x {cfg.clip_frames} frames, streams {', '.join(kinds)}", flush=True)
    passes = args.epochs * len(clips) * cfg.clip_frames
    loader = Rate("loader", "decode + crop/flip/resize + one-hot + flow scaling, into torch tensors")
    dali = Rate("dali", "the loader's DALI graph alone: decode, no augmentation")
    per_kind = Rate("ffmpeg", f"one process per stream kind, -threads {args.threads}, one after another")
    side = Rate("ffmpeg", f"{args.threads} processes side by side, -threads 1")
    pyav = Rate("pyav", "one process, thread_type AUTO, frames to rgb24 arrays")
    # Interleaved repeats, best of each: other work on a shared machine slows runs, never speeds them.
    for _ in range(args.repeats):
        loader.add(*time_loader(cfg, width, height, args.epochs))
        dali.add(*time_dali_decode(cfg, samples, args.epochs))
        with tempfile.TemporaryDirectory() as tmp:
            kind_clock, side_clock = time_ffmpeg(clips, args.epochs, args.threads, Path(tmp))
        per_kind.add(kind_clock, passes)
        side.add(side_clock, passes)
        pyav.add(time_pyav(clips), len(clips) * cfg.clip_frames)
    for rate in (loader, dali, per_kind, side, pyav):
        print(f"  {rate.name:7s} {rate.fps:7.0f} frames/s  cpu {rate.cpu_ms:6.2f} ms/frame  ({rate.note})")
    ffmpeg = max(per_kind, side, key=lambda r: r.fps)
    print(f"  loader/ffmpeg = {loader.fps / ffmpeg.fps:.2f}   loader/pyav = {loader.fps / pyav.fps:.2f}   "
          f"(by CPU time per frame: {ffmpeg.cpu_ms / loader.cpu_ms:.2f} and {pyav.cpu_ms / loader.cpu_ms:.2f}; "
          f"dali decode alone/ffmpeg = {dali.fps / ffmpeg.fps:.2f})", flush=True)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    print(f"cores: {args.threads}, loader batch {args.batch_size}, {args.epochs} passes per timing, best of "
          f"{args.repeats}; a frame = one time step of one clip, every stream decoded; cpu = CPU time "
          f"(all threads and child processes) per frame; load average {os.getloadavg()[0]:.1f}")
    for size in args.sizes.split(","):
        width, height = (int(v) for v in size.lower().split("x"))
        print(f"{width}x{height}:", flush=True)
        measure(args, prepare(args, width, height), width, height)


if __name__ == "__main__":
    main()
