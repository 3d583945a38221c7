"""The synthetic street scene: a camera, the sky, the ground and flat sprites, drawn from one seed.

Geometry (why the optical flow is exact): a pinhole camera looks along the depth axis ``z`` and never
rotates; it slides along the street (``x``) and bobs in height (``y``). Every sprite is a flat plane
facing the camera at a fixed depth, moving by pure translation, so on screen it translates rigidly by
``focal / depth`` times its motion relative to the camera: one flow vector per sprite and frame. The
ground plane is solved per pixel (depth from the row, position from the column). The sky sits at
infinity and only drifts with the wind. Sprites stand on the ground and never reach below it, so
painting the ground first and then the sprites from far to near gives the correct occlusions.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from dataio import synth_sprites as sprites
from dataio.synth_texture import ASPHALT, MARKINGS, PAVING, SKIES, GroundPaint, Noise, SkyPaint, jitter

CLASS_NAMES: tuple[str, ...] = (
    "sky", "road", "sidewalk", "building", "vegetation", "vehicle", "person", "pole")
SKY, ROAD, SIDEWALK, BUILDING, VEGETATION, VEHICLE, PERSON, POLE = range(len(CLASS_NAMES))
FPS = 30.0  # speeds below are per frame at this rate
INSTANCE_STRIDE = 1000  # a sprite's instance id is class id * 1000 + its index (the Cityscapes scheme)
LANES = (6.0, 8.6)  # depths of the near and far lane centres, metres; the kerb is at ~10 m
CENTRE_LINE = 7.3


@dataclass(frozen=True)
class Camera:
    focal: float
    """Focal length in pixels."""
    cx: float
    """Column of the optical axis."""
    horizon: float
    """Row of the horizon (fixed: the camera does not tilt)."""
    x: np.ndarray
    """[T] position along the street, metres."""
    y: np.ndarray
    """[T] height above the ground, metres."""


@dataclass
class Plane:
    """A sprite at a fixed depth whose origin moves at ``speed`` along the street and bobs upwards."""
    sprite: sprites.Sprite
    label: int
    instance: int
    depth: float
    x0: float
    speed: float = 0.0
    """Metres per frame along x."""
    bob: float = 0.0
    """Height of the bounce of a walking figure, metres (the origin stays at or above the ground)."""
    bob_rate: float = 0.0
    bob_phase: float = 0.0

    def origin(self, t: int) -> tuple[float, float]:
        lift = self.bob * 0.5 * (1.0 - np.cos(self.bob_rate * t + self.bob_phase))
        return self.x0 + self.speed * t, float(lift)

    def local(self, cam: Camera, t: int, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pixel centres (rows, cols) of frame t -> the sprite's local metres."""
        ox, oy = self.origin(t)
        scale = self.depth / cam.focal
        return cam.x[t] + (cols - cam.cx) * scale - ox, cam.y[t] - (rows - cam.horizon) * scale - oy

    def screen_bounds(self, cam: Camera, t: int) -> tuple[float, float, float, float]:
        """Rows r0..r1 and columns c0..c1 (inclusive, sub-pixel) that contain the sprite in frame t."""
        ox, oy = self.origin(t)
        x0, x1, y0, y1 = self.sprite.box
        k = cam.focal / self.depth
        return (cam.horizon + k * (cam.y[t] - oy - y1), cam.horizon + k * (cam.y[t] - oy - y0),
                cam.cx + k * (ox + x0 - cam.x[t]), cam.cx + k * (ox + x1 - cam.x[t]))

    def screen_box(self, cam: Camera, t: int, height: int, width: int) -> tuple[int, int, int, int] | None:
        """Pixel rows [r0, r1) and columns [c0, c1) of frame t that may show the sprite, or None."""
        r0, r1, c0, c1 = self.screen_bounds(cam, t)
        r0, r1 = max(int(np.ceil(r0)), 0), min(int(np.floor(r1)) + 1, height)
        c0, c1 = max(int(np.ceil(c0)), 0), min(int(np.floor(c1)) + 1, width)
        return (r0, r1, c0, c1) if r0 < r1 and c0 < c1 else None

    def flow(self, cam: Camera, t: int) -> tuple[float, float]:
        """Backward flow of every pixel of this sprite in frame t >= 1: where it was in t-1, minus here."""
        (ax, ay), (bx, by) = self.origin(t - 1), self.origin(t)
        k = cam.focal / self.depth
        return k * ((ax - bx) - (cam.x[t - 1] - cam.x[t])), k * ((cam.y[t - 1] - cam.y[t]) - (ay - by))


