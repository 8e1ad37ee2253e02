"""How each compared method learns one concept, on top of a tenant's state in a (local) concept store.

All methods use :class:`cns_ray.learn.CNSLearner`'s training loop; they differ in which weights are trainable and
in ``reg_lambda`` (``token`` trains no weight at all: the token embedding alone). ``cones`` runs
:class:`cns_ray.learn.cones.ConesLearner` (indices only, no token embedding). The fusion baseline learns every concept from the base model (its own tenant) and sums the
deltas at the end (:meth:`SparseDelta.add`).
"""

from __future__ import annotations

import logging

import torch

from cns_ray import select
from cns_ray.config import LearnerConfig, SelectionConfig
from cns_ray.delta import SparseDelta
from cns_ray.errors import InputError
from cns_ray.eval.config import EvalConfig
from cns_ray.learn import CNSLearner, ConceptRequest, make_learner
from cns_ray.neurons import Masks

log = logging.getLogger(__name__)


KV_PRESERVE = {"reg_lambda": 0.01, "preserve_lambda": 3.0}
"""``cns_kv``: CNS with the earlier concepts' keys/values preserved, at an ``L_reg`` weak enough for the weights to
learn: the default ``tiny`` base's own ``cns_defaults.json`` (what ``cns learn`` uses; docs/method-notes.md). Fixed
here rather than in EvalConfig, so the other methods' finished units stay valid; a ``cns_kv`` unit's cache key holds
it (cns_ray/eval/run.py: unit_key)."""


def learner_config(cfg: EvalConfig, method: str, seed: int | None = None) -> LearnerConfig:
    if method == "cones":
        return LearnerConfig(steps=cfg.cones_steps, batch_size=cfg.batch_size, augment=False,
                             seed=cfg.seed if seed is None else seed, method="cones", cones_ratio=cfg.cones_ratio)
    reg = 0.0 if method in ("naive", "cns_noreg", "token") else cfg.reg_lambda
    kv = KV_PRESERVE if method == "cns_kv" else {"reg_lambda": reg}
    return LearnerConfig(
        steps=cfg.steps, token_lr=cfg.token_lr,
        weight_lr=cfg.naive_weight_lr if method == "naive" else cfg.weight_lr, batch_size=cfg.batch_size, **kv,
        augment=False,  # a flip would swap 'left' and 'right' in the captions
        seed=cfg.seed if seed is None else seed, selection=SelectionConfig(select_ratio=cfg.select_ratio),
    )


def random_masks(like: Masks, seed: int) -> Masks:
    """Per layer, as many uniformly random entries as ``like`` holds (the random-neuron baseline)."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for n, m in like.items():
        k = int(m.sum())
        flat = torch.zeros(m.numel(), dtype=torch.bool)
        flat[torch.randperm(m.numel(), generator=gen)[:k]] = True
        out[n] = flat.view(m.shape)
    return out


def all_masks(base) -> Masks:
    return {n: torch.ones(tuple(t.shape), dtype=torch.bool) for n, t in base.targets().items()}


def tenant_for(method: str, sequence: str, concept: str) -> str:
    """Store tenant: one per (method, sequence); the fusion baseline one per concept."""
    return f"{method}-{sequence}-{concept}" if method == "fusion" else f"{method}-{sequence}"


def no_masks(base) -> Masks:
    return {n: torch.zeros(tuple(t.shape), dtype=torch.bool) for n, t in base.targets().items()}


def learn_one(base, store, cfg: EvalConfig, method: str, sequence: str, concept, folder: str, general: Masks,
              seed: int | None = None) -> dict:
    """Learn ``concept`` with ``method`` (learning seed ``seed``, default ``cfg.seed``); commit; returns
    {tenant, version, seconds, nnz_new, final_loss}."""
    from cns_ray.eval.config import METHODS

    if method not in METHODS:
        raise InputError(f"unknown method {method!r}: one of {METHODS}")
    lcfg = learner_config(cfg, method, seed)
    tenant = tenant_for(method, sequence, concept.name)
    req = ConceptRequest(tenant=tenant, concept=concept.name, class_word=concept.class_word, images=folder,
                         token=concept.token)
    masks = None
    if method == "naive":
        masks = all_masks(base)
    elif method == "token":
        masks = no_masks(base)
    elif method == "random":
        from cns_ray.learn.data import load_concept

        data = load_concept(folder, concept.class_word, concept.token, base.resolution, None, False)
        cns_sel = select.select_concept(base, data.captions, general, lcfg.selection)
        masks = random_masks(cns_sel.concept, seed=lcfg.seed * 7919 + sum(map(ord, concept.name)))
    if method == "cones":
        learner = make_learner(base, store, req, lcfg)
    else:
        learner = CNSLearner(base, store, req, lcfg, general, masks=masks)
    while learner.step_index < learner.total_steps:
        learner.step()
    version = learner.commit()
    stats = learner.stats()
    nnz = stats["nnz"] if method == "cones" else int(sum(i.numel() for i in learner.indices.values()))
    return {"tenant": tenant, "version": version, "seconds": learner.seconds + learner.select_seconds,
            "nnz_new": int(nnz), "final_loss": stats["final_loss_mean10"]}


def shut_sets(state) -> dict[str, dict[str, torch.Tensor]]:
    """A state's Cones concepts as serving holds them: placeholder -> layer -> indices (empty for other methods)."""
    return {c.token: dict(c.neurons) for c in state.concepts if c.method == "cones" and not c.stats.get("joint_of")}


def fused(states: list) -> tuple[SparseDelta, dict[str, torch.Tensor]]:
    """The fusion baseline's served state: the sum of independent deltas and the union of their tokens."""
    if not states:
        raise InputError("fusion needs at least one learned state")
    delta = states[0].delta
    tokens = dict(states[0].tokens)
    for s in states[1:]:
        delta = delta.add(s.delta)
        tokens.update(s.tokens)
    return delta, tokens
