"""Scene descriptions of the toy world and their captions (no pixels here: see :mod:`cns_ray.world.render`).

A scene is one object (shape, colour, size, texture, position) on a plain background. The caption is derived from
the scene description alone, and :func:`parse_caption` inverts it, so a test can check caption <-> scene without
looking at pixels.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

import numpy as np

from cns_ray.errors import InputError

SHAPES = ("circle", "square", "triangle", "cross")
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 230),
    "yellow": (240, 220, 40),
    "purple": (150, 60, 200),
    "orange": (250, 140, 20),
}
SIZES = {"small": 6.0, "large": 10.0}
"""Half-extent of the object in pixels at 32x32 (scaled with the resolution)."""
TEXTURES = ("plain", "striped")
POSITIONS = {"left": 0.33, "center": 0.5, "right": 0.67}
"""Horizontal centre of the object as a fraction of the width (vertically centred)."""
BACKGROUNDS = {
    "white": (235, 235, 235),
    "black": (20, 20, 20),
    "grey": (128, 128, 128),
    "brown": (110, 70, 35),
}
CLASS_WORD = "shape"
"""Every caption names its object '... <shape name> shape ...'; held-out concepts use it as their class word."""

_CAPTION_RE = re.compile(
    r"^a (?P<size>\w+) (?P<texture>\w+) (?P<colour>\w+) (?P<subject>\S+) shape at the (?P<position>\w+) "
    r"on a (?P<background>\w+) background$"
)


@dataclass(frozen=True)
class Scene:
    """One object on a background. ``jitter`` is the object's sub-position offset in pixels at 32x32."""

    shape: str
    colour: str
    size: str
    texture: str
    position: str
    background: str
    jitter: tuple[float, float] = (0.0, 0.0)

    def __post_init__(self) -> None:
        problems = []
        for field, value, allowed in (
            ("colour", self.colour, COLOURS),
            ("size", self.size, SIZES),
            ("texture", self.texture, TEXTURES),
            ("position", self.position, POSITIONS),
            ("background", self.background, BACKGROUNDS),
        ):
            if value not in allowed:
                problems.append(f"{field}={value!r} is not one of {sorted(allowed)}")
        if problems:
            raise InputError("invalid scene: " + "; ".join(problems))

    def to_dict(self) -> dict:
        return asdict(self)


def caption(scene: Scene, subject: str | None = None) -> str:
    """The caption of ``scene``; ``subject`` replaces the shape name (e.g. a placeholder token or nothing)."""
    subj = scene.shape if subject is None else subject
    words = ["a", scene.size, scene.texture, scene.colour, subj, CLASS_WORD, "at the", scene.position,
             "on a", scene.background, "background"]
    return " ".join(w for w in words if w)


def parse_caption(text: str) -> dict[str, str]:
    """Inverse of :func:`caption`: attribute name -> word. Raises InputError on a caption of another form."""
    m = _CAPTION_RE.match(text.strip())
    if m is None:
        raise InputError(f"caption {text!r} is not a world caption ('a <size> <texture> <colour> <shape> shape at the ...')")
    d = m.groupdict()
    d["shape"] = d.pop("subject")
    return d


def sample_scene(rng: np.random.Generator, shapes: tuple[str, ...] = SHAPES) -> Scene:
    """A uniformly random scene over the world's attributes (``shapes`` may name held-out shapes too)."""

    def pick(options):
        keys = list(options)
        return keys[int(rng.integers(len(keys)))]

    jitter = (float(rng.uniform(-1.5, 1.5)), float(rng.uniform(-1.5, 1.5)))
    return Scene(
        shape=pick(shapes),
        colour=pick(COLOURS),
        size=pick(SIZES),
        texture=pick(TEXTURES),
        position=pick(POSITIONS),
        background=pick(BACKGROUNDS),
        jitter=jitter,
    )


def sample_scenes(n: int, seed: int, shapes: tuple[str, ...] = SHAPES) -> list[Scene]:
    """``n`` scenes, deterministic from ``seed``."""
    if n < 0:
        raise InputError(f"n={n} must be >= 0")
    rng = np.random.default_rng(seed)
    return [sample_scene(rng, shapes) for _ in range(n)]


def all_words() -> list[str]:
    """Every word a world caption can contain (for the tokenizer's corpus)."""
    words = {"a", "at", "the", "on", "background", CLASS_WORD}
    for group in (SHAPES, COLOURS, SIZES, TEXTURES, POSITIONS, BACKGROUNDS):
        words.update(group)
    return sorted(words)
