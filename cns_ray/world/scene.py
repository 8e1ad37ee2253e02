"""Scene descriptions of the toy world v2 and their captions (no pixels here: see :mod:`cns_ray.world.render`).

A scene is one or two objects on a plain background. An object belongs to a known class (its shape, named by its
class word: ``circle``, ``square``, ...) and has a look composed of parts: a body colour, a pattern (plain,
striped, two-tone, ...) with a second colour, and an optional marking (outline, centre dot, bar) with its colour.
One-object scenes also have a size and a position (left, center, right); two-object scenes hold two small objects,
at the left and at the right.

The caption is derived from the scene alone. In training, words of the look are dropped independently
(:class:`Dropout`: the colour words, the pattern word, the marking phrase; the class word is always kept), so that
``a large circle at the left on a grey background`` is in distribution and the base's class prior is a real floor.
:func:`parse_caption` inverts every caption :func:`caption` writes (with or without dropped words), so a test can
check caption <-> scene without pixels.

    a large striped red and blue circle with a yellow dot at the left on a grey background
    a small plain green square at the left and a small two-tone orange and white cross at the right on a black background
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from cns_ray.errors import InputError

CLASSES = ("circle", "square", "triangle", "cross")
"""Known classes: each is a shape and its own class word."""
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 230),
    "yellow": (240, 220, 40),
    "purple": (150, 60, 200),
    "orange": (250, 140, 20),
    "white": (245, 245, 245),
}
"""Colours of bodies, second pattern colours and markings (0-255 RGB)."""
BODY_COLOURS = ("red", "green", "blue", "yellow", "purple", "orange")
PATTERNS = ("plain", "striped", "two-tone", "split", "dotted", "checkered")
"""Every pattern but ``plain`` uses a second colour."""
MARKINGS = ("none", "outline", "dot", "bar")
"""``none`` or a marking drawn over the pattern in its own colour."""
SIZES = {"small": 6.0, "large": 10.0}
"""Half-extent of the object in pixels at 32x32 (scaled with the resolution)."""
POSITIONS = {"left": 0.33, "center": 0.5, "right": 0.67}
"""Horizontal centre of a one-object scene's object as a fraction of the width (vertically centred)."""
PAIR_POSITIONS = {"left": 0.27, "right": 0.73}
"""Centres of the two (small) objects of a two-object scene."""
BACKGROUNDS = {
    "white": (235, 235, 235),
    "black": (20, 20, 20),
    "grey": (128, 128, 128),
    "brown": (110, 70, 35),
}


@dataclass(frozen=True)
class Look:
    """What an object looks like, apart from its class: body colour, pattern (+ second colour), marking (+ colour)."""

    colour: str
    pattern: str = "plain"
    colour2: str | None = None
    marking: str = "none"
    marking_colour: str | None = None

    def problems(self) -> list[str]:
        out = []
        if self.colour not in BODY_COLOURS:
            out.append(f"colour={self.colour!r} is not one of {list(BODY_COLOURS)}")
        if self.pattern not in PATTERNS:
            out.append(f"pattern={self.pattern!r} is not one of {list(PATTERNS)}")
        elif self.pattern == "plain" and self.colour2 is not None:
            out.append(f"pattern 'plain' takes no second colour (got colour2={self.colour2!r})")
        elif self.pattern != "plain" and (self.colour2 not in COLOURS or self.colour2 == self.colour):
            out.append(f"pattern {self.pattern!r} needs a second colour other than {self.colour!r} from "
                       f"{list(COLOURS)} (got colour2={self.colour2!r})")
        if self.marking not in MARKINGS:
            out.append(f"marking={self.marking!r} is not one of {list(MARKINGS)}")
        elif self.marking == "none" and self.marking_colour is not None:
            out.append(f"marking 'none' takes no colour (got marking_colour={self.marking_colour!r})")
        elif self.marking != "none" and (self.marking_colour not in COLOURS or self.marking_colour == self.colour):
            out.append(f"marking {self.marking!r} needs a colour other than the body's {self.colour!r} from "
                       f"{list(COLOURS)} (got marking_colour={self.marking_colour!r})")
        return out

    def key(self) -> str:
        return f"{self.colour}/{self.pattern}/{self.colour2}/{self.marking}/{self.marking_colour}"


@dataclass(frozen=True)
class Obj:
    """One object of a scene: its class (shape), look, size and position."""

    shape: str
    look: Look
    size: str = "small"
    position: str = "center"
    jitter: tuple[float, float] = (0.0, 0.0)

    def instance(self) -> tuple[str, Look]:
        """What makes the object a specific instance (class + look), whatever its context."""
        return self.shape, self.look


