"""`vid2vid data inspect`: one batch through the DALI loader, summarised for a person."""
from __future__ import annotations

from dataio.config import DataConfig
from dataio.loader import BadDataError, build_loader
from dataio.manifest import read_manifest


def inspect_batch(cfg: DataConfig, split: str = "train", height: int | None = None,
                  width: int | None = None, frames: int | None = None) -> str:
    manifest = read_manifest(cfg.shards)
    rows = [r for r in manifest.rows if r.split == split]
    if not rows:
        raise FileNotFoundError(f"{cfg.shards}: no '{split}' samples in manifest.parquet")
    height = height or rows[0].height
    width = width or rows[0].width
    frames = frames or cfg.clip_frames
    loader = build_loader(cfg, height, width, frames, split=split)
    try:
        batch = next(iter(loader), None)
    finally:
        loader.close()
    if batch is None:  # too few clips for a batch, or every one skipped as bad (the warnings above name them)
        stats = loader.stats
        raise BadDataError(f"{cfg.shards} [{split}]: no batch: {stats.read} clip(s) read, {stats.skipped} bad, "
                           f"against batches of data.loader.batch_size={cfg.loader.batch_size}")
    lines = [f"{cfg.shards} [{split}]: {len(rows)} clips in {len({r.shard for r in rows})} shards, "
             f"{manifest.num_classes} classes",
             f"batch of {len(batch.keys)}: {', '.join(batch.keys)}"]
    for name in ("rgb", "labels", "flow", "flow_conf"):
        t = getattr(batch, name)
        lines.append(f"  {name:<9} {str(tuple(t.shape)):<24} {str(t.dtype):<14} "
                     f"min {t.min().item():8.3f}  max {t.max().item():8.3f}  mean {t.float().mean().item():8.3f}")
    present = batch.labels[:, :, :cfg.num_classes].sum(dim=(0, 1, 3, 4))
    lines.append(f"  classes present: {[i for i, n in enumerate(present.tolist()) if n > 0]}")
    lines.append(f"  loader stats: read {loader.stats.read}, skipped {loader.stats.skipped}")
    return "\n".join(lines)
