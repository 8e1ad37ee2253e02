"""Erasure of one concept: plan the replay, then swap the rebuilt state in and remove every version that held it.

``delete`` keeps what the concept left on neurons it shared, in later concepts' values (they were learned on top
of it) and in every older version. A purge instead rebuilds the tenant's state as if the concept had never been
learned: start from the last version before it was added (or from nothing), drop concepts deleted since, replay
every later concept's learning from its stored inputs (``stats["inputs"]``, recorded by each learning run), commit
that as the new head (on the head the plan was made on: a concurrent change is a conflict, and nothing changes),
then remove every kept version that holds the concept. The replay itself runs as a Ray task
(:mod:`cns_ray.jobs.purge`), in a scratch tenant that is deleted afterwards.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from cns_ray.errors import InputError, NotFoundError
from cns_ray.store.commit import head_for_write
from cns_ray.store.gc import drop_versions
from cns_ray.store.head import ranges_iter
from cns_ray.store.names import validate_name
from cns_ray.store.state import TenantState

if TYPE_CHECKING:
    from cns_ray.store.store import ConceptStore

log = logging.getLogger(__name__)

INPUTS_KEY = "inputs"


@dataclass
class PurgePlan:
    tenant: str
    concept: str
    head: int
    """The head the plan was made on: the rebuilt state is committed on it."""
    start: int | None
    """The version the replay starts from (the last one before the concept was added); None: from nothing."""
    drop_first: list[str] = field(default_factory=list)
    """Concepts in ``start`` that the head no longer has (deleted since): deleted before the replay."""
    replay: list[dict] = field(default_factory=list)
    """Later concepts in learning order: {"name", "token", "class_word", "inputs"}."""


def plan_purge(store: "ConceptStore", tenant: str, name: str) -> PurgePlan:
    validate_name(name, "concept")
    state = store.load(tenant)
    names = [c.name for c in state.concepts]
    if name not in names:
        raise NotFoundError(f"tenant {tenant!r} has no concept {name!r} at head version {state.version} (concepts: {names}); "
                            "a concept already deleted is still held by old versions: `cns store gc --keep-last` removes them")
    i = names.index(name)
    before, after = names[:i], state.concepts[i + 1:]
    start = None
    for info in reversed(store.history(tenant)):  # the newest version holding exactly what came before it
        if info.version != state.version and name not in info.concepts and [c for c in info.concepts if c in names] == before:
            start = info.version
            break
    start_names = [] if start is None else store.version_entry(tenant, start).concepts
    replay_recs = after if start is not None else [c for c in state.concepts if c.name != name]
    missing = [c.name for c in replay_recs if not (c.stats or {}).get(INPUTS_KEY)]
    if missing:
        raise InputError(f"tenant {tenant!r}: cannot purge {name!r}: concepts {missing} have no stored inputs to replay "
                         "(learned before cns-ray recorded them); relearn them, or use `cns concepts delete` (which "
                         "keeps the concept's values on shared neurons)")
    return PurgePlan(tenant=tenant, concept=name, head=state.version, start=start,
                     drop_first=[n for n in start_names if n not in names],
                     replay=[{"name": c.name, "token": c.token, "class_word": c.class_word, "inputs": c.stats[INPUTS_KEY]}
                             for c in replay_recs])


def finish_purge(store: "ConceptStore", plan: PurgePlan, rebuilt: TenantState) -> tuple[int, list[int]]:
    """Commit ``rebuilt`` (made in a scratch tenant) as the tenant's head on ``plan.head``, then remove every kept
    version holding the concept. Returns (new head version, removed versions)."""
    if rebuilt.concept(plan.concept) is not None:
        raise InputError(f"the rebuilt state of tenant {plan.tenant!r} still holds {plan.concept!r}; nothing was changed")
    replayed = {r["name"] for r in plan.replay}
    concepts = [replace(c, version_added=None) if c.name in replayed else c for c in rebuilt.concepts]
    state = TenantState(tenant=plan.tenant, base_id=rebuilt.base_id, delta=rebuilt.delta, tokens=rebuilt.tokens, concepts=concepts)
    v = store.commit(plan.tenant, state, parent=plan.head,
                     message=f"purge concept {plan.concept}: rebuilt from version {plan.start}, replayed {sorted(replayed)}")
    for _ in range(5):
        head, tag = head_for_write(store, plan.tenant)
        holding = [x for x in ranges_iter(head.live) if x != head.head and plan.concept in store.version_entry(plan.tenant, x, head).concepts]
        if not holding or drop_versions(store, plan.tenant, head, tag, holding, f"purge {plan.concept}"):
            log.info("tenant %s: purged %s -> version %d; removed versions %s", plan.tenant, plan.concept, v, holding)
            return v, holding
    raise InputError(f"tenant {plan.tenant!r}: the head kept moving while removing the versions holding {plan.concept!r}; "
                     "run the purge again to finish (the new head no longer holds it)")


def drop_tenant(store: "ConceptStore", tenant: str) -> None:
    """Delete every file of a (scratch) tenant."""
    store.backend.delete_prefix(store._tkey(tenant))