@dataclass
class Light:
    """Lighting of one sequence, constant over its frames (so brightness follows the content)."""
    sky: str
    """`clear`, `overcast` or `dusk`."""
    gain: float
    tint: np.ndarray
    """Per-channel multipliers (colour temperature)."""
    rise: float
    """Relative brightening of sprites per 10 m of height above the ground."""

    def on_sprite(self, y: np.ndarray) -> np.ndarray:
        return 1.0 + self.rise * np.clip(y / 10.0, 0.0, 2.0)


@dataclass
class Scene:
    camera: Camera
    sky: SkyPaint
    wind: float
    """Sky drift in pixels per frame (backward flow of sky pixels along x)."""
    ground: GroundPaint
    planes: list[Plane]
    """Sprites ordered from far to near (the painting order)."""
    light: Light
    frames: int
    height: int
    width: int
    info: dict = field(default_factory=dict)
    """JSON-ready description for the sequence's meta.json (lighting, motion)."""


def sample_scene(seed: int, frames: int, height: int, width: int) -> Scene:
    """Draw one sequence's street, camera path, traffic and lighting from ``seed``."""
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    if height < 32 or width < 32 or height % 2 or width % 2:
        raise ValueError(f"height and width must be even and >= 32, got {height}x{width}")
    rng = np.random.default_rng(seed)
    noise = Noise(rng)
    cam = _camera(rng, frames, height, width)
    light, sky, wind = _lighting(rng, noise, cam)
    z_curb = rng.uniform(9.5, 10.5)
    shade_depth = rng.uniform(13.0, 19.0)
    ground = GroundPaint(noise, cam.focal, float(cam.y[0]), z_curb, CENTRE_LINE, z_shadow=shade_depth,
                         shadow=1.0 if light.sky == "overcast" else rng.uniform(0.6, 0.85),
                         asphalt=jitter(rng, ASPHALT, 0.08),
                         paving=jitter(rng, PAVING[rng.integers(len(PAVING))]),
                         marking=np.asarray(MARKINGS[0 if rng.random() < 0.7 else 1]),
                         tile=rng.uniform(0.6, 1.2))
    ids = _InstanceIds()
    planes = _background(rng, noise, cam, sky.horizon, z_curb, ids) + _traffic(rng, noise, cam, z_curb, ids)
    planes.sort(key=lambda p: -p.depth)
    info = {
        "camera": {"focal_px": cam.focal, "horizon_px": cam.horizon, "height_m": float(cam.y[0]),
                   "x_m": np.round(cam.x, 4).tolist(), "y_m": np.round(cam.y, 4).tolist()},
        "lighting": {"sky": light.sky, "gain": light.gain, "tint": light.tint.round(4).tolist(),
                     "rise_per_10m": light.rise, "cloud_cover": sky.cloud_cover,
                     "shadow_depth_m": shade_depth, "shadow": ground.shadow},
        "motion": {"fps": FPS, "wind_px_per_frame": wind, "objects": [
            {"instance": p.instance, "class": CLASS_NAMES[p.label], "depth_m": round(p.depth, 3),
             "speed_m_per_frame": round(p.speed, 4), "bob_m": round(p.bob, 4)}
            for p in planes if p.speed or p.bob]},
        "street": {"kerb_depth_m": z_curb, "lanes_depth_m": list(LANES)},
    }
    return Scene(cam, sky, wind, ground, planes, light, frames, height, width, info)


