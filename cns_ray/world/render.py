"""Pixels of the toy world: shapes as masks in object coordinates, fills, supersampled rendering (numpy only).

Object coordinates ``(u, v)`` run over [-1, 1] across the object's box (``v`` grows downwards). A shape is a
function of ``(u, v)`` returning a boolean mask; a fill maps ``(u, v)`` to RGB in [0, 1]. Rendering is at
``supersample`` x the resolution, then box-filtered, so edges are anti-aliased and the result is deterministic.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from cns_ray.errors import InputError
from cns_ray.world.scene import BACKGROUNDS, COLOURS, POSITIONS, SIZES, Scene

Mask = Callable[[np.ndarray, np.ndarray], np.ndarray]
Fill = Callable[[np.ndarray, np.ndarray], np.ndarray]  # -> [..., 3] in [0, 1]

BASE_RESOLUTION = 32


def _polygon(points: list[tuple[float, float]]) -> Mask:
    pts = np.asarray(points, dtype=np.float64)

    def mask(u, v):  # even-odd rule
        inside = np.zeros(u.shape, dtype=bool)
        for (x0, y0), (x1, y1) in zip(pts, np.roll(pts, -1, axis=0)):
            crosses = (y0 > v) != (y1 > v)
            with np.errstate(divide="ignore", invalid="ignore"):
                x_at = x0 + (v - y0) * (x1 - x0) / (y1 - y0)
            inside ^= crosses & (u < x_at)
        return inside

    return mask


def _star(n: int, inner: float) -> Mask:
    ang = -np.pi / 2 + np.arange(2 * n) * np.pi / n
    rad = np.where(np.arange(2 * n) % 2 == 0, 1.0, inner)
    return _polygon(list(zip(rad * np.cos(ang), rad * np.sin(ang))))


SHAPE_MASKS: dict[str, Mask] = {
    # the training world
    "circle": lambda u, v: u**2 + v**2 <= 1.0,
    "square": lambda u, v: (np.abs(u) <= 0.85) & (np.abs(v) <= 0.85),
    "triangle": _polygon([(0.0, -1.0), (1.0, 0.9), (-1.0, 0.9)]),
    "cross": lambda u, v: ((np.abs(u) <= 0.33) & (np.abs(v) <= 1.0)) | ((np.abs(v) <= 0.33) & (np.abs(u) <= 1.0)),
    # held-out subjects (never in the training world)
    "heart": lambda u, v: ((u**2 + (-v) ** 2 - 0.55) ** 3 - u**2 * (-v + 0.1) ** 3 * 1.2) <= 0,
    "star": _star(5, 0.45),
    "diamond": lambda u, v: np.abs(u) * 0.8 + np.abs(v) <= 1.0,
    "ring": lambda u, v: (u**2 + v**2 <= 1.0) & (u**2 + v**2 >= 0.3),
    "arrow": _polygon([(-1.0, -0.3), (0.1, -0.3), (0.1, -0.85), (1.0, 0.0), (0.1, 0.85), (0.1, 0.3), (-1.0, 0.3)]),
    "crescent": lambda u, v: (u**2 + v**2 <= 1.0) & ((u - 0.45) ** 2 + (v + 0.1) ** 2 >= 0.6),
    "hexagon": _polygon([(np.cos(a), np.sin(a)) for a in np.arange(6) * np.pi / 3]),
    "hourglass": _polygon([(-0.9, -1.0), (0.9, -1.0), (0.12, 0.0), (0.9, 1.0), (-0.9, 1.0), (-0.12, 0.0)]),
    "tee": lambda u, v: ((v <= -0.45) & (v >= -1.0) & (np.abs(u) <= 1.0)) | ((np.abs(u) <= 0.3) & (v >= -1.0) & (v <= 1.0)),
    "ell": lambda u, v: ((u >= -0.9) & (u <= -0.3) & (np.abs(v) <= 1.0)) | ((v >= 0.4) & (v <= 1.0) & (np.abs(u) <= 0.9)),
    "house": _polygon([(0.0, -1.0), (0.95, -0.1), (0.7, -0.1), (0.7, 1.0), (-0.7, 1.0), (-0.7, -0.1), (-0.95, -0.1)]),
    "bowtie": _polygon([(-1.0, -0.8), (0.0, -0.15), (1.0, -0.8), (1.0, 0.8), (0.0, 0.15), (-1.0, 0.8)]),
}


def rgb(name_or_rgb) -> np.ndarray:
    """A colour name of the world (object or background) or an (r, g, b) 0-255 triple -> [3] in [0, 1]."""
    if isinstance(name_or_rgb, str):
        table = {**COLOURS, **BACKGROUNDS}
        if name_or_rgb not in table:
            raise InputError(f"colour {name_or_rgb!r} is not one of {sorted(table)}")
        name_or_rgb = table[name_or_rgb]
    return np.asarray(name_or_rgb, dtype=np.float64) / 255.0


def plain(colour) -> Fill:
    c = rgb(colour)
    return lambda u, v: np.broadcast_to(c, (*u.shape, 3))


def striped(colour, bands: int = 5) -> Fill:
    """Horizontal bands alternating the colour and a dark shade of it."""
    c = rgb(colour)
    dark = c * 0.35

    def fill(u, v):
        on = (np.floor((v + 1.0) * bands / 2.0) % 2 == 0)[..., None]
        return np.where(on, c, dark)

    return fill


def two_tone(top, bottom) -> Fill:
    a, b = rgb(top), rgb(bottom)
    return lambda u, v: np.where((v < 0)[..., None], a, b)


def split_lr(left, right) -> Fill:
    a, b = rgb(left), rgb(right)
    return lambda u, v: np.where((u < 0)[..., None], a, b)


def checker(a, b, cells: int = 4) -> Fill:
    ca, cb = rgb(a), rgb(b)

    def fill(u, v):
        k = (np.floor((u + 1) * cells / 2) + np.floor((v + 1) * cells / 2)) % 2 == 0
        return np.where(k[..., None], ca, cb)

    return fill


def dotted(colour, dot, n: int = 3) -> Fill:
    c, d = rgb(colour), rgb(dot)

    def fill(u, v):
        fu, fv = ((u + 1) * n / 2) % 1 - 0.5, ((v + 1) * n / 2) % 1 - 0.5
        return np.where((fu**2 + fv**2 < 0.09)[..., None], d, c)

    return fill


def diagonal(a, b, bands: int = 4) -> Fill:
    ca, cb = rgb(a), rgb(b)
    return lambda u, v: np.where((np.floor((u + v + 2) * bands / 4) % 2 == 0)[..., None], ca, cb)


def rings(a, b, bands: int = 3) -> Fill:
    ca, cb = rgb(a), rgb(b)
    return lambda u, v: np.where((np.floor(np.sqrt(u**2 + v**2) * bands * 1.5) % 2 == 0)[..., None], ca, cb)


def render_object(
    mask: Mask,
    fill: Fill,
    centre: tuple[float, float],
    half: float,
    background,
    resolution: int = BASE_RESOLUTION,
    supersample: int = 4,
) -> np.ndarray:
    """One object on a plain background: uint8 [H, W, 3]. ``centre`` and ``half`` are in pixels at 32x32."""
    if resolution < 8:
        raise InputError(f"resolution={resolution} must be >= 8")
    s = resolution * supersample
    scale = resolution / BASE_RESOLUTION
    coords = (np.arange(s) + 0.5) / supersample / scale  # pixel centres in 32x32 units
    y, x = np.meshgrid(coords, coords, indexing="ij")  # [s, s]
    u, v = (x - centre[0]) / half, (y - centre[1]) / half
    inside = mask(u, v)[..., None]  # [s, s, 1]
    img = np.where(inside, fill(u, v), rgb(background))  # [s, s, 3]
    img = img.reshape(resolution, supersample, resolution, supersample, 3).mean(axis=(1, 3))
    return np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)


def scene_geometry(scene: Scene) -> tuple[tuple[float, float], float]:
    """(centre, half-extent) in 32x32 pixel units."""
    cx = POSITIONS[scene.position] * BASE_RESOLUTION + scene.jitter[0]
    cy = 0.5 * BASE_RESOLUTION + scene.jitter[1]
    return (cx, cy), SIZES[scene.size]


def render_scene(scene: Scene, resolution: int = BASE_RESOLUTION, fill: Fill | None = None) -> np.ndarray:
    """Pixels of a world scene (uint8 [H, W, 3]); ``fill`` overrides the scene's colour/texture (concepts)."""
    if scene.shape not in SHAPE_MASKS:
        raise InputError(f"shape {scene.shape!r} is not one of {sorted(SHAPE_MASKS)}")
    if fill is None:
        fill = plain(scene.colour) if scene.texture == "plain" else striped(scene.colour)
    centre, half = scene_geometry(scene)
    return render_object(SHAPE_MASKS[scene.shape], fill, centre, half, scene.background, resolution)
