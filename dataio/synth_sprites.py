"""Flat sprites of the synthetic street: buildings, the far skyline, trees, poles, vehicles, people.

A sprite lives on a plane facing the camera, in local metres: ``x`` along the street from the sprite's
origin, ``y`` up from the ground (a sprite never reaches below ``y = 0``, so the ground in front of it
is never hidden by it). ``shape(x, y)`` says which points it covers (hard silhouette); ``paint(x, y)``
gives their reflectance. ``px`` is the size of one pixel in metres at the sprite's depth: interior edges
ramp over it (see ``synth_texture``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from dataio.synth_texture import (CAR_PAINTS, FACADES, GREENS, HAIR, POLE_METALS, SIGNS, SKIN, TROUSERS,
                                  Noise, box_distance, disc_distance, jitter, mix, periodic, ramp,
                                  rounded_box_distance)

Field = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass
class Sprite:
    box: tuple[float, float, float, float]
    """Local bounds (x0, x1, y0, y1) in metres that contain the whole shape."""
    shape: Field
    """(x, y) -> bool: covered points."""
    paint: Field
    """(x [N], y [N]) -> reflectance [N, 3] of covered points."""


def building(rng: np.random.Generator, noise: Noise, px: float) -> Sprite:
    """A facade with floors and a window grid; glass varies per window."""
    width, height = rng.uniform(8.0, 22.0), rng.uniform(5.0, 20.0)
    wall = jitter(rng, FACADES[rng.integers(len(FACADES))])
    glass = jitter(rng, (0.20, 0.26, 0.33), 0.1)
    floor_h, col_w = rng.uniform(2.9, 3.6), rng.uniform(2.2, 3.6)
    win_w, win_h, sill = col_w * rng.uniform(0.4, 0.65), rng.uniform(1.2, 1.8), rng.uniform(0.7, 1.0)
    margin = (width - col_w * np.floor((width - 1.0) / col_w)) / 2  # centre the grid on the facade
    seed = rng.uniform(0, 256, 2)

    def shape(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return (x >= 0) & (x <= width) & (y >= 0) & (y <= height)

    def paint(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        grain = noise(x / max(0.7, 5 * px) + seed[0], y / max(0.7, 5 * px) + seed[1], octaves=2)
        rgb = wall * (1.0 + 0.10 * grain[:, None])
        # offsets from the centre of the nearest window: windows repeat every column and floor
        dx, dy = periodic(x - margin, col_w, col_w / 2), periodic(y, floor_h, sill + win_h / 2)
        in_grid = ramp(box_distance(x, y, margin, width - margin, 0.0, height - 0.8), px)
        pane = ramp(box_distance(dx, dy, -win_w / 2, win_w / 2, -win_h / 2, win_h / 2), px)
        tone = noise.cell(np.floor((x - margin) / col_w) + seed[0], np.floor(y / floor_h) + seed[1])
        sheen = 0.15 * np.clip(dy / win_h + 0.5, 0.0, 1.0)  # sky reflected towards the top
        rgb = mix(rgb, glass * (1.0 + 0.35 * tone[:, None]) + sheen[:, None], pane * in_grid)
        slab = ramp(np.abs(periodic(y, floor_h, 0.15)) - 0.12, px) * ramp(0.4 - y, px)
        rgb = mix(rgb, wall * 0.7, slab * 0.7)
        cornice = ramp(height - 0.5 - y, px)
        return mix(rgb, wall * 0.6, cornice)

    return Sprite((0.0, width, 0.0, height), shape, paint)


def skyline(rng: np.random.Generator, noise: Noise, px: float, x0: float, x1: float,
            haze: np.ndarray, city: bool) -> Sprite:
    """The far layer over [x0, x1]: blocks of a city or a ridge of hills, blended into the haze. It
    always has some height, so it hides the ground up to the horizon."""
    if city:
        edges = np.cumsum(rng.uniform(15.0, 45.0, int((x1 - x0) / 15.0) + 2)) + x0 - 20.0
        heights = rng.uniform(12.0, 45.0, edges.size + 1)

        def top(x: np.ndarray) -> np.ndarray:
            return heights[np.searchsorted(edges, x)]
    else:
        base, amp, scale = rng.uniform(10.0, 20.0), rng.uniform(8.0, 25.0), rng.uniform(40.0, 90.0)

        def top(x: np.ndarray) -> np.ndarray:
            return base + amp * (0.5 + 0.5 * noise(x / scale + 3.0, np.zeros_like(x) + 7.0, octaves=3))
    colour = jitter(rng, (0.50, 0.52, 0.56) if city else GREENS[rng.integers(len(GREENS))], 0.08)
    colour = mix(colour, haze, np.array(rng.uniform(0.35, 0.6)))
    cell = max(3.0, 5 * px)

    def shape(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return (y >= 0) & (y <= top(x))

    def paint(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        n = noise(x / cell + 101.0, y / cell + 57.0, octaves=2)
        rgb = colour * (1.0 + 0.12 * n[:, None])
        if city:  # lit windows as a fine grid of dots
            dx, dy = periodic(x, 4.0, 2.0), periodic(y, 3.5, 1.7)
            dots = ramp(box_distance(dx, dy, -0.8, 0.8, -0.7, 0.7), px)
            rgb = mix(rgb, colour * 0.75, dots * 0.6)
        return rgb

    return Sprite((x0, x1, 0.0, 50.0), shape, paint)


def tree(rng: np.random.Generator, noise: Noise, px: float) -> Sprite:
    """A trunk under a crown of overlapping discs with a ragged, leafy edge."""
    trunk_h, trunk_w = rng.uniform(1.8, 3.2), rng.uniform(0.25, 0.45)
    discs = [(rng.uniform(-1.0, 1.0), trunk_h + rng.uniform(0.8, 2.5), rng.uniform(1.2, 2.2))
             for _ in range(rng.integers(2, 5))]
    leaf, bark = jitter(rng, GREENS[rng.integers(len(GREENS))], 0.08), jitter(rng, (0.30, 0.22, 0.16))
    seed = rng.uniform(0, 256, 2)
    leaf_cell = max(0.35, 5 * px)
    trunk_top = min(cy for _, cy, _ in discs)  # reaches a disc centre: the crown never floats

    def crown(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        ragged = 0.25 * noise(x / leaf_cell + seed[0], y / leaf_cell + seed[1])
        return np.min([disc_distance(x, y, cx, cy, r) for cx, cy, r in discs], axis=0) + ragged

    def shape(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        trunk = (np.abs(x) <= trunk_w / 2) & (y >= 0) & (y <= trunk_top)
        return trunk | (crown(x, y) <= 0)

    def paint(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        leaves = noise(x / leaf_cell + seed[1], y / leaf_cell + seed[0], octaves=2)
        lower = np.clip((trunk_h + 3.0 - y) / 3.0, 0.0, 1.0)  # the underside of the crown is shaded
        green = leaf * (1.0 + 0.45 * leaves[:, None] - 0.3 * lower[:, None])
        wood = bark * (1.0 + 0.2 * noise(x / max(0.3, 3 * px), y / 0.6 + seed[0])[:, None])
        return mix(green, wood, 1.0 - ramp(crown(x, y), px))

    top = max(cy + r for _, cy, r in discs) + 0.3
    side = max(abs(cx) + r for cx, _, r in discs) + 0.3
    return Sprite((-side, side, 0.0, top), shape, paint)


def pole(rng: np.random.Generator, noise: Noise, px: float) -> Sprite:
    """A street lamp (mast with an arm and a lamp head) or a sign post (mast with a plate)."""
    height, width = rng.uniform(4.0, 8.0), rng.uniform(0.18, 0.3)
    metal = jitter(rng, POLE_METALS[rng.integers(len(POLE_METALS))])
    lamp = bool(rng.random() < 0.6)
    arm = rng.choice([-1.0, 1.0]) * rng.uniform(0.8, 1.8)
    plate_y, plate_w = rng.uniform(2.0, 3.0), rng.uniform(0.6, 0.9)
    plate = jitter(rng, SIGNS[rng.integers(len(SIGNS))])
    if not lamp:
        height = plate_y + plate_w + rng.uniform(0.2, 1.0)

    def regions(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mast = box_distance(x, y, -width / 2, width / 2, 0.0, height)
        if lamp:
            lo, hi = min(0.0, arm), max(0.0, arm)
            extra = np.minimum(box_distance(x, y, lo, hi, height - 0.12, height),
                               box_distance(x, y, arm - 0.3, arm + 0.3, height - 0.3, height))
        else:
            extra = box_distance(x, y, -plate_w / 2, plate_w / 2, plate_y, plate_y + plate_w)
        return mast, extra

    def shape(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        mast, extra = regions(x, y)
        return (mast <= 0) | (extra <= 0)

    def paint(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        mast, extra = regions(x, y)
        across = np.clip(x / (width / 2), -1.0, 1.0)  # a cylinder: bright on one side
        rgb = metal * (0.75 + 0.45 * np.cos(across * 1.2 - 0.5))[:, None]
        if lamp:
            glow = ramp(box_distance(x, y, arm - 0.25, arm + 0.25, height - 0.3, height - 0.18), px)
            return mix(rgb, np.array([0.95, 0.92, 0.75]), glow)
        face = ramp(box_distance(x, y, -plate_w / 2 + 0.06, plate_w / 2 - 0.06,
                                 plate_y + 0.06, plate_y + plate_w - 0.06), px)
        rim = ramp(extra, px) * ramp(-mast, px)
        rgb = mix(rgb, np.array([0.9, 0.9, 0.9]), rim)
        return mix(rgb, plate, face)

    side = max(abs(arm) + 0.35, plate_w / 2 + 0.05) if lamp else plate_w / 2 + 0.05
    return Sprite((-side, side, 0.0, height + 0.05), shape, paint)


def vehicle(rng: np.random.Generator, noise: Noise, px: float, heading: float) -> Sprite:
    """A car, van or bus facing ``heading`` (+1: towards +x): body, glasshouse, wheels and lights."""
    kind = rng.choice(["car", "car", "car", "van", "bus"])
    length = {"car": rng.uniform(3.8, 4.8), "van": rng.uniform(4.8, 5.6), "bus": rng.uniform(8.5, 12.0)}[kind]
    roof = {"car": rng.uniform(1.35, 1.55), "van": rng.uniform(1.9, 2.2), "bus": rng.uniform(2.9, 3.3)}[kind]
    belt = {"car": rng.uniform(0.85, 1.0), "van": rng.uniform(1.0, 1.2), "bus": rng.uniform(1.2, 1.5)}[kind]
    wheel_r, clearance = (0.33, 0.25) if kind == "car" else (0.45, 0.3)
    body = jitter(rng, CAR_PAINTS[rng.integers(len(CAR_PAINTS))])
    wheels = (length * 0.18, length * 0.82) if kind != "bus" else (1.8, length - 2.4)
    cab_lo, cab_hi = (length * 0.28, length * 0.78) if kind == "car" else (0.3, length - 0.3)
    slant = (roof - belt) * (0.9 if kind == "car" else 0.15)
    front = length if heading > 0 else 0.0

    def cabin(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        lift = np.clip(y - belt, 0.0, None)
        left = cab_lo + lift * (slant if heading < 0 else slant * 0.6)
        right = cab_hi - lift * (slant if heading > 0 else slant * 0.6)
        return np.maximum(np.maximum(left - x, x - right), np.maximum(belt - 0.05 - y, y - roof))

    def hull(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return rounded_box_distance(x, y, 0.0, length, clearance, belt if kind == "car" else roof, 0.25)

    def tyres(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return np.minimum(disc_distance(x, y, wheels[0], wheel_r, wheel_r),
                          disc_distance(x, y, wheels[1], wheel_r, wheel_r))

    def shape(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        solid = np.minimum(hull(x, y), tyres(x, y))
        if kind == "car":
            solid = np.minimum(solid, cabin(x, y))
        return solid <= 0

    def paint(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        shade = 0.75 + 0.35 * np.clip((y - clearance) / (roof - clearance), 0.0, 1.0)
        paint_grain = noise(x / max(0.25, 4 * px), y / max(0.25, 4 * px), octaves=2)
        rgb = body * shade[:, None] * (1.0 + 0.06 * paint_grain[:, None])
        inset = 0.12
        glass = ramp(cabin(x, y) + inset, px) if kind == "car" else \
            ramp(box_distance(x, y, 0.5, length - 0.5, belt + 0.25, roof - 0.3), px)
        reflection = 0.25 * np.clip((y - belt) / max(roof - belt, 0.1), 0.0, 1.0)
        rgb = mix(rgb, np.array([0.12, 0.15, 0.19]) + reflection[:, None], glass)
        lamp = ramp(box_distance(x, y, front - 0.25, front + 0.25, belt - 0.35, belt - 0.15), px)
        back = length - front
        rear = ramp(box_distance(x, y, back - 0.2, back + 0.2, belt - 0.3, belt - 0.12), px)
        rgb = mix(mix(rgb, np.array([0.97, 0.95, 0.8]), lamp), np.array([0.8, 0.08, 0.06]), rear)
        tyre = ramp(tyres(x, y), px)
        hub = ramp(np.minimum(disc_distance(x, y, wheels[0], wheel_r, wheel_r * 0.5),
                              disc_distance(x, y, wheels[1], wheel_r, wheel_r * 0.5)), px)
        rgb = mix(rgb, np.array([0.06, 0.06, 0.07]), tyre)
        return mix(rgb, np.array([0.55, 0.56, 0.58]), hub)

    return Sprite((-0.05, length + 0.05, 0.0, roof + 0.05), shape, paint)


def person(rng: np.random.Generator, noise: Noise, px: float) -> Sprite:
    """A standing or walking figure: head with hair, torso with arms, two legs in a fixed stride."""
    h = rng.uniform(1.5, 1.92)
    skin, hair = jitter(rng, SKIN[rng.integers(len(SKIN))]), jitter(rng, HAIR[rng.integers(len(HAIR))])
    shirt = np.clip(rng.uniform(0.05, 0.95, 3), 0.05, 0.95)
    trousers = jitter(rng, TROUSERS[rng.integers(len(TROUSERS))])
    stride = rng.uniform(0.0, 0.14) * h
    head_r, hip, shoulder = 0.065 * h, 0.48 * h, 0.82 * h

    def limb(x: np.ndarray, y: np.ndarray, x_top: float, y_top: float, x_end: float, y_end: float,
             half: float) -> np.ndarray:
        # distance to a segment, minus its half width: a capsule
        dx, dy = x_end - x_top, y_end - y_top
        t = np.clip(((x - x_top) * dx + (y - y_top) * dy) / (dx * dx + dy * dy), 0.0, 1.0)
        return np.hypot(x - x_top - t * dx, y - y_top - t * dy) - half

    def parts(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        head = disc_distance(x, y, 0.0, 0.925 * h, head_r)
        body = rounded_box_distance(x, y, -0.12 * h, 0.12 * h, hip - 0.02 * h, shoulder + 0.02 * h, 0.04 * h)
        arms = np.minimum(limb(x, y, -0.12 * h, shoulder, -0.15 * h - stride / 3, 0.5 * h, 0.035 * h),
                          limb(x, y, 0.12 * h, shoulder, 0.15 * h + stride / 3, 0.5 * h, 0.035 * h))
        torso = np.minimum(body, arms)
        legs = np.minimum(limb(x, y, -0.05 * h, hip, -0.05 * h - stride, 0.03 * h, 0.045 * h),
                          limb(x, y, 0.05 * h, hip, 0.05 * h + stride, 0.03 * h, 0.045 * h))
        return head, torso, legs

    def shape(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        head, torso, legs = parts(x, y)
        return (np.minimum(np.minimum(head, torso), legs) <= 0) & (y >= 0)

    def paint(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        head, torso, legs = parts(x, y)
        fabric = 1.0 + 0.12 * noise(x / max(0.08, 3 * px), y / max(0.08, 3 * px))[:, None]
        rgb = mix(trousers * fabric, shirt * fabric, ramp(torso, px))
        rgb = mix(rgb, skin, ramp(head, px))
        rgb = mix(rgb, hair, ramp(head, px) * ramp(0.93 * h - y, px))
        shoes = ramp(y - 0.05 * h, px) * ramp(legs, px)
        hands = ramp(np.abs(y - 0.52 * h) - 0.03 * h, px) * ramp(torso, px) * ramp(0.12 * h - np.abs(x), px)
        return mix(mix(rgb, np.array([0.08, 0.07, 0.07]), shoes), skin, hands)

    side = 0.2 * h + stride
    return Sprite((-side, side, 0.0, h), shape, paint)
