"""The evaluation harness (protocol v2): learn each sequence continually with each method and seed, and measure.

Units of work, each needing only a base model, a scorer and a scratch concept store, so they run in parallel on
Ray (``pipelines.evaluate``) or in one process (tests):

- :func:`run_references`: per concept and two-concept prompt, the **floor** (the base drawing the class-word prompt:
  ``a large circle at ...``), the **ceiling** (the base drawing the full caption: ``a large striped red and yellow
  circle with a green dot at ...``) and the **rendered truth** (what a perfect image scores); and the general
  prompts (world captions, no concept) drawn by the base: the "before" of general-prompt alignment.
- :func:`run_unit`: one (method, sequence, learning seed): learns the sequence's concepts in order; after each, it
  scores that concept (*right after*) and the first concept (the forgetting curve); at the end, every concept, the
  two-concept prompts (per object position) and the general prompts (the "after").
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np

from cns_ray import select
from cns_ray.config import SelectionConfig, StoreConfig
from cns_ray.eval.config import EvalConfig
from cns_ray.eval.generate import generate
from cns_ray.eval.methods import fused, learn_one, shut_sets, tenant_for
from cns_ray.world import concepts as wc
from cns_ray.world.render import render_scene
from cns_ray.world.scene import BACKGROUNDS, POSITIONS, SIZES, caption, sample_scenes

log = logging.getLogger(__name__)

CALIBRATION_SEED = 777
GENERAL_SEED = 4242


def calibration_prompts(n: int = 20) -> list[str]:
    """World captions: the calibration prompts of general neurons that a v2 base ships (``calibration_prompts.txt``,
    written by ``pipelines.train_base``), i.e. the base model's own domain."""
    return [caption(s) for s in sample_scenes(n, seed=CALIBRATION_SEED)]


def general_scenes(n: int) -> list:
    """World scenes (no concept) whose captions measure what a tenant's state does to everything else."""
    return sample_scenes(n, seed=GENERAL_SEED)


def contexts(concept: wc.Concept, k: int, seed: int) -> list[tuple[str, str, str]]:
    """``k`` (size, position, background) contexts of single-concept prompts, deterministic."""
    rng = np.random.default_rng([seed, 99, sum(map(ord, concept.name))])
    return [tuple(list(d)[int(rng.integers(len(d)))] for d in (SIZES, POSITIONS, BACKGROUNDS)) for _ in range(k)]


def single_prompts(concept: wc.Concept, k: int, seed: int) -> list[str]:
    return [wc.user_caption(s, concept.token, concept.shape, p, b) for s, p, b in contexts(concept, k, seed)]


def sequence_pairs(cfg: EvalConfig, sequence: str) -> list[tuple[str, str, str, str]]:
    """(prompt, left concept, right concept, background) of the sequence's two-concept prompts: the earlier concept
    at the left; with ``cfg.pair_orders == "both"`` each also with the later concept at the left."""
    names = set(cfg.concepts(sequence))
    out = [m for m in wc.multi_prompts(sequence) if m[1] in names and m[2] in names]
    if cfg.pair_orders == "both":
        out += [(wc.pair_prompt(wc.get_concept(b), wc.get_concept(a), bg), b, a, bg) for _, a, b, bg in out]
    return out


def _mean_scores(scores: list[dict]) -> dict[str, float]:
    return {k: float(np.mean([s[k] for s in scores])) for k in scores[0]}


class Measure:
    """Generation + scoring for one (base, scorer, config)."""

    def __init__(self, base, scorer, cfg: EvalConfig):
        self.base, self.scorer, self.cfg = base, scorer, cfg
        self.shut: dict = {}
        """The served state's Cones concepts (placeholder -> layer -> indices): shut where a prompt names them."""

    def images(self, delta, tokens, prompt: str) -> np.ndarray:
        c = self.cfg
        return generate(self.base, delta, tokens, prompt, c.n_gen, c.seed, c.gen_steps, c.guidance,
                        shut=self.shut)  # [n, R, R, 3]

    def single(self, delta, tokens, c: wc.Concept, prompt_of=lambda p, c: p) -> tuple[dict, np.ndarray]:
        """Scores of ``c``'s single prompts (``prompt_of`` rewrites a prompt: class word only, full caption)."""
        scores, imgs = [], []
        for p in single_prompts(c, self.cfg.prompts_per_concept, self.cfg.seed):
            g = self.images(delta, tokens, prompt_of(p, c))
            scores.append(self.scorer.single(g, c))
            imgs.append(g)
        return _mean_scores(scores), np.concatenate(imgs)

    def pair(self, delta, tokens, prompt: str, left: wc.Concept, right: wc.Concept) -> tuple[dict, np.ndarray]:
        g = self.images(delta, tokens, prompt)
        return self.scorer.pair(g, left, right), g

    def general(self, delta, tokens) -> tuple[dict, np.ndarray]:
        scores, imgs = [], []
        for s in general_scenes(self.cfg.general_prompts):
            p = caption(s)
            g = generate(self.base, delta, tokens, p, 1, self.cfg.seed, self.cfg.gen_steps, self.cfg.guidance,
                         shut=self.shut)
            scores.append(self.scorer.general(g, s, p))
            imgs.append(g)
        return _mean_scores(scores), np.concatenate(imgs)


def _class_only(prompt: str, c: wc.Concept) -> str:
    return wc.class_prompt(prompt, [c.token])


def _full(prompt: str, c: wc.Concept) -> str:
    return wc.full_prompt(prompt, [c])


