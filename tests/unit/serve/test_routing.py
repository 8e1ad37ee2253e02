"""Mixed-mode routing and isolation without Ray Serve running: the tenant-affinity ranking, the generator's
max_ongoing_requests, and a failed mixed call rerun one request at a time."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
import torch

from cns_ray.serve.config import ServingConfig


def _router(monkeypatch, fallback):
    from ray.serve._private.request_router.pow_2_router import PowerOfTwoChoicesRequestRouter

    from cns_ray.serve.routing import TenantAffinityRouter

    async def pow2(self, candidate_replicas, pending_request=None):
        return [fallback]

    monkeypatch.setattr(PowerOfTwoChoicesRequestRouter, "choose_replicas", pow2)
    return object.__new__(TenantAffinityRouter)  # no Serve machinery: only choose_replicas is exercised


def _request(tenant=None, model_id=""):
    return SimpleNamespace(kwargs={"tenant": tenant} if tenant else {}, metadata=SimpleNamespace(multiplexed_model_id=model_id))


def test_replicas_holding_the_tenant_rank_first_then_everyone(monkeypatch):
    a, b, c = (SimpleNamespace(name=n, multiplexed_model_ids=ids) for n, ids in (("a", {"t1"}), ("b", {"t2", "t1"}), ("c", set())))
    router = _router(monkeypatch, [a, b, c])
    run = lambda req: asyncio.run(router.choose_replicas([a, b, c], req))  # noqa: E731
    assert run(_request("t1")) == [[a, b], [a, b, c]]
    assert run(_request("t2")) == [[b], [a, b, c]]
    assert run(_request("t9")) == [[a, b, c]]  # held nowhere: Serve's power-of-two choice, the replica loads it
    assert run(_request()) == [[a, b, c]] and run(None) == [[a, b, c]]
    assert run(_request("t1", model_id="t1")) == [[a, b, c]]  # swap-mode calls: Serve's multiplexed routing


def test_generator_max_ongoing_requests_leaves_room_for_a_queued_batch():
    assert ServingConfig(batch_mode="swap").generator_ongoing() == 16
    assert ServingConfig(batch_mode="mixed", max_batch_size=8).generator_ongoing() == 24
    assert ServingConfig(batch_mode="mixed", max_batch_size=2).generator_ongoing() == 16
    assert ServingConfig(batch_mode="mixed", generator_max_ongoing_requests=5).generator_ongoing() == 5
    from cns_ray.errors import ConfigError

    with pytest.raises(ConfigError, match="generator_max_ongoing_requests=0"):
        ServingConfig(generator_max_ongoing_requests=0)


def test_a_failed_mixed_call_fails_only_the_request_that_fails_alone(tiny_base, tmp_path):
    from serve_states import random_state

    from cns_ray.config import StoreConfig
    from cns_ray.serve.generator import GeneratorCore
    from cns_ray.serve.swap import GenerationRequest, InjectedFault, ServedTenant, weights_digest
    from cns_ray.store import ConceptStore

    core = GeneratorCore(ServingConfig(store=str(tmp_path), fault_marker="FAULT", batch_mode="mixed"), base=tiny_base,
                         store=ConceptStore(StoreConfig(uri=str(tmp_path))))
    served = []
    for i, t in enumerate(("acme", "bravo", "carol")):
        st = random_state(tiny_base, t, seed=i, tokens=(f"<{t}>",))
        st.version = 1
        served.append(ServedTenant.from_state(st, "cpu", torch.float32))
    before = weights_digest(tiny_base)
    reqs = [GenerationRequest(prompt="a <acme> shape", steps=2, seed=1), GenerationRequest(prompt="FAULT <bravo>", steps=2, seed=1),
            GenerationRequest(prompt="a <carol> shape", steps=2, seed=2)]
    out = core.generate_batch_sync(list(zip(served, reqs)))
    assert isinstance(out[1], InjectedFault) and all(isinstance(o, list) and len(o) == 1 for o in (out[0], out[2]))
    assert weights_digest(tiny_base) == before
