"""The Generator deployment: one shared base pipeline per replica, tenants multiplexed, swap or mixed batches.

Requests carry their tenant as Serve's multiplexed model id, so a tenant's requests go to replicas that already
hold its state. Every use of the shared pipeline (generation, the weights digest) runs on one worker thread; tenant
loads run beside it (they only read the store). ``batch_mode="swap"`` runs one request at a time with the tenant's
delta swapped into the weights (so a replica never has two tenants' deltas in at once); ``"mixed"`` gathers up to
``max_batch_size`` requests of any tenants (``serve.batch``) into one pipeline call per (size, steps, guidance),
each request's delta added per sample, the weights never written (cns_ray/serve/batch.py). Expected failures come
back as ``{"ok": False, "status", "error": {"message", "type"}}`` so the ingress can answer with the right HTTP
status whatever Ray does to exception types.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor

from ray import serve

from cns_ray.errors import CNSError, InputError
from cns_ray.serve.config import ServingConfig
from cns_ray.serve.swap import GenerationRequest, InjectedFault, ServedTenant, generate_images, weights_digest
from cns_ray.serve.tenant_cache import TenantSlot, TenantUnavailableError

log = logging.getLogger(__name__)


def error_reply(status: int, etype: str, message: str) -> dict:
    return {"ok": False, "status": status, "error": {"message": message, "type": etype}}


def _failure_reply(e: BaseException) -> dict:
    """The reply for a request that failed with ``e`` (the same statuses as the swap path)."""
    if isinstance(e, TenantUnavailableError):
        return error_reply(503, "tenant_unavailable", str(e))
    if isinstance(e, InputError):
        return error_reply(400, "invalid_request", str(e))
    if isinstance(e, InjectedFault):
        return error_reply(500, "generation_failed", str(e))
    if isinstance(e, CNSError):
        return error_reply(500, type(e).__name__, str(e))
    return error_reply(500, "generation_failed", f"generation failed: {type(e).__name__}: {e}")


class GeneratorCore:
    """Everything the deployment does, usable without Serve (the CLI's in-process path and unit tests)."""

    def __init__(self, config: ServingConfig, base=None, store=None):
        import torch

        from cns_ray.config import StoreConfig
        from cns_ray.models import load_base_model

        self.config = config
        if config.torch_threads:
            torch.set_num_threads(config.torch_threads)
        from cns_ray.device import process_device

        cuda = process_device("this generator replica").type == "cuda"
        self.base = base or load_base_model(
            config.base_model, device="cuda" if cuda else "cpu", dtype=torch.float16 if cuda else torch.float32
        )
        self.weights = self.base.target_weights()  # name -> live [out, in]
        self.shapes = self.base.target_shapes()
        if store is None:
            from cns_ray.store import ConceptStore

            store = ConceptStore(StoreConfig(uri=config.store))
        self.store = store
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cns-swap")
        # batches: pipeline calls of the mixed path (requests / batches = its mean batch size)
        self.counters = {"requests": 0, "ok": 0, "failed": 0, "images": 0, "tenant_loads": 0, "batches": 0}
        self.busy_s = 0.0

    # ---------------------------------------------------------------- tenants
    def load_tenant(self, tenant: str, head: int | None = None) -> ServedTenant:
        """The tenant's head state, validated against this base (blocking; raises store/delta errors)."""
        if head is None:
            head = self.store.head(tenant)
        if head is None:
            return ServedTenant.empty(tenant, self.base.base_id)
        state = self.store.load(tenant, head, shapes=self.shapes, base_id=self.base.base_id)
        self.counters["tenant_loads"] += 1
        return ServedTenant.from_state(state, self.base.unet.device, self.base.unet.dtype)

    def new_slot(self, tenant: str) -> TenantSlot:
        return TenantSlot(tenant, self.load_tenant, self.store.head, self.config.refresh_ttl_s)

    # ---------------------------------------------------------------- generation
    def generate_sync(self, served: ServedTenant, req: GenerationRequest) -> list[bytes]:
        """Swap + generate + restore on the calling thread (callers serialise; the deployment uses ``worker``)."""
        t0 = time.perf_counter()
        try:
            return generate_images(self.base, self.weights, served, req, self.config.fault_marker)
        finally:
            self.busy_s += time.perf_counter() - t0

    async def generate(self, slot: TenantSlot, req: GenerationRequest) -> dict:
        self.counters["requests"] += 1
        try:
            served = await slot.current()
            req = req.with_seed()
            loop = asyncio.get_running_loop()
            images = await loop.run_in_executor(self.worker, self.generate_sync, served, req)
        except Exception as e:  # noqa: BLE001 - any failure is one request's, the replica keeps serving
            self.counters["failed"] += 1
            if not isinstance(e, (CNSError, InjectedFault)):
                log.exception("generation failed for tenant %s", slot.tenant)
            return _failure_reply(e)
        self.counters["ok"] += 1
        self.counters["images"] += len(images)
        return {"ok": True, "images": images, "seed": req.seed, "version": served.version, "tenant": slot.tenant}

    def generate_batch_sync(self, items: list[tuple[ServedTenant, GenerationRequest]]) -> list:
        """The mixed path on the calling thread: per item its images, or the exception that failed it.

        Items are validated one by one first (a tenant's foreign or mismatched delta fails only its requests), then
        grouped by (size, steps, guidance); a group that fails fails its items only."""
        from cns_ray.serve.batch import batch_key, generate_batch

        t0 = time.perf_counter()
        out: list = [None] * len(items)
        groups: dict[tuple, list[int]] = {}
        for i, (served, req) in enumerate(items):
            try:
                served.delta.validate(self.shapes, self.base.base_id, check_entries=False)
            except CNSError as e:
                out[i] = e
                continue
            groups.setdefault(batch_key(req, self.base.resolution), []).append(i)
        try:
            for idx in groups.values():
                try:
                    images = generate_batch(self.base, self.weights, [items[i] for i in idx], self.config.fault_marker)
                except Exception as e:  # noqa: BLE001 - a failed group fails its own requests only
                    if not isinstance(e, (CNSError, InjectedFault)):
                        log.exception("mixed batch of %d failed", len(idx))
                    images = [e] * len(idx)
                for i, im in zip(idx, images):
                    out[i] = im
        finally:
            self.busy_s += time.perf_counter() - t0
            self.counters["batches"] += len(groups)
        return out

    async def generate_many(self, pairs: list[tuple[TenantSlot, GenerationRequest]]) -> list[dict]:
        """The mixed path: one reply per (slot, request), generated together on the worker thread."""
        self.counters["requests"] += len(pairs)
        replies: list[dict | None] = [None] * len(pairs)
        ready: list[tuple[int, ServedTenant, GenerationRequest]] = []
        for i, (slot, req) in enumerate(pairs):
            try:
                ready.append((i, await slot.current(), req.with_seed()))
            except TenantUnavailableError as e:
                replies[i] = error_reply(503, "tenant_unavailable", str(e))
        loop = asyncio.get_running_loop()
        results = await loop.run_in_executor(self.worker, self.generate_batch_sync, [(s, r) for _, s, r in ready])
        for (i, served, req), res in zip(ready, results):
            if isinstance(res, BaseException):
                replies[i] = _failure_reply(res)
            else:
                replies[i] = {"ok": True, "images": res, "seed": req.seed, "version": served.version,
                              "tenant": pairs[i][0].tenant}
        for r in replies:
            ok = bool(r and r["ok"])
            self.counters["ok" if ok else "failed"] += 1
            if ok:
                self.counters["images"] += len(r["images"])
        return replies

    async def digest(self) -> str:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.worker, weights_digest, self.base)


