"""What a set of generated images is worth for a concept: every metric of the protocol in one place.

- ``clip``: toy-CLIP image alignment (mean cosine with the concept's rendered references);
- ``readout``: the per-object attribute readout's agreement with the concept's instance (class + look words), in
  the object slot the prompt put it (the single object; the left or right one of a two-object prompt);
- ``pixel``: the exact pixel-colour check (the concept's palette found among the object's pixels).

Two-concept prompts are also scored as *placed*: the fraction of images whose left object reads as the left concept
(better than as the right one) and whose right object reads as the right concept. World captions without concepts
(general prompts) are scored by toy-CLIP text alignment and the readout's agreement with the caption's scene.
"""

from __future__ import annotations

import numpy as np

from cns_ray.errors import ModelLoadError
from cns_ray.eval import metrics
from cns_ray.world import concepts as wc
from cns_ray.world.scene import Scene

LOOK_FIELDS = ("shape", "colour", "pattern", "colour2", "marking", "marking_colour")


def slot_values(values: dict[str, list[str]], slot: str, i: int) -> dict[str, str]:
    """Image ``i``'s readout of ``slot`` (``object``, ``left``, ``right``) from ``Readout.read_values``."""
    return {k: values[f"{slot}.{k}"][i] for k in LOOK_FIELDS}


def agreement(read: dict[str, str], target: dict[str, str]) -> float:
    """Fraction of LOOK_FIELDS on which a readout slot equals the target instance (``readout.look_values``)."""
    return float(np.mean([read[k] == target[k] for k in LOOK_FIELDS]))


class Scorer:
    """Scores images with the metric model, the readout (when shipped) and the pixel check; references cached."""

    def __init__(self, metric, readout=None, n_ref: int = 6, seed: int = 0, resolution: int = 32, palette=None):
        self.metric, self.readout, self.palette = metric, readout, palette
        """``palette(image [H, W, 3], concept, region: 'all' | 'left' | 'right') -> PaletteScore``
        (:func:`cns_ray.eval.pixels.palette_score`); scored as recall x precision."""
        self.n_ref, self.seed, self.resolution = n_ref, seed, resolution
        self._refs: dict[str, np.ndarray] = {}

    def references(self, c: wc.Concept) -> np.ndarray:
        if c.name not in self._refs:
            self._refs[c.name] = wc.reference_set(c, self.n_ref, self.seed, self.resolution)[0]
        return self._refs[c.name]

    def _pixel(self, img: np.ndarray, c: wc.Concept, region: str) -> float:
        ps = self.palette(img, c, region)
        return ps.recall * ps.precision

    def _targets(self, *cs: wc.Concept) -> list[dict[str, str]]:
        from cns_ray.eval.readout import look_values

        return [look_values(c.shape, c.look) for c in cs]

    def single(self, images: np.ndarray, c: wc.Concept) -> dict[str, float]:
        out = {"clip": metrics.image_alignment(self.metric, images, self.references(c))}
        if self.readout is not None:
            (target,) = self._targets(c)
            vals = self.readout.read_values(images)
            out["readout"] = float(np.mean([agreement(slot_values(vals, "object", i), target) for i in range(len(images))]))
        if self.palette is not None:
            out["pixel"] = float(np.mean([self._pixel(img, c, "all") for img in images]))
        return out

    def pair(self, images: np.ndarray, left: wc.Concept, right: wc.Concept) -> dict[str, float]:
        out = {"clip": 0.5 * (metrics.image_alignment(self.metric, images, self.references(left))
                              + metrics.image_alignment(self.metric, images, self.references(right)))}
        if self.palette is not None:
            out["pixel"] = float(np.mean([0.5 * (self._pixel(img, left, "left") + self._pixel(img, right, "right"))
                                          for img in images]))
        if self.readout is not None:
            a, b = self._targets(left, right)
            vals = self.readout.read_values(images)
            slots = [(slot_values(vals, "left", i), slot_values(vals, "right", i)) for i in range(len(images))]
            la = [agreement(s[0], a) for s in slots]
            rb = [agreement(s[1], b) for s in slots]
            # both in place: each side reads as its own concept (at least half its attributes), better than as the other
            placed = [agreement(s[0], a) > agreement(s[0], b) and agreement(s[1], b) > agreement(s[1], a)
                      and x >= 0.5 and y >= 0.5 for s, x, y in zip(slots, la, rb)]
            out["readout"] = float(np.mean(la + rb))
            out["readout_left"], out["readout_right"] = float(np.mean(la)), float(np.mean(rb))
            out["placed"] = float(np.mean(placed))
        return out

    def general(self, images: np.ndarray, scene: Scene, prompt: str) -> dict[str, float]:
        out = {"clip_text": metrics.text_alignment(self.metric, images, prompt)}
        if self.readout is not None:
            from cns_ray.eval.readout import look_values

            vals = self.readout.read_values(images)
            names = ("object",) if len(scene.objects) == 1 else ("left", "right")
            out["readout"] = float(np.mean([agreement(slot_values(vals, n, i), look_values(o.shape, o.look))
                                            for i in range(len(images)) for n, o in zip(names, scene.objects)]))
        return out


def load_scorer(metric_spec: str, n_ref: int, seed: int, resolution: int) -> Scorer:
    """The metric model (``toy`` or a folder) and the shipped readout, when there is one."""
    from cns_ray.eval.metric_model import load_metric_model

    readout = None
    try:
        from cns_ray.eval.readout import load_readout

        readout = load_readout()
    except (ImportError, FileNotFoundError, ModelLoadError):  # optional: CLIP and pixels still score
        readout = None
    try:
        from cns_ray.eval.pixels import palette_score as palette
    except ImportError:
        palette = None
    return Scorer(load_metric_model(metric_spec), readout, n_ref, seed, resolution, palette)
