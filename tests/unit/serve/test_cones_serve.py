"""Serving Cones concepts: shut (zero) their neurons when the prompt names them, shut wins over the CNS delta,
concatenation shuts the union, weights bit-identical after, swap and mixed paths agree."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from cns_ray.errors import DeltaValidationError
from cns_ray.serve.batch import generate_batch
from cns_ray.serve.swap import GenerationRequest, ServedTenant, generate_images, weights_digest
from cns_ray.store import ConceptRecord
from serve_states import random_state

PROMPT = "a large {} shape at the center on a grey background"


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


def _cones(base, name, seed, density=0.2, overlap_with=None):
    g = torch.Generator().manual_seed(seed)
    neurons, shapes = {}, {}
    for n, (o, i) in base.target_shapes().items():
        idx = torch.randperm(o * i, generator=g)[: int(o * i * density)]
        if overlap_with is not None and n in overlap_with:
            idx = torch.cat([idx, overlap_with[n][:5]])  # some entries the CNS delta also changes
        neurons[n], shapes[n] = torch.unique(idx), (o, i)
    return ConceptRecord(name=name, token=f"<{name}>", class_word="shape", neurons=neurons, method="cones", shapes=shapes)


@pytest.fixture(scope="module")
def served(tiny_base):
    st = random_state(tiny_base, "acme", seed=1, density=0.02, scale=0.2)
    cns_idx = {n: d.index for n, d in st.delta.layers.items()}
    st.concepts += [_cones(tiny_base, "kit", 3, overlap_with=cns_idx), _cones(tiny_base, "bo", 4)]
    st.version = 1
    return ServedTenant.from_state(st, "cpu", torch.float32), st


def _watch(weights, seen):
    def on_step():
        seen.append({n: w.detach().clone() for n, w in weights.items()})
    return on_step


def test_named_concept_is_shut_and_shut_wins_and_restored(tiny_base, served):
    tenant, st = served
    weights = tiny_base.target_weights()
    base = {n: w.detach().clone() for n, w in weights.items()}
    before = weights_digest(tiny_base)
    seen = []
    generate_images(tiny_base, weights, tenant, GenerationRequest(prompt=PROMPT.format("<kit> <tok>"), steps=2, seed=1),
                    on_step=_watch(weights, seen))
    assert weights_digest(tiny_base) == before
    live = seen[0]
    kit = st.concept("kit").neurons
    for n, w in live.items():
        flat, b = w.reshape(-1), base[n].reshape(-1)
        assert bool((flat[kit[n]] == 0).all()), n  # zero, also where the CNS delta has an entry
        cns = st.delta.layers[n]
        only_cns = ~torch.isin(cns.index, kit[n])
        assert torch.equal(flat[cns.index[only_cns]], b[cns.index[only_cns]] + cns.value[only_cns])
        assert bool(torch.isin(cns.index, kit[n]).any())  # the overlap this test is about exists


def test_unnamed_concept_is_not_shut_and_two_named_shut_the_union(tiny_base, served):
    tenant, st = served
    weights = tiny_base.target_weights()
    seen = []
    req = GenerationRequest(prompt=PROMPT.format("<tok>"), steps=1, seed=1)
    generate_images(tiny_base, weights, tenant, req, on_step=_watch(weights, seen))
    n = next(iter(weights))
    kit = st.concept("kit").neurons[n]
    assert int((seen[0][n].reshape(-1)[kit] == 0).sum()) < kit.numel() // 2
    seen.clear()
    generate_images(tiny_base, weights, tenant, GenerationRequest(prompt="<kit> and <bo> together", steps=1, seed=1),
                    on_step=_watch(weights, seen))
    both = torch.unique(torch.cat([kit, st.concept("bo").neurons[n]]))
    assert bool((seen[0][n].reshape(-1)[both] == 0).all())


def test_placeholder_dropped_from_text():
    t = ServedTenant.empty("acme", "b")
    t.shut = {"<kit>": {}, "<kit2>": {}}
    assert t.cones_in("a <kit2> and <kit> dog") == ("a and dog", ["<kit2>", "<kit>"])


def test_swap_and_mixed_agree_and_shutting_changes_the_image(tiny_base, served):
    tenant, _ = served
    weights = tiny_base.target_weights()
    before = weights_digest(tiny_base)
    reqs = [(tenant, GenerationRequest(prompt=PROMPT.format("<kit>"), steps=3, seed=5)),
            (tenant, GenerationRequest(prompt=PROMPT.format(""), steps=3, seed=5))]
    batched = generate_batch(tiny_base, weights, reqs)
    assert weights_digest(tiny_base) == before
    for (t, req), got in zip(reqs, batched):
        alone = generate_images(tiny_base, weights, t, req)
        diff = np.abs(_pixels(got[0]) - _pixels(alone[0]))
        assert diff.max() <= 2 and diff.mean() < 0.05, (req.prompt, diff.max(), diff.mean())
    assert np.abs(_pixels(batched[0][0]) - _pixels(batched[1][0])).max() > 10  # shutting 20% of K/V shows


def test_out_of_range_index_set_never_touches_weights(tiny_base, served):
    tenant, st = served
    weights = tiny_base.target_weights()
    before = weights_digest(tiny_base)
    n = next(iter(weights))
    bad = ServedTenant(tenant="acme", version=2, delta=tenant.delta, tokens=tenant.tokens,
                       shut={"<kit>": {n: torch.tensor([0, weights[n].numel()])}})
    with pytest.raises(DeltaValidationError, match="Cones index"):
        generate_images(tiny_base, weights, bad, GenerationRequest(prompt="<kit>", steps=1, seed=1))
    with pytest.raises(DeltaValidationError, match="Cones index"):
        generate_batch(tiny_base, weights, [(bad, GenerationRequest(prompt="<kit>", steps=1, seed=1))])
    assert weights_digest(tiny_base) == before


def test_replica_serves_a_stored_cones_concept_and_refuses_one_of_another_base(tiny_base, tmp_path):
    from cns_ray.config import StoreConfig
    from cns_ray.errors import CorruptStateError
    from cns_ray.serve.config import ServingConfig
    from cns_ray.serve.generator import GeneratorCore
    from cns_ray.store import ConceptStore, TenantState

    store = ConceptStore(StoreConfig(uri=str(tmp_path)))
    core = GeneratorCore(ServingConfig(store=str(tmp_path)), base=tiny_base, store=store)
    good = TenantState.empty("acme", tiny_base.base_id)
    good.concepts.append(_cones(tiny_base, "kit", 5))
    store.commit("acme", good, parent=None)
    served = core.load_tenant("acme")
    assert set(served.shut) == {"<kit>"}
    before = weights_digest(tiny_base)
    req = GenerationRequest(prompt=PROMPT.format("<kit>"), steps=2, seed=3)
    (swap,) = core.generate_sync(served, req)
    assert weights_digest(tiny_base) == before
    (plain,) = core.generate_sync(served, GenerationRequest(prompt=PROMPT.format(""), steps=2, seed=3))
    assert np.abs(_pixels(swap) - _pixels(plain)).max() > 10
    # a Cones concept recorded for other layer shapes (another base) is refused at load, before any request
    other = TenantState.empty("bravo", tiny_base.base_id)
    rec = _cones(tiny_base, "kit", 5)
    rec.shapes = {n: (o * 2, i) for n, (o, i) in rec.shapes.items()}
    other.concepts.append(rec)
    store.commit("bravo", other, parent=None)
    with pytest.raises(CorruptStateError, match="another base model"):
        core.load_tenant("bravo")
    assert weights_digest(tiny_base) == before