@serve.deployment(name="Generator", max_ongoing_requests=16, health_check_period_s=10)
class Generator:
    """Serve deployment around :class:`GeneratorCore`; tenant = multiplexed model id."""

    def __init__(self, config: dict):
        from cns_ray.serve.loopback import keep_replica_grpc_on_loopback

        keep_replica_grpc_on_loopback()
        cfg = ServingConfig.from_dict(config)
        self.core = GeneratorCore(cfg)

        async def load_slot(tenant: str) -> TenantSlot:
            return self.core.new_slot(tenant)

        self._slot = serve.multiplexed(max_num_models_per_replica=cfg.max_tenants_per_replica)(load_slot)
        self._batched.set_max_batch_size(cfg.max_batch_size)
        self._batched.set_batch_wait_timeout_s(cfg.batch_wait_timeout_s)

    async def generate(self, request: dict, tenant: str | None = None) -> dict:
        """One request of ``tenant`` (``mixed`` mode: given as an argument; ``swap``: the multiplexed model id).

        In ``mixed`` mode requests carry no multiplexed model id, because Serve's batcher splits a batch by it (one
        model per batch): tenants are then not routed to the replicas that hold them; each replica keeps its own LRU
        of ``max_tenants_per_replica`` states, loaded on first use."""
        tenant = tenant or serve.get_multiplexed_model_id()
        if not tenant:
            return error_reply(400, "invalid_request", "no tenant: call with handle.options(multiplexed_model_id=tenant)")
        if self.core.config.batch_mode == "mixed":
            return await self._batched(tenant, request)
        slot = await self._slot(tenant)
        return await self.core.generate(slot, GenerationRequest(**request))

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _batched(self, tenants: list[str], requests: list[dict]) -> list[dict]:
        """``mixed`` mode: the requests that arrived together, of any tenants, in as few pipeline calls as fit."""
        pairs = [(await self._slot(t), GenerationRequest(**r)) for t, r in zip(tenants, requests)]
        return await self.core.generate_many(pairs)

    async def reload(self) -> dict:
        """Re-read the tenant's head now (on this replica)."""
        tenant = serve.get_multiplexed_model_id()
        slot = await self._slot(tenant)
        try:
            served = await slot.current(force=True)
        except TenantUnavailableError as e:
            return error_reply(503, "tenant_unavailable", str(e))
        return {"ok": True, "tenant": tenant, "version": served.version}

    async def weights_digest(self) -> str:
        """sha256 of the replica's base weights, taken between requests (debug/invariant checks)."""
        return await self.core.digest()

    async def stats(self) -> dict:
        return {**self.core.counters, "busy_s": round(self.core.busy_s, 4), "base_id": self.core.base.base_id}

    async def info(self) -> dict:
        """The served base: its id and native resolution (the default image size)."""
        return {"base_id": self.core.base.base_id, "resolution": self.core.base.resolution, "source": self.core.base.source}
