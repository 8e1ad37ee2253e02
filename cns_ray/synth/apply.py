"""Where a synthesized state lands, and its commit: a tenant's new concept without training.

The concept's images and captions are read, named and checked exactly as ``cns learn`` does (the same
:class:`~cns_ray.learn.learner.CNSLearner` set-up, so bad input is refused the same way and nothing is committed).
The synthesizer's vector is placed on one of two supports (``landing``):

- ``cns`` (default): the concept neurons CNS selects from the captions alone (base AND NOT general), known without
  training; the vector's values where it has them, 0 on the rest;
- ``union``: the synthesizer's own coordinates (the union of the library's supports).

Values are added on top of the tenant's current weights (``W^(m-1) + d``), the token starts from the class word's
embedding plus the synthesized offset. ``refine_steps > 0`` then runs that many CNS learning steps warm-started
from there. The concept is recorded with method ``synthesized``; serving treats it like a CNS concept.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace

import torch

from cns_ray.config import LearnerConfig
from cns_ray.errors import InputError
from cns_ray.learn.learner import CNSLearner, ConceptRequest
from cns_ray.store import TenantState
from cns_ray.synth.library import reference_embedding
from cns_ray.synth.synthesizer import Synthesizer

log = logging.getLogger(__name__)

LANDINGS = ("cns", "union")
METHOD = "synthesized"


def synthesized_state(base, store, request: ConceptRequest, synth: Synthesizer, metric, cfg: LearnerConfig, *,
                      seed: int = 0, landing: str = "cns", refine_steps: int = 0, general=None,
                      vector: torch.Tensor | None = None, source: str = "flow",
                      propose: Callable[[torch.Tensor], torch.Tensor] | None = None) -> tuple[TenantState, CNSLearner, dict]:
    """(the tenant's new state, not committed; the learner holding its parent; stats). ``cfg``: resolved learning
    settings (its lrs are used by ``refine_steps``); ``vector``: a state vector to land instead of sampling one
    (the baselines), named by ``source``; ``propose``: embedding [c] -> state vector [D] on the synthesizer's
    coordinates, called with the references' embedding instead of sampling (e.g. the library's blend)."""
    problems = []
    if landing not in LANDINGS:
        problems.append(f"landing={landing!r} must be one of {list(LANDINGS)}")
    if refine_steps < 0:
        problems.append(f"refine_steps={refine_steps} must be >= 0 (0: no training)")
    if problems:
        raise InputError("; ".join(problems))
    synth.check_base(base.base_id)  # before anything reads the tenant
    t0 = time.perf_counter()
    cfg = replace(cfg, steps=max(refine_steps, 1), method="cns")
    learner = CNSLearner(base, store, request, cfg, general, masks=synth.coords.masks() if landing == "union" else None)
    if learner.token_embedding.numel() != synth.coords.token_dim:
        raise InputError(f"the text encoder's width is {learner.token_embedding.numel()}, the synthesizer's token has "
                         f"{synth.coords.token_dim}: it was made for another base")
    images = learner.data.batch(torch.arange(len(learner.data)), None, augment=False)  # [N, 3, R, R]
    embedding = reference_embedding(metric, images)
    if vector is None:
        vector = propose(embedding) if propose is not None else synth.sample(embedding, seed)
    layer_values, token_offset = synth.coords.split(vector)
    covered = 0
    with torch.no_grad():
        for n, idx in learner.indices.items():
            d = synth.coords.values_at(layer_values, n, idx.cpu())  # [nnz]
            covered += int((d != 0).sum())
            learner.values[n].add_(d.to(learner.values[n].device, learner.values[n].dtype))
        learner.token_embedding.add_(token_offset.to(learner.token_embedding.dtype))
    synth_s = time.perf_counter() - t0
    for _ in range(refine_steps):
        learner.step()
    state = learner.result()
    rec = state.concepts[-1]
    rec.method = METHOD
    stats = {"source": source, "seed": int(seed), "landing": landing, "refine_steps": int(refine_steps),
             "synth_seconds": round(synth_s, 4), "seconds": round(time.perf_counter() - t0, 4),
             "entries": int(sum(i.numel() for i in learner.indices.values())), "entries_with_values": covered,
             "synthesizer_base_id": synth.base_id, "library_size": synth.meta.get("library_size")}
    rec.stats = {**{k: v for k, v in rec.stats.items() if k in ("n_images", "nnz", "parent_version", "final_loss")},
                 "synthesis": stats}
    return state, learner, stats


def synthesize_concept(base, store, request: ConceptRequest, synth: Synthesizer, metric, cfg: LearnerConfig, **kw) -> tuple[int, dict]:
    """Synthesize ``request``'s concept and commit it as the tenant's next version: (version, stats)."""
    state, learner, stats = synthesized_state(base, store, request, synth, metric, cfg, **kw)
    version = store.commit(request.tenant, state, parent=learner.parent_version,
                           message=f"synthesize {request.concept} ({stats['landing']}, {stats['refine_steps']} refine steps)")
    log.info("tenant %s: synthesized %s -> version %d in %.2f s", request.tenant, request.concept, version, stats["seconds"])
    return version, stats
