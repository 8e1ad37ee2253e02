"""The per-tenant scheduler actor: one tenant's concepts commit in submission order; tenants run concurrently;
a failed job (bad input) is marked failed, commits nothing, and the tenant's next job still runs."""

from __future__ import annotations

import uuid
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

import pytest

from cns_ray.config import LearnerConfig, StoreConfig

EXAMPLES = Path(__file__).resolve().parents[2] / "cns_ray" / "data" / "examples"


def _t(s: str) -> datetime:
    return datetime.strptime(s, "%Y-%m-%dT%H:%M:%S.%fZ")


@pytest.mark.slow
def test_per_tenant_order_tenants_in_parallel_and_failures(ray_local, tmp_path):
    import ray

    from cns_ray.jobs.scheduler import get_or_create_scheduler
    from cns_ray.learn import ConceptRequest
    from cns_ray.store import ConceptStore

    store_uri = str(tmp_path / "store")
    store = ConceptStore(StoreConfig(uri=store_uri))
    (tmp_path / "empty").mkdir()
    cfg = LearnerConfig(steps=6, checkpoint_every=3, batch_size=2, cpus_per_worker=0.5, max_failures=1).to_dict()
    sched = get_or_create_scheduler(store_uri, "tiny", namespace="cns-test", name=f"sched-{uuid.uuid4().hex[:6]}")
    try:

        def submit(tenant, concept, images, **kw):
            req = ConceptRequest(tenant, concept, concept, str(images), **kw)
            return ray.get(sched.submit.remote(asdict(req), cfg))

        # Submitted back to back, long before the first run ends.
        a1 = submit("acme", "toy", EXAMPLES / "toy")
        a_bad = submit("acme", "ghost", EXAMPLES / "mug", parent_version=99)  # unknown version: fails at its turn
        a2 = submit("acme", "mug", EXAMPLES / "mug")
        b1 = submit("bravo", "backpack", EXAMPLES / "backpack")
        b_bad = submit("bravo", "void", tmp_path / "empty")  # no images: the learner refuses it inside the worker

        queued = ray.get(sched.status.remote(a2))
        assert queued["state"] == "queued" and queued["seq"] == 3 and queued["version"] is None

        done = {j: ray.get(sched.wait.remote(j, 400)) for j in (a1, a_bad, a2, b1, b_bad)}
        states = {j: (d["concept"], d["state"], d["version"], d["error"]) for j, d in done.items()}
        assert [done[j]["state"] for j in (a1, a2, b1)] == ["succeeded"] * 3, states

        # One tenant: in submission order, each on the previous committed head.
        assert (done[a1]["version"], done[a2]["version"]) == (1, 2)
        hist = store.history("acme")
        assert [(v.version, v.parent) for v in hist] == [(1, None), (2, 1)]
        assert hist[1].concepts == ["toy", "mug"]
        assert _t(done[a1]["finished_at"]) <= _t(done[a_bad]["started_at"]) <= _t(done[a2]["started_at"])

        # Failures: clear errors, nothing committed, and the queue went on (a2 ran after a_bad failed).
        assert done[a_bad]["state"] == "failed" and "99" in done[a_bad]["error"], done[a_bad]
        assert done[b_bad]["state"] == "failed" and "InputError" in done[b_bad]["error"], done[b_bad]
        assert [v.concepts for v in store.history("bravo")] == [["backpack"]]

        # Two tenants concurrently: acme's first run and bravo's first run overlap in time.
        assert _t(done[a1]["started_at"]) < _t(done[b1]["finished_at"])
        assert _t(done[b1]["started_at"]) < _t(done[a1]["finished_at"])

        # Progress reached the scheduler; list() filters by tenant.
        assert done[a2]["total"] == 6 and done[a2]["step"] == 6
        listed = ray.get(sched.list.remote("bravo"))
        assert sorted(j["id"] for j in listed) == sorted([b1, b_bad])
    finally:
        ray.kill(sched)
