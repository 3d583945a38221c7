"""Procedural texture building blocks for the synthetic street scene, and the sky and ground.

Every texture is a continuous function of the coordinates of the surface it lies on (metres on a
facade, the ground's lateral position and depth, the sky's viewing angle), never of the pixel grid.
A surface that moves by a sub-pixel amount therefore shows the same colours at the moved points,
which is what keeps the synthetic optical flow exact. Edges inside a surface (windows, lane markings,
paving joints) are ramps ``EDGE_PIXELS`` wide instead of steps, and noise cells stay a few pixels
across, so resampling a frame at sub-pixel positions (what a flow warp does) reproduces the next frame
closely; only object silhouettes are hard.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_LATTICE = 256  # the noise lattice wraps every 256 cells; offsets keep surfaces decorrelated
EDGE_PIXELS = 1.5  # interior edges ramp over this many pixels: bilinear resampling then stays close

# Colour statistics per class: reflectances in [0, 1] drawn per sequence or per object, then jittered.
FACADES = ((0.58, 0.30, 0.22), (0.74, 0.66, 0.52), (0.62, 0.62, 0.63), (0.86, 0.83, 0.77),
           (0.42, 0.38, 0.35), (0.72, 0.56, 0.40), (0.55, 0.60, 0.66))
CAR_PAINTS = ((0.92, 0.92, 0.92), (0.10, 0.10, 0.11), (0.62, 0.64, 0.67), (0.72, 0.10, 0.10),
              (0.12, 0.25, 0.62), (0.92, 0.76, 0.10), (0.20, 0.42, 0.26), (0.45, 0.30, 0.55))
SKIN = ((0.96, 0.80, 0.69), (0.87, 0.67, 0.53), (0.68, 0.49, 0.36), (0.45, 0.31, 0.22), (0.30, 0.20, 0.15))
HAIR = ((0.08, 0.06, 0.05), (0.30, 0.18, 0.10), (0.75, 0.62, 0.35), (0.55, 0.55, 0.55))
GREENS = ((0.20, 0.42, 0.14), (0.30, 0.50, 0.18), (0.16, 0.34, 0.16), (0.42, 0.50, 0.20))
POLE_METALS = ((0.45, 0.46, 0.48), (0.18, 0.26, 0.20), (0.22, 0.22, 0.24))
SIGNS = ((0.10, 0.30, 0.70), (0.75, 0.10, 0.10), (0.90, 0.90, 0.90))
TROUSERS = ((0.12, 0.14, 0.25), (0.10, 0.10, 0.10), (0.45, 0.40, 0.32), (0.30, 0.32, 0.35))
PAVING = ((0.62, 0.60, 0.56), (0.55, 0.55, 0.57), (0.66, 0.52, 0.45))
ASPHALT = (0.30, 0.30, 0.31)
MARKINGS = ((0.92, 0.90, 0.85), (0.92, 0.78, 0.20))  # white, yellow
SKIES = {"clear": ((0.62, 0.78, 0.95), (0.22, 0.42, 0.80)),   # (horizon, zenith)
         "overcast": ((0.80, 0.81, 0.83), (0.60, 0.62, 0.66)),
         "dusk": ((0.98, 0.66, 0.42), (0.30, 0.32, 0.58))}


class Noise:
    """Smooth value noise on a wrapping random lattice: ``noise(u, v)`` lies in [-1, 1], one lattice
    cell per unit of ``u`` and ``v``, continuous with a continuous derivative."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.table = rng.uniform(-1.0, 1.0, (_LATTICE, _LATTICE))
        self.flat = self.table.ravel()

    def __call__(self, u: np.ndarray, v: np.ndarray, octaves: int = 1) -> np.ndarray:
        total, weight, amp = 0.0, 0.0, 1.0
        for k in range(octaves):
            # odd offsets per octave so octaves do not share lattice points
            total = total + amp * self._octave(u * 2 ** k + 37.0 * k, v * 2 ** k + 91.0 * k)
            weight += amp
            amp *= 0.5
        return total / weight

    def cell(self, iu: np.ndarray, iv: np.ndarray) -> np.ndarray:
        """One random value in [-1, 1] per integer cell (a tile, a window), from the same lattice."""
        mask = _LATTICE - 1
        return self.table[np.asarray(iv, np.int64) & mask, np.asarray(iu, np.int64) & mask]

    def _octave(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        fu, fv = np.floor(u), np.floor(v)
        su, sv = u - fu, v - fv
        su = su * su * (3.0 - 2.0 * su)  # smoothstep fade: C1 across cell borders
        sv = sv * sv * (3.0 - 2.0 * sv)
        mask = _LATTICE - 1
        iu0 = fu.astype(np.int64) & mask
        iu1 = (iu0 + 1) & mask
        row0 = (fv.astype(np.int64) & mask) * _LATTICE
        row1 = (row0 + _LATTICE) & (_LATTICE * _LATTICE - 1)
        flat = self.flat  # np.take on a flat table is several times faster than 2-D fancy indexing
        a, b = flat.take(row0 + iu0), flat.take(row0 + iu1)
        c, d = flat.take(row1 + iu0), flat.take(row1 + iu1)
        return a + (b - a) * su + (c - a) * sv + (a - b - c + d) * su * sv


def ramp(distance: np.ndarray, px: float | np.ndarray) -> np.ndarray:
    """Coverage of a region given a signed distance to its edge (negative inside) and the size of a
    pixel there (same units): 1 inside, 0 outside, a linear ramp ``EDGE_PIXELS`` pixels wide across."""
    return np.clip(0.5 - distance / (EDGE_PIXELS * px), 0.0, 1.0)


def periodic(u: np.ndarray, period: float, centre: float) -> np.ndarray:
    """Signed offset of ``u`` from the nearest of ``centre + k * period``, in [-period/2, period/2).
    It jumps only half way between centres, so a repeated feature drawn around each centre is smooth."""
    return np.mod(u - centre + period / 2, period) - period / 2


def box_distance(x: np.ndarray, y: np.ndarray, x0: float, x1: float, y0: float, y1: float) -> np.ndarray:
    """Signed (Chebyshev) distance to the rectangle [x0, x1] x [y0, y1]; negative inside."""
    return np.maximum(np.maximum(x0 - x, x - x1), np.maximum(y0 - y, y - y1))


def disc_distance(x: np.ndarray, y: np.ndarray, cx: float, cy: float, r: float) -> np.ndarray:
    return np.hypot(x - cx, y - cy) - r


def rounded_box_distance(x: np.ndarray, y: np.ndarray, x0: float, x1: float, y0: float, y1: float,
                         r: float) -> np.ndarray:
    """Signed Euclidean distance to a rectangle with corners rounded by ``r``."""
    qx = np.abs(x - (x0 + x1) / 2) - ((x1 - x0) / 2 - r)
    qy = np.abs(y - (y0 + y1) / 2) - ((y1 - y0) / 2 - r)
    outside = np.hypot(np.maximum(qx, 0.0), np.maximum(qy, 0.0))
    return outside + np.minimum(np.maximum(qx, qy), 0.0) - r


def mix(a: np.ndarray, b: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Per-pixel blend of colours (``a``, ``b``: [3] or [N, 3]) by weights ``w`` [N]."""
    return a + (np.asarray(b) - a) * w[..., None]


def jitter(rng: np.random.Generator, colour: tuple[float, float, float], amount: float = 0.06) -> np.ndarray:
    """A colour drawn around a palette entry: one brightness factor and a small per-channel change."""
    c = np.asarray(colour) * rng.uniform(1 - amount * 2, 1 + amount * 2)
    return np.clip(c * (1 + rng.normal(0.0, amount, 3)), 0.02, 0.98)


@dataclass
class SkyPaint:
    """The sky at infinity: a horizon-to-zenith gradient with drifting clouds. Coordinates are viewing
    angles (radians): ``a`` across (already shifted by the wind), ``b`` elevation above the horizon."""
    noise: Noise
    horizon: np.ndarray
    zenith: np.ndarray
    cloud_cover: float
    """Share of the sky under cloud, in [0, 1]."""
    cloud_scale: float
    """Radians per noise cell."""

    def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        rgb = mix(self.horizon, self.zenith, np.clip(b / 0.5, 0.0, 1.0) ** 0.7)
        n = self.noise(a / self.cloud_scale + 11.0, b / (0.6 * self.cloud_scale) + 5.0, octaves=3)
        cloud = np.clip((n - (0.5 - self.cloud_cover)) * 2.2, 0.0, 1.0)
        white = np.array([0.93, 0.93, 0.95]) * (0.85 + 0.15 * n[:, None])
        return mix(rgb, white, cloud * 0.85)


@dataclass
class GroundPaint:
    """Road (asphalt, lane markings), kerb and paved sidewalk as a function of the ground point:
    lateral position ``x`` and depth ``z`` in metres. Cell sizes grow with depth (never finer than about
    three pixels) so the far ground does not alias; that is still a fixed function of the world."""
    noise: Noise
    focal: float
    """Focal length in pixels: sets the pixel size in metres at each depth (for the cell sizes)."""
    camera_height: float
    """Nominal camera height, metres (fixed, so the texture is a fixed function of the ground)."""
    z_curb: float
    """Depth of the kerb: road before it, sidewalk behind."""
    z_centre: float
    """Depth of the dashed centre line."""
    z_shadow: float
    """Depth beyond which buildings shade the pavement."""
    shadow: float
    """Brightness factor in the shade, in (0, 1]."""
    asphalt: np.ndarray
    paving: np.ndarray
    marking: np.ndarray
    tile: float
    """Paving slab width along the street, metres."""

    def __call__(self, x: np.ndarray, z: np.ndarray) -> np.ndarray:
        rgb = np.empty(x.shape + (3,))
        road = z < self.z_curb
        rgb[road] = self._road(x[road], z[road])
        rgb[~road] = self._pavement(x[~road], z[~road])
        shade = 1.0 - (1.0 - self.shadow) * ramp(self.z_shadow - z, 3.0 * self._px_depth(z))
        return rgb * shade[:, None]

    def _px_depth(self, z: np.ndarray) -> np.ndarray:
        return z * z / (self.focal * self.camera_height)  # metres per pixel in depth

    def _road(self, x: np.ndarray, z: np.ndarray) -> np.ndarray:
        px_x, px_z = z / self.focal, self._px_depth(z)
        v = self.focal * self.camera_height / z  # nominal rows below the horizon: even steps in depth
        grain = self.noise(x / np.maximum(0.25, 5.0 * px_x), v / 5.0, octaves=2)  # finer octave ~2.5 px
        # asphalt: speckle about 3 pixels across (what optical flow locks onto) over faint patches
        speckle = self.noise(x / np.maximum(0.1, 3.0 * px_x) + 71.0, v / 3.0 + 13.0)
        rgb = self.asphalt * (1.0 + 0.15 * grain[:, None] + 0.3 * speckle[:, None])
        dash = ramp(np.abs(periodic(x, 9.0, 0.0)) - 1.5, px_x)  # 3 m dashes every 9 m
        centre = ramp(np.abs(z - self.z_centre) - np.maximum(0.08, 0.8 * px_z), px_z) * dash
        edge = ramp(np.abs(z - (self.z_curb - 0.45)) - np.maximum(0.07, 0.7 * px_z), px_z)
        return mix(rgb, self.marking, np.maximum(centre, edge) * 0.9)

    def _pavement(self, x: np.ndarray, z: np.ndarray) -> np.ndarray:
        px_x, px_z = z / self.focal, self._px_depth(z)
        v = self.focal * self.camera_height / z
        grain = self.noise(x / np.maximum(0.25, 5.0 * px_x), v / 5.0, octaves=2)
        # slabs: joints across the street every `tile` metres, along it every 6 nominal rows; each
        # slab's own brightness changes only under a joint, where the joint colour hides the step
        joints = np.maximum(ramp(np.abs(periodic(x, self.tile, 0.0)) - np.maximum(0.03, 0.5 * px_x), px_x),
                            ramp(np.abs(periodic(v, 6.0, 0.0)) - 0.5, 1.0))
        slab = self.noise.cell(np.floor(x / self.tile), np.floor(v / 6.0))
        rgb = self.paving * (1.0 + 0.08 * slab[:, None] + 0.10 * grain[:, None])
        rgb = mix(rgb, self.paving * 0.7, joints * 0.8)
        kerb = ramp(np.abs(z - (self.z_curb + 0.15)) - 0.15, px_z)
        return mix(rgb, np.array([0.78, 0.78, 0.76]) * (1.0 + 0.05 * grain[:, None]), kerb)
