"""Tenant states for serving tests, built directly (random small deltas + token embeddings), never trained."""

from __future__ import annotations

import torch

from cns_ray.delta import LayerDelta, SparseDelta


def random_state(base, tenant: str, seed: int, tokens: tuple[str, ...] = ("<tok>",), density: float = 0.05, scale: float = 0.5, base_id: str | None = None):
    """A TenantState of ``base`` with one concept per token; deterministic in ``seed``."""
    from cns_ray.store import ConceptRecord, TenantState

    g = torch.Generator().manual_seed(seed)
    layers, shapes = {}, {}
    for name, (o, i) in base.target_shapes().items():
        numel = o * i
        k = max(1, int(numel * density))
        idx = torch.randperm(numel, generator=g)[:k].sort().values  # [k] int64, sorted unique
        layers[name] = LayerDelta(idx, (torch.randn(k, generator=g) * scale).to(torch.float16).float())
        shapes[name] = (o, i)
    bid = base_id or base.base_id
    delta = SparseDelta(bid, shapes, layers)
    dim = base.text_encoder.get_input_embeddings().weight.shape[1]
    toks = {t: torch.randn(dim, generator=g) * 2 for t in tokens}
    concepts = [
        ConceptRecord(name=t.strip("<>"), token=t, class_word="dog", neurons={n: d.index for n, d in layers.items()})
        for t in tokens
    ]
    return TenantState(tenant=tenant, base_id=bid, delta=delta, tokens=toks, concepts=concepts)