def run_references(base, scorer, cfg: EvalConfig) -> dict:
    """Floors, ceilings and rendered truth of every concept and two-concept prompt of ``cfg``, and the general
    prompts drawn by the base ("before")."""
    m = Measure(base, scorer, cfg)
    concepts, pairs, rows = {}, {}, {}
    for seq in cfg.sequences:
        for name in cfg.concepts(seq):
            c = wc.get_concept(name)
            floor, fimg = m.single(None, {}, c, _class_only)
            ceiling, cimg = m.single(None, {}, c, _full)
            truth_imgs = np.stack([render_scene(wc.concept_scene(c, *ctx), base.resolution)
                                   for ctx in contexts(c, cfg.prompts_per_concept, cfg.seed)])
            concepts[name] = {"floor": floor, "ceiling": ceiling, "truth": scorer.single(truth_imgs, c)}
            rows[f"{name}: floor (class word)"], rows[f"{name}: ceiling (full caption)"] = fimg, cimg
        for prompt, a, b, bg in sequence_pairs(cfg, seq):
            left, right = wc.get_concept(a), wc.get_concept(b)
            floor, fimg = m.pair(None, {}, wc.class_prompt(prompt, [left.token, right.token]), left, right)
            ceiling, cimg = m.pair(None, {}, wc.full_prompt(prompt, [left, right]), left, right)
            truth = scorer.pair(render_scene(wc.pair_scene(left, right, bg), base.resolution)[None], left, right)
            pairs[f"{a}+{b}"] = {"floor": floor, "ceiling": ceiling, "truth": truth}
            rows[f"{a}+{b}: floor"], rows[f"{a}+{b}: ceiling"] = fimg, cimg
    general, gimg = m.general(None, {})
    rows["general prompts: base"] = gimg
    return {"kind": "references", "concepts": concepts, "pairs": pairs, "general": general,
            "rows": {k: v.tolist() for k, v in rows.items()}}


def run_unit(base, scorer, cfg: EvalConfig, method: str, sequence: str, seed: int,
             workdir: str | None = None) -> dict:
    """Learn ``sequence``'s concepts in order with ``method`` and learning seed ``seed``; measure."""
    from cns_ray.store import ConceptStore, codec, delta_nbytes

    work = Path(workdir or tempfile.mkdtemp(prefix=f"cns-eval-{method}-{sequence}-{seed}-"))
    store = ConceptStore(StoreConfig(uri=str(work / "store")))
    # the base's own calibration prompts (a trained toy-world base ships them: its world's captions)
    general_masks = select.general_masks_local(base, select.load_prompts(base=base),
                                               SelectionConfig(select_ratio=cfg.select_ratio))
    m = Measure(base, scorer, cfg)
    names = cfg.concepts(sequence)
    concepts = [wc.get_concept(n) for n in names]
    right_after, first_curve, seconds, learned, rows = {}, [], [], [], {}
    shapes = base.target_shapes()
    for k, c in enumerate(concepts):
        folder = wc.write_reference_folder(c, work / "refs" / c.name, cfg.n_ref, cfg.seed, cfg.pairs)
        info = learn_one(base, store, cfg, method, sequence, c, str(folder), general_masks, seed=seed)
        seconds.append(info["seconds"])
        state = store.load(info["tenant"], info["version"], shapes=shapes, base_id=base.base_id)
        learned.append(state)
        m.shut = shut_sets(state)  # Cones: the concepts learned so far, shut where a prompt names them
        right_after[c.name], imgs = m.single(state.delta, state.tokens, c)
        rows[f"{c.name} (right after)"] = imgs
        if method == "fusion":  # each delta is independent: the first concept is untouched until the fusion
            first_curve.append(right_after[concepts[0].name])
        else:
            first_curve.append(right_after[c.name] if k == 0 else m.single(state.delta, state.tokens, concepts[0])[0])
        log.info("%s/%s/seed %d: learned %s in %.1fs (loss %.4f): %s", method, sequence, seed, c.name,
                 info["seconds"], info["final_loss"] or float("nan"), right_after[c.name])
    if method == "fusion":
        delta, tokens = fused(learned)
        stored = sum(delta_nbytes(s.delta)["bytes"] for s in learned)
    else:
        delta, tokens = learned[-1].delta, learned[-1].tokens
        stored = delta_nbytes(delta)["bytes"]
    if method == "cones":  # indices only: what the store writes for them (cones.parquet), no delta, no tokens
        stored = len(codec.encode_cones(learned[-1].concepts))
    if tokens:
        stored += len(tokens) * 4 * int(next(iter(tokens.values())).numel())  # token embeddings, fp32
    at_end = {}
    for c in concepts:
        at_end[c.name], imgs = m.single(delta, tokens, c)
        rows[f"{c.name} (end of sequence)"] = imgs
    if method == "fusion":
        first_curve[-1] = at_end[concepts[0].name]
    pairs = {}
    for prompt, a, b, _ in sequence_pairs(cfg, sequence):
        pairs[f"{a}+{b}"], imgs = m.pair(delta, tokens, prompt, wc.get_concept(a), wc.get_concept(b))
        rows[f"{a}+{b}"] = imgs
    general, imgs = m.general(delta, tokens)
    rows["general prompts (end of sequence)"] = imgs
    return {
        "kind": "unit", "method": method, "sequence": sequence, "seed": seed, "concepts": list(names),
        "right_after": right_after, "at_end": at_end, "first_curve": first_curve, "pairs": pairs,
        "general": general, "bytes_per_concept": stored / len(concepts), "learn_seconds": seconds,
        "tenant": tenant_for(method, sequence, names[-1]), "rows": {k: v.tolist() for k, v in rows.items()},
    }