@dataclass(frozen=True)
class Scene:
    """One object, or two small objects at the left and the right, on a background."""

    objects: tuple[Obj, ...]
    background: str

    def __post_init__(self) -> None:
        problems = []
        if len(self.objects) not in (1, 2):
            problems.append(f"a scene holds 1 or 2 objects (got {len(self.objects)})")
        for i, o in enumerate(self.objects):
            where = f"object {i}: "
            if o.shape not in CLASSES:
                problems.append(f"{where}shape={o.shape!r} is not one of {list(CLASSES)}")
            problems += [where + p for p in o.look.problems()]
            if o.size not in SIZES:
                problems.append(f"{where}size={o.size!r} is not one of {list(SIZES)}")
            if o.position not in POSITIONS:
                problems.append(f"{where}position={o.position!r} is not one of {list(POSITIONS)}")
        if len(self.objects) == 2 and [(o.size, o.position) for o in self.objects] != [("small", "left"), ("small", "right")]:
            problems.append("a two-object scene holds a small object at the left, then a small object at the right")
        if self.background not in BACKGROUNDS:
            problems.append(f"background={self.background!r} is not one of {list(BACKGROUNDS)}")
        if problems:
            raise InputError("invalid scene: " + "; ".join(problems))

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Dropout:
    """Which groups of look words a caption leaves out (the class word is always kept)."""

    colour: bool = False
    pattern: bool = False
    marking: bool = False


FULL = Dropout()
ALL_DROPPED = Dropout(True, True, True)


@dataclass(frozen=True)
class DropoutRates:
    """Per-object, independent probability of dropping each group of look words from a training caption."""

    colour: float = 0.25
    pattern: float = 0.25
    marking: float = 0.25

    def sample(self, rng: np.random.Generator) -> Dropout:
        u = rng.random(3)
        return Dropout(bool(u[0] < self.colour), bool(u[1] < self.pattern), bool(u[2] < self.marking))


def object_phrase(o: Obj, drop: Dropout = FULL, subject: str | None = None) -> str:
    """``small striped red and blue circle with a yellow dot at the left`` (without the leading article).

    ``subject`` goes right before the class word (a placeholder token, e.g. ``<k> circle``)."""
    lk = o.look
    words = [o.size]
    if not drop.pattern:
        words.append(lk.pattern)
    if not drop.colour:
        words += [lk.colour] if lk.colour2 is None else [lk.colour, "and", lk.colour2]
    if subject:
        words.append(subject)
    words.append(o.shape)
    if lk.marking != "none" and not drop.marking:
        words += ["with a", lk.marking_colour, lk.marking]
    words += ["at the", o.position]
    return " ".join(words)


def caption(scene: Scene, drops: tuple[Dropout, ...] | Dropout = FULL, subjects: tuple[str | None, ...] | None = None) -> str:
    """The caption of ``scene``; ``drops`` per object (or one for all); ``subjects`` per object: a placeholder
    token placed before that object's class word."""
    n = len(scene.objects)
    drops = (drops,) * n if isinstance(drops, Dropout) else tuple(drops)
    subjects = subjects or (None,) * n
    phrases = [object_phrase(o, d, s) for o, d, s in zip(scene.objects, drops, subjects)]
    return "a " + " and a ".join(phrases) + f" on a {scene.background} background"


def parse_caption(text: str) -> dict:
    """Inverse of :func:`caption`: ``{"objects": [{word fields}], "background": ...}``; a field whose words were
    dropped is absent. A placeholder-like word (``<...>``) before the class word is returned as ``subject``.
    Raises :class:`InputError` naming the word at fault."""
    words = text.strip().split()
    pos = 0

    def fail(expected: str):
        got = words[pos] if pos < len(words) else "<end>"
        raise InputError(f"caption {text!r} is not a world caption: expected {expected} at word {pos + 1}, got {got!r} "
                         "(form: 'a <size> [pattern] [colours] <class> [with a <colour> <marking>] at the <position> "
                         "[and a ...] on a <background> background')")

    def take(expected: str, allowed) -> str:
        nonlocal pos
        if pos >= len(words) or words[pos] not in allowed:
            fail(expected)
        pos += 1
        return words[pos - 1]

    def peek() -> str | None:
        return words[pos] if pos < len(words) else None

    objects = []
    take("'a'", {"a"})
    while True:
        o: dict = {"size": take("a size", SIZES)}
        if peek() in PATTERNS:
            o["pattern"] = take("a pattern", PATTERNS)
        if peek() in COLOURS:
            o["colour"] = take("a colour", COLOURS)
            if peek() == "and":
                take("'and'", {"and"})
                o["colour2"] = take("a second colour", COLOURS)
        if peek() is not None and peek().startswith("<") and peek().endswith(">"):
            o["subject"] = words[pos]
            pos += 1
        o["shape"] = take("a class word", CLASSES)
        if peek() == "with":
            take("'with'", {"with"}), take("'a'", {"a"})
            o["marking_colour"] = take("a marking colour", COLOURS)
            o["marking"] = take("a marking", set(MARKINGS) - {"none"})
        take("'at'", {"at"}), take("'the'", {"the"})
        o["position"] = take("a position", POSITIONS)
        objects.append(o)
        if peek() == "and":
            take("'and'", {"and"}), take("'a'", {"a"})
            continue
        break
    take("'on'", {"on"}), take("'a'", {"a"})
    background = take("a background", BACKGROUNDS)
    take("'background'", {"background"})
    if pos != len(words):
        fail("the end of the caption")
    return {"objects": objects, "background": background}


