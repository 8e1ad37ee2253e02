"""What a TenantState must satisfy: checked before commit, and again at load and verify (the same checks), plus the
neuron arithmetic of deleting a concept.

Semantic checks (:func:`semantic_problems`): every concept's neurons are sorted, unique, in range and on target
layers; every CNS concept has a token embedding; token embeddings are finite, 1-D and of one width (the text
encoder's, when known); every delta entry lies on some concept's neurons.
"""

from __future__ import annotations

import json

import torch

from cns_ray.errors import DeltaValidationError, InputError
from cns_ray.store.names import validate_name, validate_token
from cns_ray.store.state import DELTA_METHODS, METHODS, ConceptRecord, TenantState

UINT32_LIMIT = 2**32


def check_state(tenant: str, state: TenantState) -> None:
    """Raise once with every problem: names (InvalidNameError), the delta (DeltaValidationError), the rest (InputError)."""
    if state.tenant != tenant:
        raise InputError(
            f"the state belongs to tenant {state.tenant!r} and cannot be committed to tenant {tenant!r}: "
            "a tenant can only write its own state"
        )
    names = []
    for c in state.concepts:
        names.append(validate_name(c.name, "concept"))
        validate_token(c.token)
    for t in state.tokens:
        validate_token(t)
    if state.delta.base_id != state.base_id:
        raise DeltaValidationError(
            [f"delta base_id {state.delta.base_id!r} differs from the state's base_id {state.base_id!r}"],
            source=f"state of tenant {tenant!r}",
        )
    state.delta.validate(state.delta.shapes, source=f"delta of tenant {tenant!r}")
    p = semantic_problems(state)
    if len(set(names)) != len(names):
        p.append(f"concept names repeat: {sorted(n for n in set(names) if names.count(n) > 1)}; give each concept its own name")
    if p:
        raise InputError(f"state of tenant {tenant!r} cannot be committed ({len(p)} problem(s)):\n  - " + "\n  - ".join(p))


def semantic_problems(state: TenantState, shapes: dict | None = None, token_dim: int | None = None) -> list[str]:
    """Every semantic problem of ``state`` ([] if none). ``shapes``: the served base's target layers (default: the
    delta's own); ``token_dim``: the text encoder's width (default: not checked beyond one width)."""
    return _token_problems(state, token_dim) + _concept_problems(state, shapes) + _coverage_problems(state)


def _coverage_problems(state: TenantState) -> list[str]:
    p = []
    for layer, d in state.delta.layers.items():  # Cones concepts hold no delta entries: they cover none
        parts = [c.neurons[layer].long() for c in state.concepts if layer in c.neurons and c.method in DELTA_METHODS]
        idx = d.index.long()
        outside = int((~torch.isin(idx, torch.cat(parts))).sum()) if parts else int(idx.numel())
        if outside:
            p.append(f"layer {layer!r}: {outside} of {idx.numel()} delta entries lie on no concept's neurons "
                     "(a delta is the sum of its concepts' changes); the state is damaged: roll back or relearn")
    return p


def _token_problems(state: TenantState, token_dim: int | None = None) -> list[str]:
    p = []
    widths = set()
    for t, e in state.tokens.items():
        if not isinstance(e, torch.Tensor) or e.dim() != 1 or not e.is_floating_point():
            p.append(f"token {t!r}: embedding must be a 1-D float tensor [D], got {getattr(e, 'shape', type(e))}")
            continue
        widths.add(int(e.numel()))
        if not bool(torch.isfinite(e).all()):
            p.append(f"token {t!r}: embedding has non-finite values; relearn the concept")
    if len(widths) > 1:
        p.append(f"token embeddings have different widths {sorted(widths)}; all must match the text encoder")
    if token_dim is not None and widths - {token_dim}:
        p.append(f"token embeddings have width {sorted(widths)}, the text encoder's is {token_dim}: "
                 "the state was learned with another text encoder; relearn on this base")
    return p


def _concept_problems(state: TenantState, shapes: dict | None = None) -> list[str]:
    p = []
    tokens = [c.token for c in state.concepts]
    for t in sorted({t for t in tokens if tokens.count(t) > 1}):
        p.append(f"token {t!r} is used by several concepts; give each concept its own placeholder")
    for c in state.concepts:
        if c.method not in METHODS:
            p.append(f"concept {c.name!r}: method {c.method!r} must be one of {METHODS}")
        if c.method in DELTA_METHODS and c.token not in state.tokens:
            p.append(f"concept {c.name!r}: its token {c.token!r} has no embedding in the state's tokens")
        try:
            json.dumps(c.stats)
        except (TypeError, ValueError) as e:
            p.append(f"concept {c.name!r}: stats are not JSON-serialisable ({e})")
        for layer, idx in c.neurons.items():
            if shapes is not None and layer not in shapes:
                p.append(f"concept {c.name!r}: neurons on layer {layer!r}, which is not a target layer of this base "
                         f"({len(shapes)} target layers): the state was made for another base model")
                continue
            shape = (shapes or {}).get(layer) or state.delta.shapes.get(layer) or c.shapes.get(layer)
            if shapes is not None and c.shapes.get(layer) is not None and tuple(c.shapes[layer]) != tuple(shapes[layer]):
                p.append(f"concept {c.name!r} layer {layer!r}: recorded shape {tuple(c.shapes[layer])}, the base's is "
                         f"{tuple(shapes[layer])}: the concept was made for another base model")
            p.extend(_neuron_problems(c.name, layer, idx, shape))
    return p


def _neuron_problems(name: str, layer: str, idx: torch.Tensor, shape) -> list[str]:
    where = f"concept {name!r} layer {layer!r}"
    if not isinstance(idx, torch.Tensor) or idx.dim() != 1 or idx.is_floating_point() or idx.dtype == torch.bool:
        return [f"{where}: neurons must be a 1-D integer tensor of flat indices"]
    if idx.numel() == 0:
        return []
    p = []
    limit = shape[0] * shape[1] if shape is not None else UINT32_LIMIT
    if int(idx.min()) < 0 or int(idx.max()) >= limit:
        p.append(f"{where}: index range [{int(idx.min())}, {int(idx.max())}] is outside [0, {limit})")
    if idx.numel() > 1 and not bool((idx[1:] > idx[:-1]).all()):
        p.append(f"{where}: neurons must be sorted ascending and unique (use torch.unique)")
    return p


def drop_for_concept(rec: ConceptRecord, rest: list[ConceptRecord]) -> dict[str, torch.Tensor]:
    """The concept's neurons that none of ``rest`` covers: the delta entries deleting it resets (layer -> indices).
    A Cones concept has no delta entries (nothing to reset); only CNS concepts cover entries."""
    drop = {}
    if rec.method == "cones":
        return drop
    for layer, idx in rec.neurons.items():
        covered = [c.neurons[layer] for c in rest if layer in c.neurons and c.method in DELTA_METHODS]
        idx = idx.long()
        if covered:
            idx = idx[~torch.isin(idx, torch.cat(covered).long())]
        if idx.numel():
            drop[layer] = idx
    return drop
