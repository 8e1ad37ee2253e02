"""The paper's metrics on top of a CLIP-style model (anything with ``embed_images`` / ``embed_texts``).

- image alignment: mean cosine similarity between generated images and the concept's reference images;
- text alignment: mean cosine similarity between each generated image and its prompt (placeholders replaced by
  the class word);
- forgetting: a concept's image alignment right after it was learned minus after its sequence's last concept;
- caption ranking (base-model sanity): how often an image's own caption ranks first among ``k`` candidates;
- attribute accuracy (v2 world): per object slot and attribute, how often the true caption beats every caption
  that differs from it in that attribute alone (:func:`attribute_tests`).
"""

from __future__ import annotations

import numpy as np

from cns_ray.errors import InputError


def image_alignment(model, generated, references) -> float:
    """Mean pairwise cosine between generated [N, H, W, 3] and reference [M, H, W, 3] images."""
    if len(generated) == 0 or len(references) == 0:
        raise InputError(f"image_alignment needs images on both sides (got {len(generated)} and {len(references)})")
    g, r = model.embed_images(generated), model.embed_images(references)  # [N, D], [M, D]
    return float((g @ r.T).mean())


def text_alignment(model, generated, prompts: list[str] | str) -> float:
    """Mean cosine between each generated image and its prompt (one prompt, or one per image)."""
    prompts = [prompts] * len(generated) if isinstance(prompts, str) else list(prompts)
    if len(prompts) != len(generated) or not prompts:
        raise InputError(f"text_alignment got {len(generated)} images and {len(prompts)} prompts: give one per image")
    g, t = model.embed_images(generated), model.embed_texts(prompts)  # [N, D], [N, D]
    return float((g * t).sum(-1).mean())


def forgetting(right_after: dict[str, float], at_end: dict[str, float]) -> float:
    """Mean over concepts of (alignment right after learning it) - (alignment after the last concept)."""
    common = sorted(set(right_after) & set(at_end))
    if not common:
        raise InputError("forgetting needs at least one concept measured both right after learning and at the end")
    return float(np.mean([right_after[c] - at_end[c] for c in common]))


def caption_rank_accuracy(model, images, captions: list[str], k: int = 10, seed: int = 0) -> float:
    """Fraction of images whose own caption scores highest among itself and ``k - 1`` other distinct captions."""
    distinct = sorted(set(captions))
    if len(distinct) < k:
        raise InputError(f"caption ranking among {k} needs >= {k} distinct captions, got {len(distinct)}")
    rng = np.random.default_rng(seed)
    img = model.embed_images(images)  # [N, D]
    cands = []
    for cap in captions:
        others = [c for c in distinct if c != cap]
        cands += [cap] + [others[j] for j in rng.choice(len(others), k - 1, replace=False)]
    txt = model.embed_texts(cands).view(len(captions), k, -1)  # [N, k, D]
    scores = (txt * img.unsqueeze(1)).sum(-1)  # [N, k]
    return float((scores.argmax(1) == 0).float().mean())


SLOT_NAMES = {1: ("object",), 2: ("left", "right")}
"""The names of a scene's object slots (as :mod:`cns_ray.eval.readout` names them)."""
LOOK_ATTRIBUTES = ("shape", "colour", "pattern", "colour2", "marking", "marking_colour")
PLACE_ATTRIBUTES = ("size", "position")
"""Varied for a one-object scene's object only (a two-object scene's are small, at the left and the right)."""


def _look_options(look, attr: str):
    """Every valid look that differs from ``look`` in ``attr`` alone (a pattern / marking of ``none`` also drops
    its colour); empty where the attribute has no alternative (the second colour of a plain look, ...)."""
    from dataclasses import replace

    from cns_ray.world.scene import BODY_COLOURS, COLOURS, MARKINGS, PATTERNS

    if attr == "colour":
        cands = [replace(look, colour=c) for c in BODY_COLOURS]
    elif attr == "pattern" and look.pattern != "plain":
        cands = [replace(look, pattern=p, colour2=None if p == "plain" else look.colour2) for p in PATTERNS]
    elif attr == "colour2" and look.pattern != "plain":
        cands = [replace(look, colour2=c) for c in COLOURS]
    elif attr == "marking" and look.marking != "none":
        cands = [replace(look, marking=m, marking_colour=None if m == "none" else look.marking_colour) for m in MARKINGS]
    elif attr == "marking_colour" and look.marking != "none":
        cands = [replace(look, marking_colour=c) for c in COLOURS]
    else:
        return []
    return [lk for lk in cands if lk != look and not lk.problems()]


