"""``cns concepts purge``: erase a concept by replaying the later concepts' learning without it, as a Ray task.

The driver plans (:func:`cns_ray.store.purge.plan_purge`), a Ray task rebuilds the state in a scratch tenant with the
existing learner (:class:`cns_ray.learn.CNSLearner`, inputs materialised like a learning run's), and the driver
commits the result on the planned head and removes every version that held the concept
(:func:`cns_ray.store.purge.finish_purge`). The scratch tenant is deleted whatever happens.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import asdict

import ray

from cns_ray.config import LearnerConfig, StoreConfig
from cns_ray.errors import BaseMismatchError

log = logging.getLogger(__name__)


def purge_concept(store_uri: str, base_model: str, tenant: str, name: str, *, num_cpus: float = 1.0,
                  env: dict[str, str] | None = None) -> dict:
    """Erase concept ``name`` of ``tenant``. Needs a connected Ray. Returns {"version", "removed", "replayed"}.

    ``env``: environment variables for the replay task (e.g. an S3 endpoint in tests). Do not pass secrets this way
    (a runtime_env is readable through the jobs API): nodes reach S3 with their own IAM role or mounted secrets."""
    from cns_ray.store import ConceptStore
    from cns_ray.store.purge import PurgePlan, finish_purge, plan_purge

    store = ConceptStore(StoreConfig(uri=store_uri))
    plan = plan_purge(store, tenant, name)
    scratch = f"{tenant[:40]}.purge-{uuid.uuid4().hex[:12]}"
    rebuilt = ray.get(_replay.options(num_cpus=num_cpus, runtime_env={"env_vars": env} if env else None).remote(store_uri, base_model, asdict(plan), scratch))
    version, removed = finish_purge(store, PurgePlan(**asdict(plan)), rebuilt)
    return {"version": version, "removed": removed, "replayed": [r["name"] for r in plan.replay]}


@ray.remote(max_retries=0)
def _replay(store_uri: str, base_model: str, plan: dict, scratch: str):
    from cns_ray.models import load_base_model
    from cns_ray.store import ConceptStore
    from cns_ray.store.purge import PurgePlan, drop_tenant
    from cns_ray.store.state import TenantState

    store = ConceptStore(StoreConfig(uri=store_uri))
    p = PurgePlan(**plan)
    base = load_base_model(base_model)
    try:
        if p.start is None:
            parent = None
        else:
            start = store.load(p.tenant, p.start)
            if start.base_id != base.base_id:
                raise BaseMismatchError(f"tenant {p.tenant!r} was learned on base {start.base_id}, --base-model {base_model!r} "
                                        f"is {base.base_id}: give the base model it was learned on")
            copy = TenantState(tenant=scratch, base_id=start.base_id, delta=start.delta, tokens=start.tokens, concepts=start.concepts)
            parent = store.commit(scratch, copy, parent=None, message=f"purge {p.concept}: start from {p.tenant} v{p.start}")
            for n in p.drop_first:
                parent = store.delete_concept(scratch, n)
        for r in p.replay:
            parent = _learn_one(base, store, scratch, r, parent)
        out = store.load(scratch)
        return TenantState(tenant=p.tenant, base_id=out.base_id, delta=out.delta, tokens=out.tokens, concepts=out.concepts)
    finally:
        drop_tenant(store, scratch)


def _learn_one(base, store, scratch: str, r: dict, parent: int | None) -> int:
    """One concept's learning, replayed from its stored inputs on the scratch tenant; its inputs recorded again."""
    from cns_ray.jobs.calibrate import general_masks
    from cns_ray.jobs.inputs import INPUTS_KEY, materialize_images
    from cns_ray.learn import ConceptRequest, make_learner

    inp = r["inputs"]
    cfg = LearnerConfig.from_dict(inp["learner"])
    request = ConceptRequest(tenant=scratch, concept=r["name"], class_word=inp["class_word"], images=inp["images"],
                             token=inp.get("token") or r["token"], captions=inp.get("captions"), parent_version=parent)
    with materialize_images(request.images, store.uri()) as images:
        from dataclasses import replace

        general = general_masks(base, store, cfg.selection) if cfg.method == "cns" else None  # Cones needs none
        learner = make_learner(base, store, replace(request, images=images.path), cfg, general)
        while learner.step_index < learner.total_steps:
            learner.step()
        state = learner.result()
    for rec in state.concepts:
        if rec.name == r["name"]:
            rec.stats = {**rec.stats, INPUTS_KEY: inp, "replayed_for_purge": True}
    log.info("purge replay: learned %s on %s", r["name"], scratch)
    return store.commit(scratch, state, parent=parent, message=f"replay {r['name']}")
