"""Held-out concepts: procedural subjects the base model never saw, with reference images in varied contexts.

Each concept is a shape outside the training world (heart, star, ...) with its own two-colour pattern. Its
reference images vary size, position and background (world attributes), deterministically from a seed. Concepts
are grouped into sequences (learned continually, in order) with multi-concept prompts per sequence.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cns_ray.errors import InputError
from cns_ray.world import render
from cns_ray.world.scene import BACKGROUNDS, CLASS_WORD, POSITIONS, SHAPES, SIZES, Scene

FILLS = {
    "plain": render.plain,
    "striped": render.striped,
    "two-tone": render.two_tone,
    "split": render.split_lr,
    "checkered": render.checker,
    "dotted": render.dotted,
    "diagonal": render.diagonal,
    "ringed": render.rings,
}


@dataclass(frozen=True)
class Concept:
    """A held-out subject: shape + pattern. ``token`` is its placeholder, ``class_word`` the world's word."""

    name: str
    shape: str
    pattern: str
    colours: tuple[str, ...]
    class_word: str = CLASS_WORD

    @property
    def token(self) -> str:
        return f"<{self.name}>"

    def fill(self) -> render.Fill:
        return FILLS[self.pattern](*self.colours)

    def describe(self) -> str:
        """Words for the metric model's captions, e.g. 'two-tone red and yellow heart'."""
        return f"{self.pattern} {' and '.join(self.colours)} {self.shape}"


CONCEPTS: tuple[Concept, ...] = (
    Concept("heart", "heart", "two-tone", ("red", "yellow")),
    Concept("star", "star", "checkered", ("blue", "white")),
    Concept("diamond", "diamond", "dotted", ("green", "white")),
    Concept("ring", "ring", "split", ("orange", "blue")),
    Concept("arrow", "arrow", "diagonal", ("purple", "yellow")),
    Concept("crescent", "crescent", "ringed", ("yellow", "green")),
    Concept("hexagon", "hexagon", "two-tone", ("purple", "orange")),
    Concept("hourglass", "hourglass", "split", ("green", "red")),
    Concept("tee", "tee", "checkered", ("red", "white")),
    Concept("ell", "ell", "dotted", ("purple", "white")),
    Concept("house", "house", "diagonal", ("orange", "green")),
    Concept("bowtie", "bowtie", "ringed", ("blue", "yellow")),
)
SEQUENCES: dict[str, tuple[str, ...]] = {
    "seq1": ("heart", "star", "diamond", "ring"),
    "seq2": ("arrow", "crescent", "hexagon", "hourglass"),
    "seq3": ("tee", "ell", "house", "bowtie"),
}
assert not {c.shape for c in CONCEPTS} & set(SHAPES), "held-out shapes must not be in the training world"


def get_concept(name: str) -> Concept:
    for c in CONCEPTS:
        if c.name == name:
            return c
    raise InputError(f"unknown concept {name!r}: known concepts are {[c.name for c in CONCEPTS]}")


def concept_caption(size: str, subject: str, position: str, background: str) -> str:
    """A concept prompt in the world's grammar; ``subject`` is the placeholder (or '' for the class-word prompt)."""
    words = ["a", size, subject, CLASS_WORD, "at the", position, "on a", background, "background"]
    return " ".join(w for w in words if w)


def class_prompt(prompt: str, tokens: list[str]) -> str:
    """The prompt with each placeholder removed, leaving its class word (the paper's text-alignment prompt)."""
    for t in tokens:
        prompt = prompt.replace(f"{t} ", "").replace(t, "")
    return " ".join(prompt.split())


def reference_scenes(concept: Concept, n: int = 6, seed: int = 0) -> list[Scene]:
    """``n`` varied contexts (size, position, background), deterministic from (concept, seed)."""
    if not 1 <= n <= 64:
        raise InputError(f"n={n} reference images must be in [1, 64]")
    rng = np.random.default_rng([seed, sum(map(ord, concept.name))])
    combos = [(s, p, b) for s in SIZES for p in POSITIONS for b in BACKGROUNDS]
    order = rng.permutation(len(combos))
    out = []
    for i in order[:n]:
        size, pos, bg = combos[int(i)]
        jitter = (float(rng.uniform(-1.5, 1.5)), float(rng.uniform(-1.5, 1.5)))
        out.append(Scene(concept.shape, "red", size, "plain", pos, bg, jitter))  # colour/texture unused: the pattern draws
    return out


def render_concept(concept: Concept, scene: Scene, resolution: int = render.BASE_RESOLUTION) -> np.ndarray:
    """The concept drawn in ``scene``'s context (its shape and pattern replace the scene's object)."""
    centre, half = render.scene_geometry(scene)
    return render.render_object(render.SHAPE_MASKS[concept.shape], concept.fill(), centre, half, scene.background, resolution)


def reference_set(concept: Concept, n: int = 6, seed: int = 0, resolution: int = render.BASE_RESOLUTION):
    """(images uint8 [n, H, W, 3], captions with the placeholder token)."""
    scenes = reference_scenes(concept, n, seed)
    images = np.stack([render_concept(concept, s, resolution) for s in scenes])
    captions = [concept_caption(s.size, concept.token, s.position, s.background) for s in scenes]
    return images, captions


def write_reference_folder(concept: Concept, folder: str | Path, n: int = 6, seed: int = 0) -> Path:
    """PNG files + captions.txt in the layout :func:`cns_ray.learn.data.load_concept` reads."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    images, captions = reference_set(concept, n, seed)
    for i, img in enumerate(images):
        Image.fromarray(img).save(folder / f"{i:02d}.png")
    (folder / "captions.txt").write_text("\n".join(captions) + "\n")
    return folder


def multi_prompts(sequence: str) -> list[tuple[str, str, str]]:
    """Two-concept prompts of a sequence: (prompt, concept at the left, concept at the right)."""
    if sequence not in SEQUENCES:
        raise InputError(f"unknown sequence {sequence!r}: one of {sorted(SEQUENCES)}")
    names = SEQUENCES[sequence]
    bgs = list(BACKGROUNDS)
    out = []
    for i in range(len(names)):
        a, b = get_concept(names[i]), get_concept(names[(i + 1) % len(names)])
        bg = bgs[i % len(bgs)]
        out.append((f"a small {a.token} {CLASS_WORD} at the left and a small {b.token} {CLASS_WORD} at the right "
                    f"on a {bg} background", a.name, b.name))
    return out


def render_pair(left: Concept, right: Concept, background: str, resolution: int = render.BASE_RESOLUTION) -> np.ndarray:
    """Two concepts side by side (small, at the left and right positions): a multi-concept reference."""
    img = render.render_object(render.SHAPE_MASKS[left.shape], left.fill(), (POSITIONS["left"] * 32 - 2, 16), SIZES["small"],
                               background, resolution)
    right_img = render.render_object(render.SHAPE_MASKS[right.shape], right.fill(), (POSITIONS["right"] * 32 + 2, 16),
                                     SIZES["small"], background, resolution)
    half = resolution // 2
    img[:, half:] = right_img[:, half:]
    return img