def attribute_variants(scene, index: int, attr: str) -> list:
    """Valid scenes that differ from ``scene`` in attribute ``attr`` of object ``index`` alone (``background``:
    of the scene; ``order``: the two objects swapped); empty where there is no alternative."""
    from dataclasses import replace

    from cns_ray.world.scene import BACKGROUNDS, CLASSES, POSITIONS, SIZES, Scene

    objs = list(scene.objects)
    o = objs[index]

    def with_obj(new) -> Scene:
        return Scene(tuple(new if i == index else x for i, x in enumerate(objs)), scene.background)

    if attr == "background":
        return [Scene(scene.objects, b) for b in BACKGROUNDS if b != scene.background]
    if attr == "order":
        a, b = objs
        if len(objs) != 2 or a.instance() == b.instance():
            return []
        return [Scene((replace(a, shape=b.shape, look=b.look), replace(b, shape=a.shape, look=a.look)), scene.background)]
    if attr == "shape":
        return [with_obj(replace(o, shape=c)) for c in CLASSES if c != o.shape]
    if attr in PLACE_ATTRIBUTES:
        if len(objs) != 1:
            return []
        values = SIZES if attr == "size" else POSITIONS
        return [with_obj(replace(o, **{attr: v})) for v in values if v != getattr(o, attr)]
    if attr in LOOK_ATTRIBUTES:
        return [with_obj(replace(o, look=lk)) for lk in _look_options(o.look, attr)]
    raise InputError(f"attribute {attr!r} is not one of {[*LOOK_ATTRIBUTES, *PLACE_ATTRIBUTES, 'background', 'order']}")


def attribute_tests(scene) -> list[tuple[str, list]]:
    """``(key, [true scene, variant, ...])`` for every attribute test of ``scene``: keys ``<slot>.<attr>`` per
    object (``object.*`` for a one-object scene, ``left.*`` / ``right.*`` for a two-object one), ``background``,
    and ``pair.order`` (are the two instances in their places) for a two-object scene."""
    slots = SLOT_NAMES[len(scene.objects)]
    out = []
    for i, slot in enumerate(slots):
        attrs = LOOK_ATTRIBUTES + (PLACE_ATTRIBUTES if len(slots) == 1 else ())
        out += [(f"{slot}.{a}", [scene, *v]) for a in attrs if (v := attribute_variants(scene, i, a))]
    out.append(("background", [scene, *attribute_variants(scene, 0, "background")]))
    if len(slots) == 2 and (v := attribute_variants(scene, 0, "order")):
        out.append(("pair.order", [scene, *v]))
    return out


def attribute_hits(model, images, scenes) -> dict[str, list[bool]]:
    """Per attribute test key (see :func:`attribute_tests`), one hit or miss per test: the true scene's full caption
    scores strictly highest among the captions that differ from it in that attribute alone. ``<attr>`` keys pool
    every slot's tests of that attribute."""
    from cns_ray.world.scene import caption

    if len(images) != len(scenes) or not scenes:
        raise InputError(f"attribute_accuracy got {len(images)} images and {len(scenes)} scenes: give one scene per image")
    img = model.embed_images(images)  # [N, D]
    tests = [(i, key, cands) for i, s in enumerate(scenes) for key, cands in attribute_tests(s)]
    caps = [caption(c) for _, _, cands in tests for c in cands]
    txt = model.embed_texts(caps)  # [sum candidates, D]
    hits: dict[str, list[bool]] = {}
    at = 0
    for i, key, cands in tests:
        scores = txt[at : at + len(cands)] @ img[i]  # [candidates]
        at += len(cands)
        hit = bool(scores[0] > scores[1:].max())  # strictly: a tie (e.g. a bag-of-words model on a swap) is a miss
        hits.setdefault(key, []).append(hit)
        if "." in key and not key.startswith("pair."):
            hits.setdefault(key.split(".", 1)[1], []).append(hit)
    return dict(sorted(hits.items()))


def attribute_accuracy(model, images, scenes) -> dict[str, float]:
    """Per attribute test key (see :func:`attribute_tests`), the fraction of hits (:func:`attribute_hits`). Keys
    present only where some scene has the test (``object.colour2`` needs patterned one-object scenes, ...)."""
    return {k: float(np.mean(v)) for k, v in attribute_hits(model, images, scenes).items()}
