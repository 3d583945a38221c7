"""The synthetic paired-video generator: determinism, content, exact flow and the on-disk layout."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from dataio.config import SynthConfig
from dataio.synth import (CLASS_NAMES, disocclusions, generate, render_scene, render_sequence, sequence_seed,
                          shade_points)
from dataio.synth_scene import INSTANCE_STRIDE, PERSON, VEHICLE, sample_scene

H, W, T = 64, 128, 8


@pytest.fixture(scope="module")
def scenes() -> dict[int, tuple]:
    """Three small sequences, each with its scene (for exact sub-pixel sampling) and its frames."""
    out = {}
    for seed in (0, 1, 2):
        scene = sample_scene(seed, T, H, W)
        out[seed] = (scene, render_scene(scene))
    return out


def grid() -> tuple[np.ndarray, np.ndarray]:
    rows, cols = np.mgrid[0:H, 0:W]
    return rows.ravel().astype(np.float64), cols.ravel().astype(np.float64)


def is_mover(instances: np.ndarray) -> np.ndarray:
    return (instances >= VEHICLE * INSTANCE_STRIDE) & (instances < (PERSON + 1) * INSTANCE_STRIDE)


def test_same_seed_gives_bit_identical_arrays() -> None:
    a, b = render_sequence(7, 4, H, W), render_sequence(7, 4, H, W)
    assert {k: (v.shape, v.dtype) for k, v in a.items()} == {
        "rgb": ((4, H, W, 3), np.uint8), "labels": ((4, H, W), np.uint8),
        "instances": ((4, H, W), np.uint16), "flow": ((4, H, W, 2), np.float32)}
    for key in a:
        assert np.array_equal(a[key], b[key]), key
    assert not np.array_equal(a["rgb"], render_sequence(8, 4, H, W)["rgb"])


def test_classes_each_appear_in_a_small_dataset(scenes: dict) -> None:
    assert CLASS_NAMES == ("sky", "road", "sidewalk", "building", "vegetation", "vehicle", "person", "pole")
    seen = set()
    for _, frames in scenes.values():
        seen |= set(np.unique(frames["labels"]).tolist())
    assert seen == set(range(len(CLASS_NAMES)))  # all 8 (the issue asks for at least 6)


def test_instance_ids_follow_the_classes(scenes: dict) -> None:
    for _, frames in scenes.values():
        labels, instances = frames["labels"].astype(np.int64), frames["instances"].astype(np.int64)
        sprite = instances >= INSTANCE_STRIDE
        assert np.array_equal(instances[sprite] // INSTANCE_STRIDE, labels[sprite])  # class * 1000 + index
        assert np.array_equal(instances[~sprite], labels[~sprite])  # sky, road, sidewalk: the class id
        assert set(np.unique(labels[~sprite]).tolist()) <= {0, 1, 2}
        assert np.unique(instances[sprite]).size > 10  # buildings, trees, poles, cars, people


def test_objects_move_and_pass_in_front_of_each_other(scenes: dict) -> None:
    """Occlusion, found exactly: a pixel of a sprite now whose content, one frame earlier (at the
    flow's source point), was covered by another sprite, so that sprite passed in front of it."""
    rows, cols = grid()
    movers_revealed = 0
    for seed, (scene, frames) in scenes.items():
        assert (frames["labels"][1:] != frames["labels"][:-1]).any(axis=(1, 2)).all(), seed
        revealed = 0
        for t in range(1, T):
            flow = frames["flow"][t].reshape(-1, 2).astype(np.float64)
            src_r, src_c = rows + flow[:, 1], cols + flow[:, 0]
            before = shade_points(scene, t - 1, src_r, src_c)["instances"]
            now = frames["instances"][t].ravel()
            inside = (src_r >= 0) & (src_r <= H - 1) & (src_c >= 0) & (src_c <= W - 1)
            hidden = inside & (now != before) & (now >= INSTANCE_STRIDE) & (before >= INSTANCE_STRIDE)
            revealed += int(hidden.sum())
            movers_revealed += int((hidden & is_mover(now) & is_mover(before)).sum())
        assert revealed > 0, seed  # in every sequence, with camera parallax alone
    assert movers_revealed > 0  # and a vehicle or person passes in front of another one


def test_flow_is_exact_where_content_stays_visible(scenes: dict) -> None:
    """``frame[t](p) == frame[t-1](p + flow[t](p))`` on the continuous picture the frames sample:
    no interpolation is involved, so the only slack is float32 flow (below 1e-3 of a grey level)."""
    rows, cols = grid()
    for seed, (scene, frames) in scenes.items():
        assert not frames["flow"][0].any()
        for t in range(1, T):
            flow = frames["flow"][t].reshape(-1, 2).astype(np.float64)
            src_r, src_c = rows + flow[:, 1], cols + flow[:, 0]
            before = shade_points(scene, t - 1, src_r, src_c)
            now = shade_points(scene, t, rows, cols)
            rounded = np.floor(now["rgb"] + 0.5).astype(np.uint8)
            assert np.array_equal(rounded, frames["rgb"][t].reshape(-1, 3))
            inside = (src_r >= 0) & (src_r <= H - 1) & (src_c >= 0) & (src_c <= W - 1)
            visible = inside & (before["instances"] == frames["instances"][t].ravel())
            assert visible.mean() > 0.85, (seed, t)
            assert np.abs(before["rgb"][visible] - now["rgb"][visible]).max() < 1e-3, (seed, t)


def bilinear(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    ax, ay = (x - x0)[..., None], (y - y0)[..., None]
    im = image.astype(np.float64)
    return (im[y0, x0] * (1 - ax) * (1 - ay) + im[y0, x0 + 1] * ax * (1 - ay)
            + im[y0 + 1, x0] * (1 - ax) * ay + im[y0 + 1, x0 + 1] * ax * ay)


def warp_errors(frames: dict, dx: float = 0.0) -> np.ndarray:
    """|frame t - bilinear(frame t-1, p + flow + (dx, 0))| over pixels whose four source neighbours
    all show the pixel's own instance (content visible in both frames)."""
    rows, cols = np.mgrid[0:H, 0:W].astype(np.float64)
    errors = []
    for t in range(1, T):
        sx, sy = cols + frames["flow"][t][..., 0] + dx, rows + frames["flow"][t][..., 1]
        ok = (sx >= 0) & (sy >= 0) & (sx < W - 1) & (sy < H - 1)
        sx, sy = np.where(ok, sx, 0), np.where(ok, sy, 0)
        x0, y0 = np.floor(sx).astype(int), np.floor(sy).astype(int)
        inst = frames["instances"]
        for oy in (0, 1):
            for ox in (0, 1):
                ok &= inst[t - 1][y0 + oy, x0 + ox] == inst[t]
        warped = bilinear(frames["rgb"][t - 1], sx, sy)
        errors.append(np.abs(warped - frames["rgb"][t]).max(axis=-1)[ok])
    return np.concatenate(errors)


def test_warping_the_previous_frame_with_the_flow_reproduces_the_frame(scenes: dict) -> None:
    """The practical check on 8-bit frames. Bilinear resampling of point-sampled textures errs at edges
    inside a surface (windows, joints: the more so at this small size), so the tolerance is statistical:
    median <= 1 grey level and mean < 3 (measured 0.5-2.1 over seeds 0-7 at 64x128); a flow half a
    pixel off must do at least twice as badly (measured 2.1-8.5x), so the check tells right from wrong."""
    for seed, (_, frames) in scenes.items():
        errors = warp_errors(frames)
        assert errors.size > 0.8 * (T - 1) * H * W, seed
        assert np.median(errors) <= 1.0 and errors.mean() < 3.0, (seed, np.median(errors), errors.mean())
        assert warp_errors(frames, dx=0.5).mean() > 2 * errors.mean(), seed


def test_disocclusions_are_the_pixels_a_moving_object_uncovers() -> None:
    """A 2x2 square moving right by 2 px over a still background: frame 1 newly shows the 2 columns
    it left, and the square itself (it was in view) is not new."""
    instances = np.zeros((2, 4, 8), np.uint16)
    instances[0, 1:3, 1:3] = 7
    instances[1, 1:3, 3:5] = 7
    flow = np.zeros((2, 4, 8, 2), np.float32)
    flow[1, 1:3, 3:5, 0] = -2.0  # the square's pixels come from 2 px to the left
    new = disocclusions(instances, flow)
    expected = np.zeros((4, 8), bool)
    expected[1:3, 1:3] = True  # background behind where the square was
    assert not new[0].any() and np.array_equal(new[1], expected)
    # Content entering the frame (a pan: every pixel comes from 1 px to the right) is new at the edge.
    pan = np.zeros((2, 4, 8, 2), np.float32)
    pan[1, ..., 0] = 1.0
    assert np.array_equal(disocclusions(np.zeros((2, 4, 8), np.uint16), pan)[1],
                          np.arange(8)[None, :].repeat(4, 0) == 7)


def test_disocclusions_of_the_synthetic_street_are_few_and_never_inside_a_still_view(scenes: dict) -> None:
    for _, arrays in scenes.values():
        new = disocclusions(arrays["instances"], arrays["flow"])
        assert 0.0 < new[1:].mean() < 0.1
        # A pixel whose surface and neighbourhood are the same in both frames is not new.
        same = (arrays["instances"][1:] == arrays["instances"][:-1]) & (np.abs(arrays["flow"][1:]).max(-1) == 0)
        assert not (new[1:] & same).any()


def test_camera_motion_gives_parallax() -> None:
    moving = next(s for s in range(20) if abs(sample_scene(s, 4, H, W).camera.x[3]) > 0.3)
    frames = render_sequence(moving, 4, H, W)
    fx = frames["flow"][2][..., 0]
    road, building = frames["labels"][2] == 1, frames["labels"][2] == 3
    # the near road moves more on screen than the far facades (and the ground varies by row)
    assert np.abs(fx[road]).mean() > 1.5 * np.abs(fx[building]).mean() > 0
    assert np.unique(np.round(fx[road], 4)).size > 5


def test_generate_writes_the_pack_layout(tmp_path: Path) -> None:
    cfg = SynthConfig(out=str(tmp_path / "synth"), sequences=2, frames=3, height=32, width=64, seed=5)
    paths = generate(cfg)
    assert paths == [tmp_path / "synth" / "seq_0000", tmp_path / "synth" / "seq_0001"]
    assert json.loads((tmp_path / "synth" / "classes.json").read_text()) == list(CLASS_NAMES)
    lighting = []
    for index, folder in enumerate(paths):
        meta = json.loads((folder / "meta.json").read_text())
        assert meta["seed"] == sequence_seed(5, index) and meta["frames"] == 3
        lighting.append(meta["lighting"]["gain"])
        assert {"camera", "motion"} <= meta.keys()
        expected = render_sequence(meta["seed"], 3, 32, 64)
        for sub in ("frames", "labels", "instances", "flow"):
            assert sorted(p.name for p in (folder / sub).iterdir()) == [
                f"00000{t}.{'npy' if sub == 'flow' else 'png'}" for t in range(3)]
        for t in range(3):
            rgb = cv2.imread(str(folder / "frames" / f"{t:06d}.png"), cv2.IMREAD_UNCHANGED)
            labels = cv2.imread(str(folder / "labels" / f"{t:06d}.png"), cv2.IMREAD_UNCHANGED)
            instances = cv2.imread(str(folder / "instances" / f"{t:06d}.png"), cv2.IMREAD_UNCHANGED)
            flow = np.load(folder / "flow" / f"{t:06d}.npy")
            assert np.array_equal(rgb[..., ::-1], expected["rgb"][t])
            assert labels.dtype == np.uint8 and np.array_equal(labels, expected["labels"][t])
            assert instances.dtype == np.uint16 and np.array_equal(instances, expected["instances"][t])
            assert flow.dtype == np.float32 and np.array_equal(flow, expected["flow"][t])
    assert lighting[0] != lighting[1]

    # a smaller rerun replaces its own sequences and drops the extra one, but never foreign folders
    foreign = tmp_path / "synth" / "seq_0009"
    foreign.mkdir()
    assert generate(SynthConfig(out=cfg.out, sequences=1, frames=2, height=32, width=64)) == paths[:1]
    assert not paths[1].exists() and foreign.exists()
    assert len(list((paths[0] / "frames").iterdir())) == 2
    (paths[0] / "meta.json").unlink()  # now seq_0000 is not recognisably ours either
    with pytest.raises(FileExistsError, match="seq_0000"):
        generate(SynthConfig(out=cfg.out, sequences=2, frames=2, height=32, width=64))
    assert not (tmp_path / "synth" / "seq_0001").exists()  # refused before writing anything


@pytest.mark.parametrize("frames, height, width", [(0, 64, 64), (2, 64, 63), (2, 30, 64)])
def test_bad_sizes_are_refused(frames: int, height: int, width: int) -> None:
    with pytest.raises(ValueError):
        render_sequence(0, frames, height, width)
