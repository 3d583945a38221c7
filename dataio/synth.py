"""`vid2vid data synth`: a procedural paired label/video dataset that needs no downloads.

Each sequence is a street seen from the side (``synth_scene``): sky, a far skyline, buildings with
window grids, trees, poles, a sidewalk and a two-lane road, with cars and people that move and pass
in front of each other, under a moving camera and per-sequence lighting. Alongside the RGB frames it
writes class labels, instance ids and the exact backward optical flow (the ``dataio.format``
convention: ``frame[t](p) ~= frame[t-1](p + flow[t](p))``, ``flow[0] = 0``), in the layout ``pack``
reads::

    <out>/classes.json                      class names, indexed by class id
    <out>/seq_0000/frames/000000.png        RGB uint8
    <out>/seq_0000/labels/000000.png        uint8 class ids
    <out>/seq_0000/instances/000000.png     uint16 instance ids (below)
    <out>/seq_0000/flow/000000.npy          float32 [H, W, 2], x then y, pixels
    <out>/seq_0000/meta.json                seed, camera, lighting and motion

Instance ids: sky, road and sidewalk carry their class id (0, 1, 2); every sprite (each building, the
skyline, each tree, pole, vehicle and person) gets ``class id * 1000 + index``, unique in its sequence,
so instance edges mark every depth discontinuity.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np

from dataio.config import SynthConfig
from dataio.synth_scene import CLASS_NAMES, ROAD, SIDEWALK, SKY, Scene, sample_scene

__all__ = ["CLASS_NAMES", "disocclusions", "generate", "render_scene", "render_sequence", "sequence_seed",
           "shade_points"]

GENERATOR = "vid2vid.synth"  # marks meta.json files this module wrote (and may overwrite)
_SKY, _GROUND = 0, 1  # surface indices before the sprites in the visibility map


def render_sequence(seed: int, frames: int, height: int, width: int) -> dict[str, np.ndarray]:
    """Render one sequence in memory: ``rgb`` [T,H,W,3] uint8, ``labels`` [T,H,W] uint8,
    ``instances`` [T,H,W] uint16, ``flow`` [T,H,W,2] float32 (exact backward flow, ``flow[0] = 0``).
    Bit-identical for the same arguments."""
    return render_scene(sample_scene(seed, frames, height, width))


def render_scene(scene: Scene) -> dict[str, np.ndarray]:
    """Rasterize every frame of ``scene`` (see ``render_sequence`` for the arrays)."""
    T, H, W = scene.frames, scene.height, scene.width
    out = {"rgb": np.empty((T, H, W, 3), np.uint8), "labels": np.empty((T, H, W), np.uint8),
           "instances": np.empty((T, H, W), np.uint16), "flow": np.zeros((T, H, W, 2), np.float32)}
    rows, cols = (a.ravel().astype(np.float64) for a in np.mgrid[0:H, 0:W])
    for t in range(T):
        rgb, labels, instances, flow = _shade(scene, t, _visibility(scene, t).ravel(), rows, cols)
        out["rgb"][t] = (rgb + 0.5).astype(np.uint8).reshape(H, W, 3)  # round to nearest
        out["labels"][t] = labels.reshape(H, W)
        out["instances"][t] = instances.reshape(H, W)
        out["flow"][t] = flow.reshape(H, W, 2)
    return out


def shade_points(scene: Scene, t: int, rows: np.ndarray, cols: np.ndarray) -> dict[str, np.ndarray]:
    """The continuous picture frame t is a point sample of, at any sub-pixel points (1-D ``rows``,
    ``cols``): ``rgb`` [N, 3] float in [0, 255] before rounding, ``labels``, ``instances``, ``flow``
    [N, 2]. At integer points it equals the rendered frame up to the rounding; tests use it to check
    that the flow is exact without any interpolation error."""
    rows, cols = np.asarray(rows, np.float64), np.asarray(cols, np.float64)
    owner = np.where(rows > scene.camera.horizon, _GROUND, _SKY)
    for i, plane in enumerate(scene.planes):
        r0, r1, c0, c1 = plane.screen_bounds(scene.camera, t)
        near = np.flatnonzero((rows >= r0) & (rows <= r1) & (cols >= c0) & (cols <= c1))
        x, y = plane.local(scene.camera, t, rows[near], cols[near])
        owner[near[plane.sprite.shape(x, y)]] = 2 + i
    rgb, labels, instances, flow = _shade(scene, t, owner, rows, cols)
    return {"rgb": rgb, "labels": labels, "instances": instances, "flow": flow}


def _visibility(scene: Scene, t: int) -> np.ndarray:
    """[H, W] index of the surface seen at each pixel: 0 sky, 1 ground, 2 + i the i-th sprite."""
    cam, H, W = scene.camera, scene.height, scene.width
    owner = np.full((H, W), _SKY, np.int64)
    owner[np.arange(H) > cam.horizon] = _GROUND
    for i, plane in enumerate(scene.planes):  # far to near: nearer sprites overwrite
        box = plane.screen_box(cam, t, H, W)
        if box is None:
            continue
        r0, r1, c0, c1 = box
        rows, cols = np.arange(r0, r1, dtype=np.float64)[:, None], np.arange(c0, c1, dtype=np.float64)
        x, y = plane.local(cam, t, rows, cols)
        owner[r0:r1, c0:c1][plane.sprite.shape(x, y)] = 2 + i
    return owner


def _shade(scene: Scene, t: int, owner: np.ndarray, rows: np.ndarray, cols: np.ndarray
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Colour in [0, 255] [N, 3], labels, instances and backward flow [N, 2] of the points (rows, cols)
    of frame t, each seen on surface ``owner`` (0 sky, 1 ground, 2 + i sprite i)."""
    cam = scene.camera
    label_of = np.array([SKY, ROAD] + [p.label for p in scene.planes], np.uint8)
    instance_of = np.array([SKY, ROAD] + [p.instance for p in scene.planes], np.uint16)
    labels, instances = label_of[owner], instance_of[owner]
    rgb = np.empty((owner.size, 3))
    flow = np.zeros((owner.size, 2))
    # group points by surface once, then evaluate each surface's texture only where it is seen
    order = np.argsort(owner, kind="stable")
    counts = np.bincount(owner, minlength=label_of.size)
    ends = np.cumsum(counts)
    for k in np.flatnonzero(counts):
        ids = order[ends[k] - counts[k]:ends[k]]
        r, c = rows[ids], cols[ids]
        if k == _SKY:
            rgb[ids] = scene.sky((c + scene.wind * t) / cam.focal, (cam.horizon - r) / cam.focal)
            flow[ids, 0] = scene.wind if t else 0.0
        elif k == _GROUND:
            depth = cam.focal * cam.y[t] / (r - cam.horizon)
            x = cam.x[t] + (c - cam.cx) * depth / cam.focal
            rgb[ids] = scene.ground(x, depth)
            labels[ids] = np.where(depth < scene.ground.z_curb, ROAD, SIDEWALK)
            instances[ids] = labels[ids]
            if t:  # where this ground point projected in the previous frame
                flow[ids, 0] = cam.cx + cam.focal * (x - cam.x[t - 1]) / depth - c
                flow[ids, 1] = cam.horizon + cam.focal * cam.y[t - 1] / depth - r
        else:
            plane = scene.planes[k - 2]
            x, y = plane.local(cam, t, r, c)
            rgb[ids] = plane.sprite.paint(x, y) * scene.light.on_sprite(y)[:, None]
            if t:
                flow[ids] = plane.flow(cam, t)
    rgb = np.clip(rgb * (scene.light.gain * scene.light.tint * 255.0), 0.0, 255.0)
    return rgb, labels, instances, flow


