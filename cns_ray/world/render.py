"""Pixels of the toy world v2: class shapes as masks in object coordinates, pattern fills, markings, supersampled
rendering (numpy only).

Object coordinates ``(u, v)`` run over [-1, 1] across the object's box (``v`` grows downwards). A shape is a
function of ``(u, v)`` returning a boolean mask; a fill maps ``(u, v)`` to RGB in [0, 1]; a marking is a mask drawn
over the fill in its own colour. Rendering is at ``supersample`` x the resolution, then box-filtered, so edges are
anti-aliased and the result is deterministic.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from cns_ray.errors import InputError
from cns_ray.world.scene import BACKGROUNDS, COLOURS, PAIR_POSITIONS, POSITIONS, SIZES, Look, Obj, Scene

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


SHAPE_MASKS: dict[str, Mask] = {
    "circle": lambda u, v: u**2 + v**2 <= 1.0,
    "square": lambda u, v: (np.abs(u) <= 0.85) & (np.abs(v) <= 0.85),
    "triangle": _polygon([(0.0, -1.0), (1.0, 0.9), (-1.0, 0.9)]),
    "cross": lambda u, v: ((np.abs(u) <= 0.36) & (np.abs(v) <= 1.0)) | ((np.abs(v) <= 0.36) & (np.abs(u) <= 1.0)),
}


def rgb(name_or_rgb) -> np.ndarray:
    """A colour name of the world (object or background) or an (r, g, b) 0-255 triple -> [3] in [0, 1]."""
    if isinstance(name_or_rgb, str):
        table = {**COLOURS, **BACKGROUNDS}
        if name_or_rgb not in table:
            raise InputError(f"colour {name_or_rgb!r} is not one of {sorted(table)}")
        name_or_rgb = table[name_or_rgb]
    return np.asarray(name_or_rgb, dtype=np.float64) / 255.0


def _two(cond: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.where(cond[..., None], a, b)


def pattern_fill(pattern: str, colour: str, colour2: str | None) -> Fill:
    """The fill of a pattern: ``colour`` is the body, ``colour2`` the pattern's second colour."""
    a = rgb(colour)
    if pattern == "plain":
        return lambda u, v: np.broadcast_to(a, (*u.shape, 3))
    b = rgb(colour2)
    if pattern == "striped":  # 4 horizontal bands, body colour first
        return lambda u, v: _two(np.floor((v + 1.0) * 2.0) % 2 == 0, a, b)
    if pattern == "two-tone":  # top body, bottom second
        return lambda u, v: _two(v < 0, a, b)
    if pattern == "split":  # left body, right second
        return lambda u, v: _two(u < 0, a, b)
    if pattern == "dotted":  # dots of the second colour on a 3x3 grid (centre, arms, corners: every class shows some)
        def dotted(u, v):
            fu, fv = u - np.round(u / 0.66) * 0.66, v - np.round(v / 0.66) * 0.66
            return _two(fu**2 + fv**2 >= 0.22**2, a, b)
        return dotted
    if pattern == "checkered":  # 3x3 cells
        return lambda u, v: _two((np.floor((u + 1) * 1.5) + np.floor((v + 1) * 1.5)) % 2 == 0, a, b)
    raise InputError(f"pattern {pattern!r} is not a world pattern")


def _eroded(mask: Mask, r: float) -> Mask:
    """Points of ``mask`` whose disc of radius ``r`` (object units, 8 directions) is inside it."""
    dirs = [(np.cos(a) * r, np.sin(a) * r) for a in np.arange(8) * np.pi / 4]

    def inner(u, v):
        out = mask(u, v)
        for du, dv in dirs:
            out &= mask(u + du, v + dv)
        return out

    return inner


def marking_mask(marking: str, shape: Mask) -> Mask:
    """Where a marking is drawn, within the object's shape."""
    if marking == "outline":
        inner = _eroded(shape, 0.3)
        return lambda u, v: shape(u, v) & ~inner(u, v)
    if marking == "dot":
        return lambda u, v: u**2 + v**2 <= 0.36**2
    if marking == "bar":  # vertical bar through the centre
        return lambda u, v: shape(u, v) & (np.abs(u) <= 0.2)
    raise InputError(f"marking {marking!r} is not a world marking")


def look_fill(shape: str, look: Look) -> Fill:
    """The pattern with the marking drawn over it."""
    base = pattern_fill(look.pattern, look.colour, look.colour2)
    if look.marking == "none":
        return base
    mark, mc = marking_mask(look.marking, SHAPE_MASKS[shape]), rgb(look.marking_colour)
    return lambda u, v: _two(mark(u, v), mc, base(u, v))


def _grid(resolution: int, supersample: int) -> tuple[np.ndarray, np.ndarray]:
    s = resolution * supersample
    coords = (np.arange(s) + 0.5) / supersample / (resolution / BASE_RESOLUTION)  # pixel centres in 32x32 units
    return np.meshgrid(coords, coords, indexing="ij")  # y, x: [s, s]


def _downsample(img: np.ndarray, resolution: int, supersample: int) -> np.ndarray:
    img = img.reshape(resolution, supersample, resolution, supersample, 3).mean(axis=(1, 3))
    return np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)


def draw(canvas: np.ndarray, grid, mask: Mask, fill: Fill, centre: tuple[float, float], half: float) -> None:
    """Paint one object into a supersampled canvas [s, s, 3] (in place)."""
    y, x = grid
    u, v = (x - centre[0]) / half, (y - centre[1]) / half
    inside = mask(u, v)
    canvas[inside] = fill(u[inside], v[inside])


def object_geometry(o: Obj, n_objects: int) -> tuple[tuple[float, float], float]:
    """(centre, half-extent) in 32x32 pixel units."""
    frac = PAIR_POSITIONS[o.position] if n_objects == 2 else POSITIONS[o.position]
    return (frac * BASE_RESOLUTION + o.jitter[0], 0.5 * BASE_RESOLUTION + o.jitter[1]), SIZES[o.size]


def render_scene(scene: Scene, resolution: int = BASE_RESOLUTION, supersample: int = 4) -> np.ndarray:
    """Pixels of a world scene: uint8 [H, W, 3]."""
    if resolution < 8:
        raise InputError(f"resolution={resolution} must be >= 8")
    grid = _grid(resolution, supersample)
    canvas = np.empty((*grid[0].shape, 3))
    canvas[...] = rgb(scene.background)
    for o in scene.objects:
        centre, half = object_geometry(o, len(scene.objects))
        draw(canvas, grid, SHAPE_MASKS[o.shape], look_fill(o.shape, o.look), centre, half)
    return _downsample(canvas, resolution, supersample)


def object_region(scene: Scene, index: int, resolution: int = BASE_RESOLUTION, supersample: int = 4) -> np.ndarray:
    """Coverage of object ``index`` (its shape's mask, area-weighted): float [H, W] in [0, 1]."""
    grid = _grid(resolution, supersample)
    o = scene.objects[index]
    centre, half = object_geometry(o, len(scene.objects))
    y, x = grid
    m = SHAPE_MASKS[o.shape]((x - centre[0]) / half, (y - centre[1]) / half).astype(np.float64)
    return m.reshape(resolution, supersample, resolution, supersample).mean(axis=(1, 3))
