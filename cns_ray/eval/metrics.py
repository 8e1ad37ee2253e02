"""The paper's metrics on top of a CLIP-style model (anything with ``embed_images`` / ``embed_texts``).

- image alignment: mean cosine similarity between generated images and the concept's reference images;
- text alignment: mean cosine similarity between each generated image and its prompt (placeholders replaced by
  the class word);
- forgetting: a concept's image alignment right after it was learned minus after its sequence's last concept;
- caption ranking (base-model sanity): how often an image's own caption ranks first among ``k`` candidates.
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


def attribute_accuracy(model, images, scenes) -> dict[str, float]:
    """Per attribute: how often the scene's true value scores highest when only that word of the caption varies."""
    from cns_ray.world.scene import BACKGROUNDS, COLOURS, POSITIONS, SHAPES, SIZES, TEXTURES, caption

    options = {"shape": SHAPES, "colour": COLOURS, "size": SIZES, "texture": TEXTURES, "position": POSITIONS,
               "background": BACKGROUNDS}
    img = model.embed_images(images)  # [N, D]
    out = {}
    for attr, values in options.items():
        values = list(values)
        caps = [caption(type(s)(**{**s.to_dict(), attr: v})) for s in scenes for v in values]
        txt = model.embed_texts(caps).view(len(scenes), len(values), -1)  # [N, V, D]
        best = (txt * img.unsqueeze(1)).sum(-1).argmax(1)  # [N]
        out[attr] = float(np.mean([values[int(b)] == getattr(s, attr) for b, s in zip(best, scenes)]))
    return out
