"""The per-tenant learning scheduler: a detached, named async Ray actor.

Per tenant, requests run strictly in submission order (one queue per tenant, each job carries a sequence number),
each on the previous one's committed head; different tenants run concurrently, each run a Ray task (``num_cpus=0``)
calling :func:`cns_ray.jobs.train.run_learning`, so concurrency is bounded by the Train workers' resources. A
purge (HTTP ``POST /v1/concepts/{name}/purge``) is a job of the same queue (:func:`cns_ray.jobs.purge.purge_concept`),
so it plans on what the tenant's earlier jobs committed and no learning run of the tenant races it. A failed job is
marked failed with its error and the tenant's next job still runs.

Placement on a cluster: the actor lives on the head node (``node:__internal_head__``, as Ray Train's own state
actor), and each job's driver task runs on the actor's node, so Ray Train's controller (placed on its driver's node)
is there too. Losing a GPU node then costs only the Train workers on it, which Ray Train restarts elsewhere from the
run's last checkpoint (``FailureConfig``); the queue and the runs' drivers survive.

The actor never blocks its event loop: it awaits object refs. Job records live in the actor's memory: they are lost
if the actor dies (committed versions are in the store and are not).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from dataclasses import asdict, dataclass, field

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

log = logging.getLogger(__name__)

NAMESPACE = "cns"
NAME = "cns-scheduler"
STATES = ("queued", "running", "succeeded", "failed")
HEAD_RESOURCE = "node:__internal_head__"
"""A resource only the head node has (Ray sets it); a sliver of it pins the scheduler actor there."""


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{int(time.time() * 1000) % 1000:03d}Z"


@dataclass
class JobRecord:
    """What ``status`` returns (as a dict)."""

    id: str
    tenant: str
    concept: str
    seq: int
    """Position in the tenant's queue (1, 2, ...): the order the tenant's jobs run and commit in."""
    kind: str = "learn"
    """``learn`` (a concept learned and committed) or ``purge`` (``concept`` erased by replaying the later ones)."""
    state: str = "queued"
    step: int = 0
    total: int = 0
    loss: float | None = None
    version: int | None = None
    parent: int | None = None
    error: str | None = None
    detail: dict | None = None
    """A purge's outcome: the versions it removed and the concepts it replayed."""
    submitted_at: str = field(default_factory=_now)
    started_at: str | None = None
    finished_at: str | None = None


@ray.remote(num_cpus=0, max_retries=0)
def _run_job(request_dict: dict, cfg_dict: dict, store_uri: str, base_model: str, job_id: str, scheduler) -> int:
    """One job on the cluster: run_learning, progress pushed to the scheduler."""
    from cns_ray.config import LearnerConfig
    from cns_ray.jobs.train import run_learning
    from cns_ray.learn import ConceptRequest

    def status_cb(step: int, total: int, loss: float) -> None:
        scheduler.update.remote(job_id, step, total, loss)

    return run_learning(
        ConceptRequest(**request_dict),
        LearnerConfig.from_dict(cfg_dict),
        store_uri,
        base_model,
        run_name=f"{request_dict['concept']}-{job_id}",
        status_cb=status_cb,
    )


@ray.remote(num_cpus=0, max_retries=0)
def _run_purge(tenant: str, concept: str, store_uri: str, base_model: str, num_cpus: float) -> dict:
    """One purge on the cluster (cns_ray/jobs/purge.py: the replay is a Ray task of its own): {version, removed, replayed}."""
    from cns_ray.jobs.purge import purge_concept

    return purge_concept(store_uri, base_model, tenant, concept, num_cpus=num_cpus)


def _error_text(e: BaseException) -> str:
    """The user-facing cause of a failed task (RayTaskError wraps the original exception)."""
    cause = getattr(e, "cause", None)
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {cause}"
    return f"{type(e).__name__}: {e}"


