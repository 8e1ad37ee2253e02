"""Base-model sanity (``cns eval --base-only``): does the base model draw what its caption says?

Images are generated for world v2 captions of a seed training never used (about half one-object, half two-object
scenes, full captions). Each attribute is read back per object slot (``object.*`` for a one-object scene,
``left.*`` / ``right.*`` for a two-object scene) three ways, and the same measurement on the rendered truth of the
same scenes is the ceiling each reading can reach:

- ``readout``: the per-object attribute readout (:mod:`cns_ray.eval.readout`), per head the fraction read right;
- ``attributes``: the toy CLIP (:func:`cns_ray.eval.metrics.attribute_accuracy`), per attribute how often the true
  caption wins when only that attribute varies (``pair.order``: the two objects swapped);
- ``palette``: the exact pixel-colour check (:mod:`cns_ray.eval.pixels`), per slot the mean palette recall;

plus the toy CLIP's caption ranking (own caption among ``k``; chance 1/k). ``clip=False`` skips both toy-CLIP
readings (most of the time on CPU: many caption variants per image), for judging a training checkpoint in minutes.
"""

from __future__ import annotations

import numpy as np

from cns_ray.eval import metrics
from cns_ray.eval.generate import generate
from cns_ray.eval.pixels import palette_scores
from cns_ray.world.render import render_scene
from cns_ray.world.scene import WorldSpec, caption, sample_scenes

SANITY_SEED = 4242
SANITY_SPEC = WorldSpec(p_two=0.5)
"""Half two-object scenes, so both slots' attributes are measured on about n/2 images."""


def palette_by_slot(images: np.ndarray, scenes) -> dict[str, float]:
    """Per slot (``object``, ``left``, ``right``), the mean palette recall of the scenes' objects."""
    out: dict[str, list[float]] = {}
    for img, s in zip(images, scenes):
        slots = (("object", "all"),) if len(s.objects) == 1 else (("left", "left"), ("right", "right"))
        for (slot, region), o in zip(slots, s.objects):
            out.setdefault(slot, []).append(palette_scores(img[None], o.instance(), region, s.background)["recall"])
    return {k: float(np.mean(v)) for k, v in out.items()}


def read_all(images: np.ndarray, scenes, captions: list[str], metric, readout, k: int, seed: int,
             clip: bool = True) -> dict:
    return {"caption_top1": metrics.caption_rank_accuracy(metric, images, captions, k, seed) if clip else None,
            "attributes": metrics.attribute_accuracy(metric, images, scenes) if clip else {},
            "readout": readout.accuracy(images, scenes),
            "palette": palette_by_slot(images, scenes)}


def base_sanity(base, metric, n: int = 40, k: int = 10, steps: int = 20, guidance: float = 4.0, seed: int = 0,
                readout=None, clip: bool = True) -> dict:
    """Generate one image per caption of ``n`` fresh scenes and read them back (``readout``: the shipped one unless
    given). Returns the readings of the ``generated`` images and of the ``rendered`` truth, plus ``images``,
    ``truth`` (uint8 [n, R, R, 3]), ``captions`` and ``two_object`` (per caption)."""
    if readout is None:
        from cns_ray.eval.readout import load_readout

        readout = load_readout()
    scenes = sample_scenes(n, seed=SANITY_SEED + seed, spec=SANITY_SPEC)
    caps = [caption(s) for s in scenes]
    gen = np.concatenate([generate(base, None, {}, c, 1, seed + i, steps, guidance) for i, c in enumerate(caps)])
    truth = np.stack([render_scene(s, base.resolution) for s in scenes])
    return {
        "n": n,
        "k": k,
        "chance": 1.0 / k,
        "steps": steps,
        "guidance": guidance,
        "clip": clip,
        "generated": read_all(gen, scenes, caps, metric, readout, k, seed, clip),
        "rendered": read_all(truth, scenes, caps, metric, readout, k, seed, clip),
        "images": gen,
        "truth": truth,
        "captions": caps,
        "two_object": [len(s.objects) == 2 for s in scenes],
    }


def format_sanity(r: dict) -> str:
    """A markdown table: per attribute, the readout and the toy CLIP on generated images vs rendered truth."""
    g, t = r["generated"], r["rendered"]
    n2 = sum(r.get("two_object", []))
    ranking = (f"toy CLIP caption top-1 among {r['k']} (chance {r['chance']:.2f}): generated {g['caption_top1']:.2f}, "
               f"rendered {t['caption_top1']:.2f}" if g.get("caption_top1") is not None else "toy CLIP not run")
    lines = [f"base-model sanity on {r['n']} fresh world captions ({r['n'] - n2} one-object, {n2} two-object); "
             + ranking,
             "| attribute | readout generated | readout rendered | toy CLIP generated | toy CLIP rendered |",
             "|---|---|---|---|---|"]
    keys = sorted(set(t["readout"]) | {k for k in t["attributes"] if "." in k or k == "background"})

    def cell(d: dict, key: str) -> str:
        return f"{d[key]:.2f}" if key in d else "-"

    for key in keys:
        lines.append(f"| {key} | {cell(g['readout'], key)} | {cell(t['readout'], key)} | "
                     f"{cell(g['attributes'], key)} | {cell(t['attributes'], key)} |")
    lines.append("| palette recall (pixels) | " + ", ".join(f"{s} {v:.2f}" for s, v in g["palette"].items()) + " | "
                 + ", ".join(f"{s} {v:.2f}" for s, v in t["palette"].items()) + " | | |")
    return "\n".join(lines)