class _InstanceIds:
    def __init__(self) -> None:
        self.count = [0] * len(CLASS_NAMES)

    def __call__(self, label: int) -> int:
        index = self.count[label]
        if index >= INSTANCE_STRIDE:
            raise ValueError(f"more than {INSTANCE_STRIDE} {CLASS_NAMES[label]} objects in one sequence: "
                             f"use fewer frames per sequence")
        self.count[label] += 1
        return label * INSTANCE_STRIDE + index


def _camera(rng: np.random.Generator, frames: int, height: int, width: int) -> Camera:
    t = np.arange(frames, dtype=np.float64)
    speed = 0.0 if rng.random() < 0.15 else rng.uniform(-0.2, 0.2)  # some sequences hold still
    sway, sway_rate, sway_phase = rng.uniform(0.0, 0.3), rng.uniform(0.05, 0.2), rng.uniform(0, 2 * np.pi)
    bob, bob_rate, bob_phase = rng.uniform(0.0, 0.04), rng.uniform(0.3, 0.8), rng.uniform(0, 2 * np.pi)
    x = speed * t + sway * (np.sin(sway_rate * t + sway_phase) - np.sin(sway_phase))
    y = rng.uniform(2.2, 2.9) + bob * np.sin(bob_rate * t + bob_phase)
    return Camera(0.9 * height, (width - 1) / 2.0, height * rng.uniform(0.36, 0.46), x, y)


def _lighting(rng: np.random.Generator, noise: Noise, cam: Camera) -> tuple[Light, SkyPaint, float]:
    kind = str(rng.choice(["clear", "overcast", "dusk"], p=[0.5, 0.3, 0.2]))
    gain = rng.uniform(*{"clear": (0.9, 1.15), "overcast": (0.7, 0.95), "dusk": (0.6, 0.85)}[kind])
    tint = {"clear": (1.0, 1.0, 1.0), "overcast": (0.97, 1.0, 1.04), "dusk": (1.12, 1.0, 0.85)}[kind]
    tint = np.asarray(tint) * (1.0 + rng.normal(0.0, 0.03, 3))
    horizon, zenith = (jitter(rng, c, 0.04) for c in SKIES[kind])
    cover = rng.uniform(*{"clear": (0.0, 0.35), "overcast": (0.6, 0.9), "dusk": (0.1, 0.5)}[kind])
    sky = SkyPaint(noise, horizon, zenith, cover, cloud_scale=rng.uniform(0.08, 0.2))
    wind = float(rng.uniform(-0.003, 0.003) * cam.focal)
    return Light(kind, float(gain), tint, float(rng.uniform(-0.05, 0.25))), sky, wind


def _visible(cam: Camera, depth: float, drift: float = 0.0, margin: float = 2.0) -> tuple[float, float]:
    """Street positions (in a frame moving at ``drift`` m/frame) seen at ``depth`` in any frame."""
    track = cam.x - drift * np.arange(cam.x.size)
    half = (cam.cx + margin) * depth / cam.focal
    return float(track.min() - half), float(track.max() + half)


def _row(rng: np.random.Generator, lo: float, hi: float, gap: tuple[float, float],
         make: Callable[[float], Plane]) -> list[Plane]:
    """Place sprites left to right over [lo, hi] with random gaps; ``make(x)`` builds one at ``x``."""
    placed, x = [], lo - rng.uniform(*gap)
    while x < hi:
        plane = make(x)
        placed.append(plane)
        x = plane.x0 + plane.sprite.box[1] + rng.uniform(*gap)
    return placed


