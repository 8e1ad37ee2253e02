"""The mixed-tenant batch path: any mix of tenants in one pipeline call, the same images as the swap path (up to
float rounding), and the shared weights never written."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from cns_ray.delta import SparseDelta
from cns_ray.errors import BaseMismatchError, InputError
from cns_ray.serve.batch import batch_key, generate_batch
from cns_ray.serve.swap import GenerationRequest, ServedTenant, generate_images, weights_digest
from serve_states import random_state


def _served(base, tenant, seed, tokens=("<tok>",)):
    st = random_state(base, tenant, seed=seed, tokens=tokens, density=0.02, scale=0.2)
    st.version = 1
    return ServedTenant.from_state(st, "cpu", torch.float32)


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


@pytest.fixture(scope="module")
def tenants(tiny_base):
    return {"acme": _served(tiny_base, "acme", 1), "bravo": _served(tiny_base, "bravo", 2),
            "empty": ServedTenant.empty("empty", tiny_base.base_id)}


def test_a_mixed_batch_gives_each_request_its_swap_path_image(tiny_base, tenants):
    weights = tiny_base.target_weights()
    before = weights_digest(tiny_base)
    reqs = [
        (tenants["acme"], GenerationRequest(prompt="a large <tok> shape at the center on a grey background", steps=3, seed=5)),
        (tenants["bravo"], GenerationRequest(prompt="a large <tok> shape at the center on a grey background", steps=3, seed=5, n=2)),
        (tenants["empty"], GenerationRequest(prompt="a small red circle shape at the left on a white background", steps=3, seed=9)),
        (tenants["acme"], GenerationRequest(prompt="a small <tok> shape at the right on a black background", steps=3, seed=7)),
    ]
    batched = generate_batch(tiny_base, weights, reqs)
    assert weights_digest(tiny_base) == before  # nothing was written
    assert [len(b) for b in batched] == [1, 2, 1, 1]
    for (served, req), got in zip(reqs, batched):
        alone = generate_images(tiny_base, weights, served, req)
        for a, b in zip(got, alone):
            diff = np.abs(_pixels(a) - _pixels(b))
            assert diff.max() <= 2 and diff.mean() < 0.05, (served.tenant, req.prompt, diff.max(), diff.mean())
    # the same request alone in a batch: same image as inside the mixed batch (up to rounding)
    (solo,) = generate_batch(tiny_base, weights, [reqs[1]])
    assert all(np.abs(_pixels(a) - _pixels(b)).max() <= 1 for a, b in zip(solo, batched[1]))
    # and the deltas matter: acme and bravo differ on the same prompt and seed
    assert np.abs(_pixels(batched[0][0]) - _pixels(batched[1][0])).max() > 10


def test_refuses_mixed_sizes_missing_seeds_and_foreign_deltas(tiny_base, tenants):
    weights = tiny_base.target_weights()
    before = weights_digest(tiny_base)
    a = GenerationRequest(prompt="x", steps=2, seed=1)
    with pytest.raises(InputError, match="group by batch_key"):
        generate_batch(tiny_base, weights, [(tenants["acme"], a), (tenants["bravo"], GenerationRequest(prompt="x", steps=3, seed=1))])
    with pytest.raises(InputError, match="seed"):
        generate_batch(tiny_base, weights, [(tenants["acme"], GenerationRequest(prompt="x", steps=2))])
    foreign = ServedTenant("x", 1, SparseDelta("0" * 16, tenants["acme"].delta.shapes, tenants["acme"].delta.layers), {})
    with pytest.raises(BaseMismatchError):
        generate_batch(tiny_base, weights, [(tenants["acme"], a), (foreign, a)])
    assert weights_digest(tiny_base) == before
    assert batch_key(a, 32) == (32, 32, 2, 7.5) and generate_batch(tiny_base, weights, []) == []


def _untouched(base) -> bool:
    """No target layer left routed (instance forward) or hooked."""
    return all(not m._forward_hooks and "forward" not in m.__dict__ for m in base.target_modules().values())


def test_layers_are_back_after_a_failure(tiny_base, tenants):
    weights = tiny_base.target_weights()
    before = weights_digest(tiny_base)
    req = GenerationRequest(prompt="a <tok>", steps=2, seed=1, height=30)  # not a multiple of the latent scale
    for items in ([(tenants["acme"], req)], [(tenants["acme"], req), (tenants["bravo"], req)]):  # swap, per sample
        with pytest.raises(Exception):
            generate_batch(tiny_base, weights, items)
        assert _untouched(tiny_base) and weights_digest(tiny_base) == before
    bad = GenerationRequest(prompt="a <tok> FAULT", steps=3, seed=1)  # fails mid-generation, layers routed
    with pytest.raises(Exception):
        generate_batch(tiny_base, weights, [(tenants["acme"], bad), (tenants["bravo"], bad)], fault_marker="FAULT")
    assert _untouched(tiny_base) and weights_digest(tiny_base) == before


def test_one_tenant_state_is_swapped_in_and_gives_the_swap_path_image_bit_for_bit(tiny_base, tenants):
    """A batch of one (or of one tenant's requests) runs with the delta swapped in, as the swap path: same PNG
    bytes, weights bit-identical after, also when the call fails mid-way."""
    weights = tiny_base.target_weights()
    before = weights_digest(tiny_base)
    req = GenerationRequest(prompt="a large <tok> shape at the center on a grey background", steps=3, seed=5)
    (solo,) = generate_batch(tiny_base, weights, [(tenants["acme"], req)])
    assert solo == generate_images(tiny_base, weights, tenants["acme"], req)
    two = GenerationRequest(prompt="a small <tok> shape at the right on a black background", steps=3, seed=7)
    burst = generate_batch(tiny_base, weights, [(tenants["acme"], req), (tenants["acme"], two)])
    assert np.abs(_pixels(burst[1][0]) - _pixels(generate_images(tiny_base, weights, tenants["acme"], two)[0])).max() <= 1
    assert weights_digest(tiny_base) == before
    bad = GenerationRequest(prompt="a <tok> FAULT", steps=3, seed=1)
    with pytest.raises(Exception):
        generate_batch(tiny_base, weights, [(tenants["acme"], bad)], fault_marker="FAULT")
    assert weights_digest(tiny_base) == before
    assert _untouched(tiny_base)

