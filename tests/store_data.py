"""Hand-built TenantStates from random tensors for store tests (nothing is trained). No pytest import:
child processes in the store tests import this."""

from __future__ import annotations

import torch

from cns_ray.delta import LayerDelta, SparseDelta
from cns_ray.store import ConceptRecord, TenantState

BASE = "0123456789abcdef"
SHAPES = {  # SD-like names, small shapes [out, in]
    "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k": (32, 24),
    "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_v": (32, 24),
    "mid_block.attentions.0.transformer_blocks.0.attn2.to_k": (64, 24),
    "mid_block.attentions.0.transformer_blocks.0.attn2.to_v": (64, 24),
}
DIM = 24


def make_concept(name: str, seed: int, density: float = 0.1, shapes=SHAPES) -> ConceptRecord:
    g = torch.Generator().manual_seed(seed)
    neurons = {}
    for layer, (o, i) in shapes.items():
        mask = torch.rand(o * i, generator=g) < density
        neurons[layer] = mask.nonzero().squeeze(1)  # sorted int64
    return ConceptRecord(name=name, token=f"<{name}>", class_word="dog", neurons=neurons,
                         stats={"steps": 10, "final_loss": 0.25, "seed": seed})


def make_state(tenant: str, names=("rex",), seed: int = 0, shapes=SHAPES, base_id: str = BASE) -> TenantState:
    """A state whose delta is the union of its concepts' neurons with random float32 values."""
    g = torch.Generator().manual_seed(1000 + seed)
    concepts = [make_concept(n, seed * 100 + k, shapes=shapes) for k, n in enumerate(names)]
    layers = {}
    for layer in shapes:
        parts = [c.neurons[layer] for c in concepts if layer in c.neurons]
        if not parts:
            continue
        idx = torch.unique(torch.cat(parts))
        if idx.numel():
            layers[layer] = LayerDelta(idx, torch.randn(idx.numel(), generator=g) * 1e-2)
    delta = SparseDelta(base_id, {n: shapes[n] for n in layers}, layers)
    tokens = {c.token: torch.randn(DIM, generator=g) for c in concepts}
    return TenantState(tenant=tenant, base_id=base_id, delta=delta, tokens=tokens, concepts=concepts)


def assert_same_state(got: TenantState, want: TenantState, value_dtype=torch.float16) -> None:
    """Bit-exact for the stored dtype: indices equal, values equal as ``value_dtype`` bits, tokens equal."""
    assert got.base_id == want.base_id
    assert got.delta.shapes == want.delta.shapes
    assert sorted(got.delta.layers) == sorted(want.delta.layers)
    for n, d in want.delta.layers.items():
        g = got.delta.layers[n]
        assert g.value.dtype == value_dtype
        assert torch.equal(g.index, d.index)
        bits = torch.int16 if value_dtype == torch.float16 else torch.int32
        assert torch.equal(g.value.view(bits), d.value.to(value_dtype).view(bits))
    assert sorted(got.tokens) == sorted(want.tokens)
    for t, e in want.tokens.items():
        assert torch.equal(got.tokens[t], e.float())
    assert [c.name for c in got.concepts] == [c.name for c in want.concepts]
    for gc, wc in zip(got.concepts, want.concepts):
        assert (gc.token, gc.class_word, gc.method, gc.stats) == (wc.token, wc.class_word, wc.method, wc.stats)
        assert sorted(gc.neurons) == sorted(wc.neurons)
        assert all(torch.equal(gc.neurons[n], wc.neurons[n]) for n in wc.neurons)
