"""Concepts of the toy world v2: specific instances of known classes, as a user would bring them.

A concept is an instance (a class and a look: body colour, pattern, marking) that base training never rendered
(:func:`cns_ray.world.scene.is_held_out`), named like a pet (``<rex>``) and captioned as a user would caption it:
the placeholder before the class word, no look words (``a large <rex> circle at the left on a grey background``).
Its floor is the base drawing the class-word prompt (``a large circle at ...``), its ceiling the base drawing the
full caption (``a large striped red and blue circle with a yellow dot at ...``) and the rendered references.

Sequences (learned continually, in order) hold same-class pairs, so a later concept of a class must not overwrite
an earlier one of that class.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cns_ray.errors import InputError
from cns_ray.world import render
from cns_ray.world.scene import (
    ALL_DROPPED,
    BACKGROUNDS,
    BODY_COLOURS,
    FULL,
    POSITIONS,
    SIZES,
    Look,
    Obj,
    Scene,
    all_looks,
    caption,
    is_held_out,
)


@dataclass(frozen=True)
class Concept:
    """A held-out instance with a name; ``token`` is its placeholder and ``class_word`` its class."""

    name: str
    shape: str
    look: Look

    @property
    def token(self) -> str:
        return f"<{self.name}>"

    @property
    def class_word(self) -> str:
        return self.shape

    def describe(self) -> str:
        """The look in caption words, e.g. 'striped red and blue circle with a yellow dot'."""
        return caption(Scene((Obj(self.shape, self.look, "small", "center"),), "grey")).removeprefix("a small ").split(" at the ")[0]


def _c(name: str, shape: str, colour: str, pattern: str = "plain", colour2: str | None = None,
       marking: str = "none", marking_colour: str | None = None) -> Concept:
    return Concept(name, shape, Look(colour, pattern, colour2, marking, marking_colour))


CONCEPTS: tuple[Concept, ...] = (
    # seq1
    _c("rex", "circle", "red", "striped", "yellow", "dot", "green"),
    _c("mia", "square", "green", "two-tone", "red", "none", None),
    _c("zed", "circle", "green", "split", "yellow", "outline", "orange"),
    _c("ivo", "triangle", "orange", "plain", None, "bar", "blue"),
    _c("kit", "cross", "orange", "checkered", "blue", "none", None),
    _c("uma", "square", "yellow", "dotted", "blue", "outline", "red"),
    # seq2
    _c("bo", "triangle", "purple", "striped", "green", "none", None),
    _c("lu", "cross", "yellow", "two-tone", "red", "dot", "green"),
    _c("tam", "triangle", "red", "split", "white", "outline", "yellow"),
    _c("oli", "circle", "red", "dotted", "blue", "none", None),
    _c("pip", "square", "red", "plain", None, "dot", "purple"),
    _c("gus", "cross", "orange", "striped", "purple", "outline", "red"),
    # seq3
    _c("ada", "square", "blue", "checkered", "green", "none", None),
    _c("ben", "circle", "purple", "plain", None, "outline", "yellow"),
    _c("cy", "square", "purple", "split", "green", "bar", "white"),
    _c("dot", "cross", "green", "dotted", "yellow", "none", None),
    _c("eve", "triangle", "yellow", "two-tone", "blue", "dot", "orange"),
    _c("fox", "circle", "orange", "checkered", "blue", "bar", "green"),
)
SEQUENCES: dict[str, tuple[str, ...]] = {
    "seq1": ("rex", "mia", "zed", "ivo", "kit", "uma"),
    "seq2": ("bo", "lu", "tam", "oli", "pip", "gus"),
    "seq3": ("ada", "ben", "cy", "dot", "eve", "fox"),
}


def _problems() -> list[str]:
    out = []
    for c in CONCEPTS:
        out += [f"concept {c.name}: {p}" for p in c.look.problems()]
        if not is_held_out(c.shape, c.look):
            out.append(f"concept {c.name} ({c.shape} {c.look.key()}) is not a held-out instance")
    return out


def get_concept(name: str) -> Concept:
    for c in CONCEPTS:
        if c.name == name:
            return c
    raise InputError(f"unknown concept {name!r}: known concepts are {[c.name for c in CONCEPTS]}")


def held_out_instances() -> list[tuple[str, Look]]:
    """Every held-out (class, look) of the world, in a fixed order (about 1,500)."""
    from cns_ray.world.scene import CLASSES

    return [(s, lk) for s in CLASSES for lk in all_looks() if is_held_out(s, lk)]


def library_concepts(n: int, seed: int = 0) -> list[Concept]:
    """``n`` held-out instances other than the named concepts (a concept library), named ``lib{i:04d}``."""
    named = {(c.shape, c.look) for c in CONCEPTS}
    pool = [x for x in held_out_instances() if x not in named]
    if not 1 <= n <= len(pool):
        raise InputError(f"n={n} library concepts must be in [1, {len(pool)}] (the held-out instances left)")
    order = np.random.default_rng(seed).permutation(len(pool))[:n]
    return [Concept(f"lib{i:04d}", *pool[int(j)]) for i, j in enumerate(order)]


def user_caption(size: str, token: str | None, class_word: str, position: str, background: str) -> str:
    """A concept prompt as a user writes it: the placeholder before the class word, no look words."""
    words = ["a", size, token, class_word, "at the", position, "on a", background, "background"]
    return " ".join(w for w in words if w)


def class_prompt(prompt: str, tokens: list[str]) -> str:
    """The prompt with each placeholder removed, leaving its class word (the floor's prompt)."""
    for t in tokens:
        prompt = prompt.replace(f"{t} ", "").replace(t, "")
    return " ".join(prompt.split())


def full_prompt(prompt: str, concepts: list[Concept]) -> str:
    """The prompt with each placeholder + class word replaced by the concept's look in words (the ceiling's prompt)."""
    for c in concepts:
        prompt = prompt.replace(f"{c.token} {c.shape}", c.describe())
    return prompt


def concept_scene(concept: Concept, size: str, position: str, background: str,
                  jitter: tuple[float, float] = (0.0, 0.0)) -> Scene:
    return Scene((Obj(concept.shape, concept.look, size, position, jitter),), background)


def reference_scenes(concept: Concept, n: int = 6, seed: int = 0) -> list[Scene]:
    """``n`` varied contexts (size, position, background), deterministic from (concept, seed)."""
    if not 1 <= n <= 24:
        raise InputError(f"n={n} reference images must be in [1, 24] (the distinct contexts)")
    rng = np.random.default_rng([seed, sum(map(ord, concept.name))])
    combos = [(s, p, b) for s in SIZES for p in POSITIONS for b in BACKGROUNDS]
    out = []
    for i in rng.permutation(len(combos))[:n]:
        size, pos, bg = combos[int(i)]
        jitter = (float(rng.uniform(-1.5, 1.5)), float(rng.uniform(-1.5, 1.5)))
        out.append(concept_scene(concept, size, pos, bg, jitter))
    return out


def render_concept(concept: Concept, scene: Scene, resolution: int = render.BASE_RESOLUTION) -> np.ndarray:
    """The concept drawn in ``scene``'s context (the scene's objects are replaced by the concept)."""
    objs = tuple(Obj(concept.shape, concept.look, o.size, o.position, o.jitter) for o in scene.objects)
    return render.render_scene(Scene(objs, scene.background), resolution)


def partner_looks(concept: Concept) -> list[Look]:
    """Plain looks of ``concept``'s class in colours the concept does not use, which the base draws from their
    caption (never held out): the described partners of its two-object references."""
    used = {concept.look.colour, concept.look.colour2, concept.look.marking_colour}
    looks = [Look(c, "plain") for c in BODY_COLOURS if c not in used]
    return [lk for lk in looks if not is_held_out(concept.shape, lk)]


def pair_reference_scenes(concept: Concept, n: int, seed: int = 0) -> list[tuple[Scene, int]]:
    """``n`` two-object contexts: the concept (small) beside a described partner of its class
    (:func:`partner_looks`), the concept alternately at the right and at the left; with the concept's index in the
    scene's objects. Deterministic from (concept, seed); backgrounds never the partner's colour."""
    if not 0 <= n <= 24:
        raise InputError(f"pairs={n} two-object references must be in [0, 24]")
    partners = partner_looks(concept)
    if n and not partners:
        raise InputError(f"concept {concept.name!r} uses every colour: no plain partner to pair it with; use pairs=0")
    rng = np.random.default_rng([seed, sum(map(ord, concept.name)), 2])
    out = []
    for j in range(n):
        partner = partners[int(rng.integers(len(partners)))]
        bgs = [b for b in BACKGROUNDS if b != partner.colour]
        bg = bgs[int(rng.integers(len(bgs)))]
        mine, other = Obj(concept.shape, concept.look, "small", "right"), Obj(concept.shape, partner, "small", "left")
        if j % 2 == 1:
            mine, other = Obj(concept.shape, concept.look, "small", "left"), Obj(concept.shape, partner, "small", "right")
            out.append((Scene((mine, other), bg), 0))
        else:
            out.append((Scene((other, mine), bg), 1))
    return out


def reference_set(concept: Concept, n: int = 6, seed: int = 0, resolution: int = render.BASE_RESOLUTION,
                  pairs: int = 0):
    """(images uint8 [n + pairs, H, W, 3], user captions with the placeholder token, the scenes): ``n`` one-object
    contexts, then ``pairs`` two-object ones (:func:`pair_reference_scenes`), captioned as a user would caption a
    photo of the concept beside another object (``a small plain blue circle at the left and a small <rex> circle at
    the right on a grey background``: the partner described, the concept by its token and class word)."""
    scenes = reference_scenes(concept, n, seed)
    captions = [user_caption(s.objects[0].size, concept.token, concept.shape, s.objects[0].position, s.background)
                for s in scenes]
    for scene, k in pair_reference_scenes(concept, pairs, seed):
        drops = tuple(ALL_DROPPED if i == k else FULL for i in range(2))
        subjects = tuple(concept.token if i == k else None for i in range(2))
        captions.append(caption(scene, drops, subjects))
        scenes.append(scene)
    images = np.stack([render.render_scene(s, resolution) for s in scenes])
    return images, captions, scenes


def write_reference_folder(concept: Concept, folder: str | Path, n: int = 6, seed: int = 0, pairs: int = 0) -> Path:
    """PNG files + captions.txt in the layout :func:`cns_ray.learn.data.load_concept` reads (``pairs``: two-object
    references as well, :func:`reference_set`)."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    images, captions, _ = reference_set(concept, n, seed, pairs=pairs)
    for i, img in enumerate(images):
        Image.fromarray(img).save(folder / f"{i:02d}.png")
    (folder / "captions.txt").write_text("\n".join(captions) + "\n")
    return folder


def pair_scene(left: Concept, right: Concept, background: str) -> Scene:
    return Scene((Obj(left.shape, left.look, "small", "left"), Obj(right.shape, right.look, "small", "right")), background)


def pair_prompt(left: Concept, right: Concept, background: str) -> str:
    return (f"a small {left.token} {left.shape} at the left and a small {right.token} {right.shape} at the right "
            f"on a {background} background")


def multi_prompts(sequence: str) -> list[tuple[str, str, str, str]]:
    """Two-concept prompts of a sequence: (prompt, left concept, right concept, background); consecutive pairs."""
    if sequence not in SEQUENCES:
        raise InputError(f"unknown sequence {sequence!r}: one of {sorted(SEQUENCES)}")
    names = SEQUENCES[sequence]
    bgs = list(BACKGROUNDS)
    out = []
    for i in range(0, len(names) - 1, 2):
        a, b = get_concept(names[i]), get_concept(names[i + 1])
        bg = bgs[(i // 2) % len(bgs)]
        out.append((pair_prompt(a, b, bg), a.name, b.name, bg))
    return out


def full_caption_of(concept: Concept, size: str, position: str, background: str) -> str:
    return caption(concept_scene(concept, size, position, background), FULL)


assert not _problems(), _problems()