def disocclusions(instances: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """bool [T, H, W]: pixels of frame t whose surface was not in view in frame t-1, from the exact
    backward flow [T, H, W, 2] and the instance ids [T, H, W]: the flow leads out of the frame, or to
    a pixel of another surface (it was hidden behind that one). Frame 0 has no previous frame: False."""
    steps, height, width = instances.shape
    out = np.zeros((steps, height, width), bool)
    rows, cols = np.mgrid[0:height, 0:width]
    for t in range(1, steps):
        r = np.rint(rows + flow[t, ..., 1]).astype(np.int64)
        c = np.rint(cols + flow[t, ..., 0]).astype(np.int64)
        inside = (r >= 0) & (r < height) & (c >= 0) & (c < width)
        source = instances[t - 1][r.clip(0, height - 1), c.clip(0, width - 1)]
        out[t] = ~inside | (source != instances[t])
    return out


def sequence_seed(seed: int, index: int) -> int:
    """The seed of sequence ``index`` of a dataset drawn with ``seed`` (independent streams)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, np.uint64)[0] >> 1)


def generate(cfg: SynthConfig) -> list[Path]:
    """Write ``cfg.sequences`` sequences under ``cfg.out`` (layout in the module docstring); returns
    their folders. Sequences this generator wrote before are replaced (and extra ones from a larger
    earlier run removed); a ``seq_*`` folder it did not write is refused before anything is written."""
    out = Path(cfg.out)
    for index in range(cfg.sequences):
        folder = out / f"seq_{index:04d}"
        if folder.exists() and not _ours(folder):
            raise FileExistsError(f"{folder}: exists and was not written by {GENERATOR}; not overwriting it")
    out.mkdir(parents=True, exist_ok=True)
    (out / "classes.json").write_text(json.dumps(list(CLASS_NAMES)) + "\n")
    written = []
    for index in range(cfg.sequences):
        seed = sequence_seed(cfg.seed, index)
        scene = sample_scene(seed, cfg.frames, cfg.height, cfg.width)
        meta = {"generator": GENERATOR, "name": f"seq_{index:04d}", "seed": seed, "dataset_seed": cfg.seed,
                "index": index, "frames": cfg.frames, "height": cfg.height, "width": cfg.width,
                "classes": list(CLASS_NAMES), **scene.info}
        written.append(_write_sequence(out / meta["name"], render_scene(scene), meta))
    for stale in sorted(out.glob("seq_*")):  # a previous, larger run: keep the dataset what cfg says
        if stale not in written and _ours(stale):
            shutil.rmtree(stale)
    return written


def _ours(folder: Path) -> bool:
    try:
        return json.loads((folder / "meta.json").read_text()).get("generator") == GENERATOR
    except (OSError, ValueError, AttributeError):
        return False


def _write_sequence(folder: Path, arrays: dict[str, np.ndarray], meta: dict) -> Path:
    staging = folder.with_name(f".{folder.name}.partial")  # a crash never leaves half a sequence behind
    if staging.exists():
        shutil.rmtree(staging)
    for sub in ("frames", "labels", "instances", "flow"):
        (staging / sub).mkdir(parents=True)
    for t in range(arrays["rgb"].shape[0]):
        name = f"{t:06d}"
        _write_png(staging / "frames" / f"{name}.png", cv2.cvtColor(arrays["rgb"][t], cv2.COLOR_RGB2BGR))
        _write_png(staging / "labels" / f"{name}.png", arrays["labels"][t])
        _write_png(staging / "instances" / f"{name}.png", arrays["instances"][t])
        np.save(staging / "flow" / f"{name}.npy", arrays["flow"][t])
    (staging / "meta.json").write_text(json.dumps(meta) + "\n")
    if folder.exists():
        shutil.rmtree(folder)
    staging.rename(folder)
    return folder


def _write_png(path: Path, image: np.ndarray) -> None:
    if not cv2.imwrite(str(path), image):
        raise OSError(f"{path}: OpenCV could not write the PNG")