def _background(rng: np.random.Generator, noise: Noise, cam: Camera, haze: np.ndarray, z_curb: float,
                ids: _InstanceIds) -> list[Plane]:
    far = rng.uniform(90.0, 140.0)
    city = bool(rng.random() < 0.6)
    lo, hi = _visible(cam, far, margin=10.0)
    label = BUILDING if city else VEGETATION
    skyline = sprites.skyline(rng, noise, far / cam.focal, lo, hi, haze, city)
    planes = [Plane(skyline, label, ids(label), far, 0.0)]

    def block(x: float) -> Plane:
        depth = rng.uniform(20.0, 32.0)
        sprite = sprites.building(rng, noise, depth / cam.focal)
        alley = 0.0 if rng.random() < 0.5 else rng.uniform(2.0, 8.0)  # half the blocks adjoin
        return Plane(sprite, BUILDING, ids(BUILDING), depth, x + alley)
    planes += _row(rng, *_visible(cam, 32.0), (0.0, 0.5), block)

    rows = [z_curb + rng.uniform(0.8, 1.4)] if rng.random() < 0.75 else []
    rows += [rng.uniform(15.5, 17.0)] if rng.random() < 0.3 else []
    for z_row in rows:
        def plant(x: float, z_row: float = z_row) -> Plane:
            depth = z_row + rng.uniform(-0.2, 0.2)
            sprite = sprites.tree(rng, noise, depth / cam.focal)
            return Plane(sprite, VEGETATION, ids(VEGETATION), depth, x - sprite.box[0])
        planes += _row(rng, *_visible(cam, z_row), (4.0, 12.0), plant)

    def post(x: float) -> Plane:
        depth = z_curb + 0.35 + rng.uniform(-0.05, 0.05)
        sprite = sprites.pole(rng, noise, depth / cam.focal)
        return Plane(sprite, POLE, ids(POLE), depth, x - sprite.box[0])
    planes += _row(rng, *_visible(cam, z_curb), (8.0, 24.0), post)
    return planes


def _traffic(rng: np.random.Generator, noise: Noise, cam: Camera, z_curb: float,
             ids: _InstanceIds) -> list[Plane]:
    planes: list[Plane] = []
    heading = rng.choice([-1.0, 1.0])
    for lane, direction in zip(LANES, (heading, -heading)):
        speed = 0.0 if rng.random() < 0.2 else direction * rng.uniform(0.12, 0.4)  # stopped traffic too
        lo, hi = _visible(cam, lane + 0.4, drift=speed, margin=4.0)

        def car(x: float, lane: float = lane, speed: float = speed, direction: float = direction) -> Plane:
            depth = lane + rng.uniform(-0.4, 0.4)
            sprite = sprites.vehicle(rng, noise, depth / cam.focal, direction)
            return Plane(sprite, VEHICLE, ids(VEHICLE), depth, x, speed)
        # one speed per lane keeps cars of a lane apart; cars of the two lanes pass each other
        planes += _row(rng, lo - 12.0, hi, (2.0, 25.0), car)

    lo, hi = _visible(cam, z_curb + 4.0)
    for _ in range(1 + rng.poisson((hi - lo) / 7.0)):
        depth = rng.uniform(z_curb + 0.6, z_curb + 6.5)
        walking = rng.random() < 0.75
        speed = rng.choice([-1.0, 1.0]) * rng.uniform(0.025, 0.06) if walking else 0.0
        seen_at = rng.integers(cam.x.size)  # on screen at this frame, wherever it walks from
        x = cam.x[seen_at] + (rng.uniform(0, 2 * cam.cx) - cam.cx) * depth / cam.focal - speed * seen_at
        bob = rng.uniform(0.02, 0.035) if walking else 0.0
        step = 2 * np.pi / rng.uniform(14.0, 20.0)  # one bounce per step, ~2 steps a second
        sprite = sprites.person(rng, noise, depth / cam.focal)
        planes.append(Plane(sprite, PERSON, ids(PERSON), depth, float(x), float(speed), bob, step,
                            rng.uniform(0, 2 * np.pi)))
    return planes