class LearnScheduler:
    """Async actor body; create it with :func:`get_or_create_scheduler`."""

    def __init__(self, store_uri: str, base_model: str) -> None:
        self.store_uri = store_uri
        self.base_model = base_model
        self._jobs: dict[str, JobRecord] = {}
        self._queues: dict[str, deque[tuple[str, dict, dict]]] = {}
        self._seq: dict[str, int] = {}
        self._runners: dict[str, asyncio.Task] = {}
        self._done: dict[str, asyncio.Event] = {}

    def config(self) -> dict:
        return {"store_uri": self.store_uri, "base_model": self.base_model}

    async def submit(self, request_dict: dict, cfg_dict: dict) -> str:
        """Queue a learning request (``ConceptRequest`` and ``LearnerConfig`` as dicts); returns the job id."""
        for key in ("tenant", "concept", "class_word", "images"):
            if not request_dict.get(key):
                raise ValueError(f"request is missing {key!r}: give tenant, concept, class_word and images")
        return self._queue("learn", request_dict["tenant"], request_dict["concept"], dict(request_dict), dict(cfg_dict))

    async def submit_purge(self, tenant: str, concept: str, num_cpus: float = 1.0) -> str:
        """Queue the erasure of ``concept`` (``cns concepts purge``) behind the tenant's queued jobs; returns the job id.

        In the tenant's queue like a learning job, so a purge never races a learning run of the same tenant: it plans
        on the head the jobs before it committed. ``num_cpus``: the replay task's CPUs."""
        if not tenant or not concept:
            raise ValueError(f"purge needs a tenant and a concept, got tenant={tenant!r}, concept={concept!r}")
        return self._queue("purge", tenant, concept, {"tenant": tenant, "concept": concept, "num_cpus": float(num_cpus)}, {})

    def _queue(self, kind: str, tenant: str, concept: str, request: dict, cfg: dict) -> str:
        job_id = uuid.uuid4().hex[:12]
        self._seq[tenant] = self._seq.get(tenant, 0) + 1
        self._jobs[job_id] = JobRecord(job_id, tenant, concept, self._seq[tenant], kind=kind)
        self._done[job_id] = asyncio.Event()
        self._queues.setdefault(tenant, deque()).append((job_id, request, cfg))
        runner = self._runners.get(tenant)
        if runner is None or runner.done():
            self._runners[tenant] = asyncio.get_running_loop().create_task(self._drain(tenant))
        log.info("queued %s job %s: %s/%s (#%d)", kind, job_id, tenant, concept, self._seq[tenant])
        return job_id

    async def _drain(self, tenant: str) -> None:
        me = ray.get_runtime_context().current_actor
        queue = self._queues[tenant]
        # The job's driver on this actor's node (the head): a lost worker node must not take the run's driver along.
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
        while queue:
            job_id, req, cfg = queue.popleft()
            rec = self._jobs[job_id]
            rec.state, rec.started_at = "running", _now()
            try:
                if rec.kind == "purge":
                    out = await _run_purge.options(scheduling_strategy=here).remote(
                        tenant, rec.concept, self.store_uri, self.base_model, req["num_cpus"])
                    rec.version, rec.detail = out["version"], {"removed": out["removed"], "replayed": out["replayed"]}
                else:
                    rec.version = await _run_job.options(scheduling_strategy=here).remote(req, cfg, self.store_uri, self.base_model, job_id, me)
                rec.state = "succeeded"
                rec.step = rec.total or rec.step
            except Exception as e:  # noqa: BLE001 - any failure marks the job failed; the queue goes on
                rec.state, rec.error = "failed", _error_text(e)
                log.warning("job %s (%s/%s) failed: %s", job_id, tenant, rec.concept, rec.error)
            rec.finished_at = _now()
            self._done[job_id].set()

    async def update(self, job_id: str, step: int, total: int, loss: float) -> None:
        rec = self._jobs.get(job_id)
        if rec is not None and rec.state == "running":
            rec.step, rec.total, rec.loss = int(step), int(total), float(loss)

    async def status(self, job_id: str) -> dict:
        rec = self._jobs.get(job_id)
        if rec is None:
            raise KeyError(f"no job {job_id!r}: list jobs with `cns jobs list` or scheduler.list()")
        return asdict(rec)

    async def list(self, tenant: str | None = None) -> list[dict]:
        return [asdict(r) for r in self._jobs.values() if tenant is None or r.tenant == tenant]

    async def wait(self, job_id: str, timeout: float | None = None) -> dict:
        """Wait until the job finishes (or ``timeout`` seconds); returns its status."""
        if job_id not in self._done:
            raise KeyError(f"no job {job_id!r}")
        try:
            await asyncio.wait_for(self._done[job_id].wait(), timeout)
        except asyncio.TimeoutError:
            pass
        return asdict(self._jobs[job_id])


def get_or_create_scheduler(store_uri: str, base_model: str, namespace: str = NAMESPACE, name: str = NAME):
    """The detached scheduler actor handle (created on first use; needs a connected Ray).

    A scheduler is bound to one store and base model; asking for an existing one with other settings raises.
    """
    from cns_ray.errors import ConfigError
    from cns_ray.jobs.train import _absolute

    store_uri = _absolute(store_uri)
    actor_cls = ray.remote(num_cpus=0, max_concurrency=1000, resources={HEAD_RESOURCE: 0.001})(LearnScheduler)
    handle = actor_cls.options(name=name, namespace=namespace, lifetime="detached", get_if_exists=True).remote(
        store_uri, base_model
    )
    have = ray.get(handle.config.remote())
    if have != {"store_uri": store_uri, "base_model": base_model}:
        raise ConfigError(
            f"scheduler {namespace}/{name} already runs with {have}, not store_uri={store_uri!r} "
            f"base_model={base_model!r}: use another name, or the same store and base model"
        )
    return handle