def look_fields(look: Look) -> dict:
    """The caption fields of a look (what :func:`parse_caption` returns for a full caption)."""
    out = {"pattern": look.pattern, "colour": look.colour}
    if look.colour2 is not None:
        out["colour2"] = look.colour2
    if look.marking != "none":
        out["marking"], out["marking_colour"] = look.marking, look.marking_colour
    return out


def all_looks() -> list[Look]:
    """Every look of the world, in a fixed order (6 colours x 26 patterns x 19 markings)."""
    out = []
    for c in BODY_COLOURS:
        patterns = [("plain", None)] + [(p, c2) for p in PATTERNS[1:] for c2 in COLOURS if c2 != c]
        markings = [("none", None)] + [(m, mc) for m in MARKINGS[1:] for mc in COLOURS if mc != c]
        out += [Look(c, p, c2, m, mc) for p, c2 in patterns for m, mc in markings]
    return out


def is_held_out(shape: str, look: Look) -> bool:
    """Instances reserved for concepts (about 1 in 8): never rendered in base or metric training.

    A fixed hash of the instance, so every process agrees without a table."""
    import zlib

    return zlib.crc32(f"{shape}|{look.key()}".encode()) % 8 == 0


def random_look(rng: np.random.Generator, p_plain: float = 0.25, p_marking: float = 0.5) -> Look:
    c = BODY_COLOURS[int(rng.integers(len(BODY_COLOURS)))]
    others = [k for k in COLOURS if k != c]
    if rng.random() < p_plain:
        pattern, c2 = "plain", None
    else:
        pattern, c2 = PATTERNS[1 + int(rng.integers(len(PATTERNS) - 1))], others[int(rng.integers(len(others)))]
    if rng.random() < p_marking:
        marking, mc = MARKINGS[1 + int(rng.integers(len(MARKINGS) - 1))], others[int(rng.integers(len(others)))]
    else:
        marking, mc = "none", None
    return Look(c, pattern, c2, marking, mc)


def _jitter(rng: np.random.Generator, amount: float) -> tuple[float, float]:
    return float(rng.uniform(-amount, amount)), float(rng.uniform(-amount, amount))


def sample_object(rng: np.random.Generator, size: str | None = None, position: str | None = None,
                  allow_held_out: bool = False) -> Obj:
    """A random object; held-out instances are re-drawn unless ``allow_held_out``."""
    while True:
        shape = CLASSES[int(rng.integers(len(CLASSES)))]
        look = random_look(rng)
        if allow_held_out or not is_held_out(shape, look):
            break
    size = size or list(SIZES)[int(rng.integers(len(SIZES)))]
    position = position or list(POSITIONS)[int(rng.integers(len(POSITIONS)))]
    return Obj(shape, look, size, position, _jitter(rng, 1.5 if position == "center" or size == "small" else 1.0))


@dataclass(frozen=True)
class WorldSpec:
    """How the training world is sampled."""

    p_two: float = 0.45
    """Fraction of two-object scenes."""
    dropout: DropoutRates = field(default_factory=DropoutRates)


def sample_scene(rng: np.random.Generator, spec: WorldSpec = WorldSpec(), allow_held_out: bool = False) -> Scene:
    """A random training scene (never a held-out instance unless ``allow_held_out``)."""
    bg = list(BACKGROUNDS)[int(rng.integers(len(BACKGROUNDS)))]
    if rng.random() < spec.p_two:
        objs = (sample_object(rng, "small", "left", allow_held_out), sample_object(rng, "small", "right", allow_held_out))
    else:
        objs = (sample_object(rng, allow_held_out=allow_held_out),)
    return Scene(objs, bg)


def sample_scenes(n: int, seed: int, spec: WorldSpec = WorldSpec(), allow_held_out: bool = False) -> list[Scene]:
    """``n`` scenes, deterministic from ``seed``."""
    if n < 0:
        raise InputError(f"n={n} must be >= 0")
    rng = np.random.default_rng(seed)
    return [sample_scene(rng, spec, allow_held_out) for _ in range(n)]


def sample_caption(scene: Scene, rng: np.random.Generator, rates: DropoutRates = DropoutRates()) -> str:
    """A training caption of ``scene`` with look words dropped at ``rates`` (per object, independently)."""
    return caption(scene, tuple(rates.sample(rng) for _ in scene.objects))


def all_words() -> list[str]:
    """Every word a world caption can contain (for the tokenizers' corpora)."""
    words = {"a", "and", "with", "at", "the", "on", "background"}
    for group in (CLASSES, COLOURS, PATTERNS, MARKINGS[1:], SIZES, POSITIONS, BACKGROUNDS):
        words.update(group)
    return sorted(words)
