"""The swap path: the tenant's delta is in the weights during generation, and they are restored bit-exactly after."""

import pytest
import torch

from cns_ray.serve.swap import GenerationRequest, InjectedFault, ServedTenant, generate_images, weights_digest
from serve_states import random_state

REQ = GenerationRequest(prompt="a photo of <tok> dog", steps=2, seed=3)  # size: the base's native resolution


@pytest.fixture(scope="module")
def served(tiny_base):
    st = random_state(tiny_base, "acme", seed=1)
    st.version = 1
    return ServedTenant.from_state(st, "cpu", torch.float32)


def test_generation_uses_the_delta_and_restores_exactly(tiny_base, served):
    weights = tiny_base.target_weights()
    before = weights_digest(tiny_base)
    with_delta = generate_images(tiny_base, weights, served, REQ)
    assert weights_digest(tiny_base) == before
    plain = generate_images(tiny_base, weights, ServedTenant.empty("acme", tiny_base.base_id), REQ)
    assert with_delta != plain  # the delta (and token) changed the image
    assert generate_images(tiny_base, weights, served, REQ) == with_delta  # deterministic per seed


def test_default_size_is_the_base_models_native_resolution(tiny_base, served):
    import io

    from PIL import Image

    weights = tiny_base.target_weights()
    (png,) = generate_images(tiny_base, weights, served, REQ)
    assert Image.open(io.BytesIO(png)).size == (tiny_base.resolution, tiny_base.resolution) == (32, 32)
    wide = GenerationRequest(prompt="a photo of <tok> dog", steps=2, seed=3, height=32, width=64)
    (png,) = generate_images(tiny_base, weights, served, wide)
    assert Image.open(io.BytesIO(png)).size == (64, 32)  # (width, height): an explicit size wins


def test_restored_when_generation_fails_mid_way(tiny_base, served):
    weights = tiny_base.target_weights()
    before = weights_digest(tiny_base)
    req = GenerationRequest(prompt="BOOM <tok>", steps=3, seed=1)
    with pytest.raises(InjectedFault):
        generate_images(tiny_base, weights, served, req, fault_marker="BOOM")
    assert weights_digest(tiny_base) == before


def test_a_delta_for_another_base_is_never_applied(tiny_base, served):
    weights = tiny_base.target_weights()
    before = weights_digest(tiny_base)
    foreign = ServedTenant(tenant="x", version=1, delta=served.delta, tokens={})
    foreign.delta = type(served.delta)("0" * 16, served.delta.shapes, served.delta.layers)
    from cns_ray.errors import BaseMismatchError

    with pytest.raises(BaseMismatchError):
        generate_images(tiny_base, weights, foreign, REQ)
    assert weights_digest(tiny_base) == before
