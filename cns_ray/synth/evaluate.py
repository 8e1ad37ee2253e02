"""Judging synthesized concepts on held-out instances (the named world concepts: never in the library).

Per concept and seed, each method gives a tenant state, the base draws the concept's prompts with it, and the images
are scored like the protocol's (:class:`cns_ray.eval.scoring.Scorer`: toy-CLIP image alignment with the references,
the attribute readout, the pixel-colour check). Methods:

- ``floor``: the base drawing the class-word prompt (no concept);
- ``synthesized``: the synthesizer's state on the CNS-selected neurons (``synthesized_union``: on its own coordinates);
- ``nearest``: the library concept whose reference embedding is closest, landed like ``synthesized``;
- ``blend``: the embedding-weighted mean of the k nearest library states, landed like ``synthesized``;
- ``kernel``: the kernel-ridge combination of every library state (:func:`cns_ray.synth.baselines.kernel`), landed
  like ``synthesized``;
- ``cns``: CNS learned for ``cns_steps`` from the base (the upper bound);
- ``refine``: ``synthesized`` plus ``refine_steps`` warm-started CNS steps;
- ``synthesized_t1``: the flow sampled at temperature 1 (a draw, not the conditional mean the shipped temperature 0
  gives);
- ``flow_from_blend``: the flow begun from the blend's latent at ``start_t`` (SDEdit in the latent), at
  ``start_temperature``.

Learned methods use the seed as learning seed, sampled ones as sampling seed; every method draws with the same
generation seeds for a given seed.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, replace

import numpy as np
import torch

from cns_ray.config import LearnerConfig, StoreConfig
from cns_ray.errors import ConfigError

METHODS = ("floor", "synthesized", "synthesized_union", "nearest", "blend", "kernel", "cns", "refine", "synthesized_norm",
           "synthesized_t1", "flow_from_blend")


@dataclass(frozen=True)
class SynthEvalConfig:
    concepts: tuple[str, ...] = ("rex", "mia", "ivo", "kit", "bo", "ada")
    """Held-out named concepts (cns_ray.world.concepts.CONCEPTS; the library never holds them)."""
    seeds: int = 3
    cns_steps: int = 300
    refine_steps: int = 50
    images_per_prompt: int = 4
    gen_steps: int = 20
    contexts: tuple[tuple[str, str, str], ...] = (("large", "center", "grey"), ("small", "left", "white"))
    """(size, position, background) of each prompt."""
    blend_k: int = 5
    n_refs: int = 6
    start_t: float = 0.5
    """``flow_from_blend``: where on the flow's path the blend's latent starts (0: pure noise; nearer 1: the blend)."""
    start_temperature: float = 1.0
    methods: tuple[str, ...] = METHODS

    def __post_init__(self) -> None:
        bad = [m for m in self.methods if m not in METHODS]
        if not 0.0 <= self.start_t < 1.0 or self.start_temperature < 0:
            raise ConfigError(f"invalid SynthEvalConfig: start_t={self.start_t} must be in [0, 1) and "
                              f"start_temperature={self.start_temperature} >= 0")
        if bad or self.seeds < 1 or self.cns_steps < 1 or self.refine_steps < 0 or self.images_per_prompt < 1:
            raise ConfigError(f"invalid SynthEvalConfig: methods {bad} not in {list(METHODS)}, or seeds={self.seeds}, "
                              f"cns_steps={self.cns_steps}, images_per_prompt={self.images_per_prompt} < 1, or "
                              f"refine_steps={self.refine_steps} < 0")


def _score(base, scorer, concept, delta, tokens, prompt_token: bool, cfg: SynthEvalConfig, seed: int, guidance: float) -> dict:
    from cns_ray.eval.generate import generate
    from cns_ray.world import concepts as wc

    rows = []
    for j, (size, pos, bg) in enumerate(cfg.contexts):
        prompt = wc.user_caption(size, concept.token if prompt_token else None, concept.shape, pos, bg)
        imgs = generate(base, delta, tokens, prompt, cfg.images_per_prompt, 1000 * seed + 17 * j, cfg.gen_steps, guidance)
        rows.append(scorer.single(imgs, concept))
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


def eval_concept(base, synth, metric, scorer, library: tuple, name: str, cfg: SynthEvalConfig,
                 learner_cfg: LearnerConfig, general, guidance: float) -> list[dict]:
    """Every (method, seed) row of one held-out concept. ``library``: (x [N, D], cond [N, c], names) for the baselines."""
    from cns_ray.learn.learner import CNSLearner, ConceptRequest
    from cns_ray.store import ConceptStore
    from cns_ray.synth.apply import synthesized_state
    from cns_ray.synth.baselines import at_library_norms, blend, kernel, nearest
    from cns_ray.synth.library import reference_embedding
    from cns_ray.world import concepts as wc

    lib_x, lib_cond, lib_names = library
    c = wc.get_concept(name)
    out = []
    with tempfile.TemporaryDirectory() as d:
        folder = wc.write_reference_folder(c, f"{d}/refs", cfg.n_refs)
        store = ConceptStore(StoreConfig(uri=f"{d}/store"))
        req = ConceptRequest(tenant="eval", concept=c.name, class_word=c.shape, images=str(folder), token=c.token)
        refs = torch.from_numpy(wc.reference_set(c, cfg.n_refs)[0])
        emb = reference_embedding(metric, refs.numpy())
        if lib_x is not None:
            nn_vec, nn_row = nearest(lib_x, lib_cond, emb)
            bl_vec = blend(lib_x, lib_cond, emb, cfg.blend_k)
            if "kernel" in cfg.methods:  # an [N, N] solve per concept: only when asked for; KRR shrinks norms
                kr_vec = at_library_norms(kernel(lib_x, lib_cond, emb), lib_x, synth.coords.token_dim)
        for seed in range(cfg.seeds):
            lcfg = replace(learner_cfg, seed=seed)
            for m in cfg.methods:
                extra = {}
                t0 = time.perf_counter()
                if m == "floor":
                    delta, tokens, secs = None, {}, 0.0
                elif m == "cns":
                    learner = CNSLearner(base, store, req, replace(lcfg, steps=cfg.cns_steps), general)
                    while learner.step_index < learner.total_steps:
                        learner.step()
                    st = learner.result()
                    delta, tokens, secs = st.delta, st.tokens, time.perf_counter() - t0
                else:
                    kw = {"seed": seed, "general": general}
                    if m == "synthesized_union":
                        kw["landing"] = "union"
                    elif m == "nearest":
                        kw.update(vector=nn_vec, source="nearest")
                        extra["nearest"] = lib_names[nn_row]
                    elif m == "blend":
                        kw.update(vector=bl_vec, source="blend")
                    elif m == "kernel":
                        kw.update(vector=kr_vec, source="kernel")
                    elif m == "synthesized_norm":  # the flow's proposal at the library's typical norms
                        vec = at_library_norms(synth.sample(emb, seed), lib_x, synth.coords.token_dim)
                        kw.update(vector=vec, source="flow at library norms")
                    elif m == "synthesized_t1":
                        kw.update(vector=synth.sample(emb, seed, temperature=1.0), source="flow at temperature 1")
                    elif m == "flow_from_blend":
                        vec = synth.sample(emb, seed, temperature=cfg.start_temperature, start=bl_vec, t_start=cfg.start_t)
                        kw.update(vector=vec, source=f"flow from the blend at t {cfg.start_t}")
                    elif m == "refine":
                        kw["refine_steps"] = cfg.refine_steps
                    st, _, stats = synthesized_state(base, store, req, synth, metric, lcfg, **kw)
                    delta, tokens, secs = st.delta, st.tokens, stats["seconds"]
                    extra["entries"] = stats["entries"]
                scores = _score(base, scorer, c, delta, tokens, m != "floor", cfg, seed, guidance)
                out.append({"concept": c.name, "method": m, "seed": seed, "seconds": round(secs, 4), **scores, **extra})
                print(f"[{c.name} seed {seed + 1}/{cfg.seeds}] {m}: pixel {scores.get('pixel', float('nan')):.3f} "
                      f"readout {scores.get('readout', float('nan')):.3f} ({secs:.2f} s)", flush=True)
    return out


def summarize(rows: list[dict], metrics: tuple[str, ...] = ("clip", "readout", "pixel")) -> dict:
    """Per method: mean and sd over seeds of the per-seed means over concepts; seconds; gain kept vs cns."""
    by = {}
    for r in rows:
        by.setdefault(r["method"], {}).setdefault(r["seed"], []).append(r)
    out = {}
    for m, seeds in by.items():
        row = {}
        for k in (*metrics, "seconds"):
            if k not in next(iter(seeds.values()))[0]:
                continue
            per_seed = [float(np.mean([r[k] for r in rs])) for rs in seeds.values()]
            row[k] = float(np.mean(per_seed))
            row[f"{k}_sd"] = float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else 0.0
        out[m] = row
    if "floor" in out and "cns" in out:
        for m, row in out.items():
            for k in metrics:
                gain = out["cns"].get(k, 0.0) - out["floor"].get(k, 0.0)
                if k in row and abs(gain) > 1e-9:
                    row[f"{k}_gain_kept"] = (row[k] - out["floor"][k]) / gain
    return out
