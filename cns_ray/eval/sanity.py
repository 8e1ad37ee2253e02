"""Base-model sanity (``cns eval --base-only``): does the base model draw what its caption says?

Images are generated for held-out world captions (a seed the training set never used); the metric model ranks each
image's own caption among ``k`` (chance = 1/k) and recovers each attribute (shape, colour, ...). The same numbers
on the rendered ground truth show what the metric model itself can resolve.
"""

from __future__ import annotations

import numpy as np

from cns_ray.eval import metrics
from cns_ray.eval.generate import generate
from cns_ray.world.render import render_scene
from cns_ray.world.scene import caption, sample_scenes

SANITY_SEED = 4242


def base_sanity(base, metric, n: int = 40, k: int = 10, steps: int = 20, guidance: float = 4.0, seed: int = 0) -> dict:
    scenes = sample_scenes(n, seed=SANITY_SEED + seed)
    caps = [caption(s) for s in scenes]
    gen = np.concatenate([generate(base, None, {}, c, 1, seed + i, steps, guidance) for i, c in enumerate(caps)])
    truth = np.stack([render_scene(s, base.resolution) for s in scenes])
    return {
        "n": n,
        "k": k,
        "chance": 1.0 / k,
        "generated": {"caption_top1": metrics.caption_rank_accuracy(metric, gen, caps, k, seed),
                      "attributes": metrics.attribute_accuracy(metric, gen, scenes)},
        "rendered": {"caption_top1": metrics.caption_rank_accuracy(metric, truth, caps, k, seed),
                     "attributes": metrics.attribute_accuracy(metric, truth, scenes)},
        "images": gen,
        "truth": truth,
        "captions": caps,
    }


def format_sanity(r: dict) -> str:
    lines = [f"base-model sanity on {r['n']} held-out world captions (caption ranked among {r['k']}; chance {r['chance']:.2f})",
             "| images | caption top-1 | " + " | ".join(r["generated"]["attributes"]) + " |",
             "|---|---|" + "---|" * len(r["generated"]["attributes"])]
    for kind in ("generated", "rendered"):
        a = r[kind]["attributes"]
        lines.append(f"| {kind} | {r[kind]['caption_top1']:.2f} | " + " | ".join(f"{v:.2f}" for v in a.values()) + " |")
    return "\n".join(lines)
