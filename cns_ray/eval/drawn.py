"""Concepts a user would bring, drawn with PIL (not the world's renderer) and captioned as a user would.

Two circles of held-out looks (never rendered in base training, ``cns_ray.world.scene.is_held_out``): ``kiki``
(blue, orange stripes) and ``boba`` (red, white outline), each drawn in 6 contexts at 128 px (the learner's loader
downscales to 32), and two-object drawings of a pair (the left half of one drawing beside the right half of the
other: SVDiff's Cut-Mix). Used by tests/unit/learn/test_user_concepts.py and the same-class and pair-position
benchmarks; scored by exact pixel colours (``palette_fit``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from cns_ray.world.scene import BACKGROUNDS, COLOURS, Look

KIKI = ("kiki", Look("blue", "striped", "orange"))
BOBA = ("boba", Look("red", "plain", None, "outline", "white"))
CONTEXTS = [("large", 16, "grey"), ("small", 11, "white"), ("large", 12, "black"), ("small", 21, "brown"),
            ("large", 20, "white"), ("small", 16, "black")]
"""(size, centre x in 32 px, background) of each drawing."""
PAIR_BACKGROUNDS = ("grey", "white", "black", "brown")


def draw_circle(look: Look, size: str, cx: int, bg: str) -> Image.Image:
    """A 128 px drawing: a circle, striped or outlined, with ImageDraw."""
    s = 4
    im = Image.new("RGB", (32 * s, 32 * s), BACKGROUNDS[bg])
    d = ImageDraw.Draw(im)
    r = (10 if size == "large" else 6) * s
    box = [cx * s - r, 16 * s - r, cx * s + r, 16 * s + r]
    d.ellipse(box, fill=COLOURS[look.colour])
    if look.pattern == "striped":
        mask = Image.new("L", im.size, 0)
        ImageDraw.Draw(mask).ellipse(box, fill=255)
        stripes = Image.new("RGB", im.size, COLOURS[look.colour2])
        band = Image.new("L", im.size, 0)
        bd = ImageDraw.Draw(band)
        for k in range(1, 4, 2):  # the 2nd and 4th of four horizontal bands
            bd.rectangle([0, 16 * s - r + k * r // 2, 32 * s, 16 * s - r + (k + 1) * r // 2], fill=255)
        im.paste(stripes, (0, 0), Image.fromarray(np.minimum(np.asarray(mask), np.asarray(band))))
    if look.marking == "outline":
        d.ellipse(box, outline=COLOURS[look.marking_colour], width=max(2, r // 3))
    return im


def draw_pair(left: Look, right: Look, bg: str) -> Image.Image:
    """Two small circles, ``left`` at x 11 and ``right`` at x 21 of 32, on one background: the left half of one
    drawing beside the right half of the other."""
    a = np.asarray(draw_circle(left, "small", 11, bg))  # [128, 128, 3]
    b = np.asarray(draw_circle(right, "small", 21, bg))
    w = a.shape[1] // 2
    return Image.fromarray(np.concatenate([a[:, :w], b[:, w:]], axis=1))


PARTNERS = (Look("green", "plain"), Look("yellow", "plain"), Look("purple", "plain"))
"""Described partners for two-object drawings (``write_folder(partner="described")``): plain looks the base draws
from their caption, in colours neither KIKI nor BOBA uses."""


def write_folder(root: Path, name: str, look: Look, pairs_with: tuple[str, Look] | None = None, n_pairs: int = 0,
                 new_side: str = "alternate", partner: str = "concept") -> Path:
    """``root/name``: the 6 drawings and a ``captions.txt`` (``a small <name> circle at the left on a white
    background``, ...), and ``n_pairs`` two-object drawings of ``name`` beside a partner, ``name`` alternately at the
    right and at the left (``new_side="alternate"``) or always at ``"right"``. The partner is the earlier concept
    ``pairs_with`` (``partner="concept"``: captioned ``a small <other> circle at the left and a small <name> circle at
    the right on a ... background``; nothing without ``pairs_with``) or a plain circle of :data:`PARTNERS` that the
    caption describes (``partner="described"``: ``a small plain green circle at the left and a small <name> ...``)."""
    from cns_ray.world.scene import Obj, object_phrase

    if partner not in ("concept", "described"):
        raise ValueError(f"partner={partner!r}: use 'concept' (the earlier concept) or 'described' (a plain circle)")
    folder = Path(root) / name
    folder.mkdir(parents=True)
    caps = []
    for i, (size, cx, bg) in enumerate(CONTEXTS):
        draw_circle(look, size, cx, bg).save(folder / f"{i}.png")
        pos = "left" if cx < 14 else "right" if cx > 18 else "center"
        caps.append(f"a {size} <{name}> circle at the {pos} on a {bg} background")
    n = n_pairs if (pairs_with or partner == "described") else 0
    for j in range(n):
        bg = PAIR_BACKGROUNDS[j % len(PAIR_BACKGROUNDS)]
        new_right = j % 2 == 0 or new_side == "right"
        if partner == "concept":
            other, other_look = pairs_with
            other_words = f"small <{other}> circle"
        else:
            other_look = PARTNERS[j % len(PARTNERS)]
            other_words = object_phrase(Obj("circle", other_look, "small", "left")).removesuffix(" at the left")
        mine = f"small <{name}> circle"
        l_look, r_look = (other_look, look) if new_right else (look, other_look)
        l_words, r_words = (other_words, mine) if new_right else (mine, other_words)
        draw_pair(l_look, r_look, bg).save(folder / f"pair{j}.png")
        caps.append(f"a {l_words} at the left and a {r_words} at the right on a {bg} background")
    (folder / "captions.txt").write_text("\n".join(caps) + "\n")
    return folder


def palette_fit(images, look: Look, region: str = "all") -> float:
    """Mean over uint8 [N, H, W, 3] images of palette recall x precision for a circle of ``look`` in ``region``."""
    from cns_ray.eval.pixels import palette_score

    return float(np.mean([(lambda s: s.recall * s.precision)(palette_score(im, ("circle", look), region)) for im in images]))
