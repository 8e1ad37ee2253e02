"""The Generator deployment: one shared base pipeline per replica, tenants multiplexed, swap or mixed batches.

Requests carry their tenant as Serve's multiplexed model id, so a tenant's requests go to replicas that already
hold its state. Every use of the shared pipeline (generation, the weights digest) runs on one worker thread; tenant
loads run beside it (they only read the store). ``batch_mode="swap"`` runs one request at a time with the tenant's
delta swapped into the weights (so a replica never has two tenants' deltas in at once); ``"mixed"`` gathers up to
``max_batch_size`` requests of any tenants (``serve.batch``) into one pipeline call per (size, steps, guidance),
each request's delta added per sample, the weights never written (cns_ray/serve/batch.py). Serve's batches are
accepted concurrently and merged by a :class:`~cns_ray.serve.coalesce.Coalescer` into one call at a time: what
waited behind the running call goes into the next one, so calls are full under load.

Replies are typed (cns_ray/serve/results.py): :class:`Generated` or :class:`Failed` with the status and type of
the error table, so the ingress answers with the right HTTP status whatever Ray does to exception types. A request
whose caller goes away (Serve cancels it when the HTTP client disconnects) sets its cancel event: the pipeline
stops after the current denoising step (cns_ray/serve/steps.py) and the worker thread takes the next request.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from ray import serve

from cns_ray.errors import CNSError, InputError, RequestCancelledError, TenantUnavailableError
from cns_ray.serve.coalesce import Coalescer
from cns_ray.serve.config import ServingConfig
from cns_ray.serve.results import Failed, Generated, Reloaded, ReplicaStats
from cns_ray.serve.swap import GenerationRequest, InjectedFault, ServedTenant, generate_images, weights_digest
from cns_ray.serve.tenant_cache import TenantSlot

log = logging.getLogger(__name__)

_EXPECTED = (CNSError, InjectedFault)  # failures that are the request's, not a bug: logged without a traceback
# Serve batches a mixed-mode replica holds at once (each awaits its tenants' loads, then waits in the coalescer). Each
# holds >= 1 request, so 64 never limits a replica of max_ongoing_requests <= 64, and past that 64 batches waiting
# fill any call of up to 64 requests. (Serve logs a warning that max_batch_size x 64 exceeds max_ongoing_requests:
# that sum assumes a call per batch; here batches merge.)
MAX_CONCURRENT_BATCHES = 64


class GeneratorCore:
    """Everything the deployment does, usable without Serve (the CLI's in-process path and unit tests)."""

    def __init__(self, config: ServingConfig, base=None, store=None, name: str = "local"):
        import torch

        from cns_ray.config import StoreConfig
        from cns_ray.models import load_base_model

        self.config = config
        self.name = name
        if config.torch_threads:
            torch.set_num_threads(config.torch_threads)
        from cns_ray.device import process_device

        cuda = process_device("this generator replica").type == "cuda"
        self.base = base or load_base_model(
            config.base_model, device="cuda" if cuda else "cpu", dtype=torch.float16 if cuda else torch.float32
        )
        from cns_ray.serve.safety import configure_safety_checker

        self.safety_checker = configure_safety_checker(self.base, config.safety_checker)
        self.weights = self.base.target_weights()  # name -> live [out, in]
        self.shapes = self.base.target_shapes()
        if store is None:
            from cns_ray.store import ConceptStore

            store = ConceptStore(StoreConfig(uri=config.store))
        self.store = store
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cns-swap")
        self.counters: Counter = Counter()
        self.batch_sizes: Counter = Counter()
        self.load_seconds = 0.0
        self.busy_s = 0.0
        self.busy_cpu_s = 0.0  # the worker thread's CPU time while generating (busy_s - this: waiting for a core)
        self.queued = 0

    def _step(self) -> None:
        self.counters["steps"] += 1

    def stats(self) -> ReplicaStats:
        c = self.counters
        return ReplicaStats(
            replica=self.name, requests=c["requests"], ok=c["ok"], failed=c["failed"], cancelled=c["cancelled"],
            images=c["images"], steps=c["steps"], cache_hits=c["cache_hits"], cache_misses=c["cache_misses"],
            tenant_loads=c["tenant_loads"], tenant_evictions=c["tenant_evictions"], load_seconds=round(self.load_seconds, 6),
            batches=c["batches"], batch_sizes=dict(self.batch_sizes), queued=self.queued, busy_s=round(self.busy_s, 6),
            busy_cpu_s=round(self.busy_cpu_s, 6),
        )

    # ---------------------------------------------------------------- tenants
    def load_tenant(self, tenant: str, head: int | None = None) -> ServedTenant:
        """The tenant's head state, validated against this base (blocking; raises store/delta errors)."""
        t0 = time.perf_counter()
        try:
            if head is None:
                head = self.store.head(tenant)
            if head is None:
                return ServedTenant.empty(tenant, self.base.base_id)
            state = self.store.load(tenant, head, shapes=self.shapes, base_id=self.base.base_id)
            self.counters["tenant_loads"] += 1
            return ServedTenant.from_state(state, self.base.unet.device, self.base.unet.dtype)
        finally:
            self.load_seconds += time.perf_counter() - t0

    def _evicted(self, tenant: str) -> None:
        self.counters["tenant_evictions"] += 1
        log.info("tenant %s evicted from replica %s (LRU)", tenant, self.name)

    def new_slot(self, tenant: str) -> TenantSlot:
        return TenantSlot(tenant, self.load_tenant, self.store.head, self.config.refresh_ttl_s, on_evict=self._evicted)

    # ---------------------------------------------------------------- outcomes
    def failed(self, e: BaseException, tenant: str, request_id: str) -> Failed:
        self.counters["failed"] += 1  # a RequestCancelledError's cancellation was counted where the caller left
        if isinstance(e, _EXPECTED):
            log.warning("request %s of tenant %s failed: %s: %s", request_id, tenant, type(e).__name__, e)
        else:
            log.error("request %s of tenant %s failed", request_id, tenant, exc_info=e)
        return Failed.of(e)

    def _generated(self, images: list[bytes], req: GenerationRequest, served: ServedTenant, tenant: str) -> Generated:
        self.counters["ok"] += 1
        self.counters["images"] += len(images)
        return Generated(images, req.seed, served.version, tenant)  # type: ignore[arg-type]

    # ---------------------------------------------------------------- swap path
    def generate_sync(self, served: ServedTenant, req: GenerationRequest, cancel: threading.Event | None = None) -> list[bytes]:
        """Swap + generate + restore on the calling thread (callers serialise; the deployment uses ``worker``)."""
        t0, c0 = time.perf_counter(), time.thread_time()
        try:
            return generate_images(self.base, self.weights, served, req, self.config.fault_marker, cancel, self._step)
        finally:
            self.busy_s += time.perf_counter() - t0
            self.busy_cpu_s += time.thread_time() - c0

    async def generate(
        self, slot: TenantSlot, req: GenerationRequest, cancel: threading.Event | None = None, request_id: str = ""
    ) -> Generated | Failed:
        self.counters["requests"] += 1
        self.queued += 1
        cancel = cancel or threading.Event()
        try:
            served = await slot.current()
            req = req.with_seed()
            loop = asyncio.get_running_loop()
            images = await loop.run_in_executor(self.worker, self.generate_sync, served, req, cancel)
        except asyncio.CancelledError:  # the caller went away: stop the pipeline at its next step
            cancel.set()
            self.counters["cancelled"] += 1
            self.counters["failed"] += 1
            log.info("request %s of tenant %s cancelled by its caller", request_id, slot.tenant)
            raise
        except Exception as e:  # noqa: BLE001 - any failure is one request's, the replica keeps serving
            return self.failed(e, slot.tenant, request_id)
        finally:
            self.queued -= 1
        return self._generated(images, req, served, slot.tenant)

    # ---------------------------------------------------------------- mixed path
    def generate_batch_sync(self, items: list[tuple[ServedTenant, GenerationRequest]], cancels: list[threading.Event] | None = None) -> list:
        """The mixed path on the calling thread: per item its images, or the exception that failed it.

        Items are validated one by one first (a tenant's foreign or mismatched delta fails only its requests), then
        grouped by (size, steps, guidance); a group that fails is rerun one request at a time (only a request that
        fails alone fails); a group whose requests are all
        cancelled stops after its current step."""
        from cns_ray.serve.batch import batch_key, generate_batch

        cancels = cancels or [threading.Event() for _ in items]
        t0, c0 = time.perf_counter(), time.thread_time()
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
                    images = generate_batch(self.base, self.weights, [items[i] for i in idx], self.config.fault_marker,
                                            [cancels[i] for i in idx], self._step)
                    self.batch_sizes[len(idx)] += 1
                except Exception as e:  # noqa: BLE001 - a failed group: its requests again one by one
                    images = self._one_by_one(items, idx, cancels) if len(idx) > 1 else [e]
                for i, im in zip(idx, images):
                    out[i] = im
        finally:
            self.busy_s += time.perf_counter() - t0
            self.busy_cpu_s += time.thread_time() - c0
            self.counters["batches"] += len(groups)
        return out

    def _one_by_one(self, items: list, idx: list[int], cancels: list[threading.Event]) -> list:
        """After a failed mixed call: each of its requests alone (its delta swapped in), so that only a request
        that fails by itself fails (as on the swap path), not its batch-mates."""
        from cns_ray.serve.batch import generate_batch

        out: list = []
        for i in idx:
            try:
                out.append(generate_batch(self.base, self.weights, [items[i]], self.config.fault_marker, [cancels[i]], self._step)[0])
                self.batch_sizes[1] += 1
            except Exception as e:  # noqa: BLE001 - this request's own failure
                out.append(e)
        self.counters["batches"] += len(idx)
        return out

    async def generate_many(
        self, pairs: list[tuple[TenantSlot, GenerationRequest]], cancels: list[threading.Event] | None = None,
        request_ids: list[str] | None = None,
    ) -> list[Generated | Failed]:
        """The mixed path: one reply per (slot, request), generated together on the worker thread.

        A request whose cancel event is already set (its caller left while it waited for this call) is skipped:
        its reply is a cancelled :class:`Failed` nobody reads, and it is not counted as a request."""
        cancels = cancels or [threading.Event() for _ in pairs]
        rids = request_ids or [""] * len(pairs)
        replies: list[Generated | Failed | None] = [None] * len(pairs)
        live = []
        for i, c in enumerate(cancels):
            if c.is_set():
                replies[i] = Failed.of(RequestCancelledError("request cancelled before its pipeline call: the client went away"))
            else:
                live.append(i)
        self.counters["requests"] += len(live)
        self.queued += len(live)
        try:
            ready: list[tuple[int, ServedTenant, GenerationRequest]] = []
            for i in live:
                slot, req = pairs[i]
                try:
                    ready.append((i, await slot.current(), req.with_seed()))
                except TenantUnavailableError as e:
                    replies[i] = self.failed(e, slot.tenant, rids[i])
            if ready:
                loop = asyncio.get_running_loop()
                results = await loop.run_in_executor(
                    self.worker, self.generate_batch_sync, [(s, r) for _, s, r in ready], [cancels[i] for i, _, _ in ready]
                )
                for (i, served, req), res in zip(ready, results):
                    tenant = pairs[i][0].tenant
                    replies[i] = self.failed(res, tenant, rids[i]) if isinstance(res, BaseException) else self._generated(res, req, served, tenant)
            return replies  # type: ignore[return-value]
        finally:
            self.queued -= len(live)

    async def digest(self) -> str:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.worker, weights_digest, self.base)


@serve.deployment(name="Generator", max_ongoing_requests=16, health_check_period_s=10)
class Generator:
    """Serve deployment around :class:`GeneratorCore`; tenant = multiplexed model id (swap) or an argument (mixed)."""

    def __init__(self, config: dict):
        from cns_ray.serve.loopback import keep_replica_grpc_on_loopback

        keep_replica_grpc_on_loopback()
        cfg = ServingConfig.from_dict(config)
        try:
            name = serve.get_replica_context().replica_id.unique_id
        except Exception:  # noqa: BLE001 - outside a replica
            name = "local"
        self.core = GeneratorCore(cfg, name=name)

        async def load_slot(tenant: str) -> TenantSlot:
            """Serve's multiplexed load hook: really loads (a miss), so Serve's load metrics mean something."""
            self.core.counters["cache_misses"] += 1
            slot = self.core.new_slot(tenant)
            await slot.current()
            return slot

        self._load = serve.multiplexed(max_num_models_per_replica=cfg.max_tenants_per_replica)(load_slot)
        self._batched.set_max_batch_size(cfg.max_batch_size)
        self._batched.set_batch_wait_timeout_s(cfg.batch_wait_timeout_s)
        # mixed mode: Serve's batches, accepted concurrently, merged into one pipeline call at a time
        self._calls: Coalescer = Coalescer(self._call, cfg.max_batch_size)

    async def _call(self, items: list[tuple[tuple[TenantSlot, GenerationRequest], threading.Event, str]]) -> list:
        """One pipeline call over what the coalescer merged: items of (slot, request), cancel event, request id."""
        return await self.core.generate_many([p for p, _, _ in items], [c for _, c, _ in items], [r for _, _, r in items])

    async def _slot(self, tenant: str) -> TenantSlot:
        misses = self.core.counters["cache_misses"]
        slot = await self._load(tenant)
        if self.core.counters["cache_misses"] == misses:
            self.core.counters["cache_hits"] += 1
        return slot

    async def generate(self, request: GenerationRequest, tenant: str | None = None, request_id: str = "") -> Generated | Failed:
        """One request of ``tenant`` (``mixed`` mode: given as an argument; ``swap``: the multiplexed model id).

        In ``mixed`` mode requests carry no multiplexed model id, because Serve's batcher splits a batch by it (one
        model per batch); the tenant argument routes them instead (cns_ray/serve/routing.py: replicas holding the
        tenant first), and a cold tenant's state starts loading as the request arrives."""
        tenant = tenant or serve.get_multiplexed_model_id()
        if not tenant:
            return Failed.of(InputError("no tenant: call with handle.options(multiplexed_model_id=tenant)"))
        cancel = threading.Event()
        try:
            if self.core.config.batch_mode == "mixed":
                # a cold tenant's state is fetched while its request waits for its batch (and the running call)
                slot = asyncio.ensure_future(self._slot(tenant))
                slot.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved even if never awaited
                reply = await self._batched(tenant, request, cancel, request_id, slot)
            else:
                try:
                    slot = await self._slot(tenant)
                except TenantUnavailableError as e:
                    self.core.counters["requests"] += 1
                    reply = self.core.failed(e, tenant, request_id)
                else:
                    reply = await self.core.generate(slot, request, cancel, request_id)
        except asyncio.CancelledError:
            cancel.set()
            if self.core.config.batch_mode == "mixed":  # (swap: counted by core.generate)
                self.core.counters["cancelled"] += 1
                log.info("request %s of tenant %s cancelled by its caller", request_id, tenant)
            raise
        return _with_stats(reply, self.core.stats())

    # max_concurrent_batches: Serve's batches are taken at once, not queued one by one behind the running call
    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01, max_concurrent_batches=MAX_CONCURRENT_BATCHES)
    async def _batched(self, tenants: list[str], requests: list[GenerationRequest], cancels: list[threading.Event],
                       request_ids: list[str], slots: list[asyncio.Future]) -> list[Generated | Failed]:
        """``mixed`` mode: the requests that arrived together, of any tenants (``slots``: each request's tenant
        slot, loading since the request arrived), submitted to the coalescer: they join the next pipeline call
        with whatever else waited behind the running one."""
        pairs, idx, replies = [], [], [None] * len(tenants)
        for i, (t, r) in enumerate(zip(tenants, requests)):
            try:
                pairs.append((await slots[i], r))
                idx.append(i)
            except TenantUnavailableError as e:
                self.core.counters["requests"] += 1
                replies[i] = self.core.failed(e, t, request_ids[i])
        done = await self._calls.submit([(pairs[k], cancels[i], request_ids[i]) for k, i in enumerate(idx)]) if idx else []
        for i, rep in zip(idx, done):
            replies[i] = rep
        return replies  # type: ignore[return-value]

    async def reload(self) -> Reloaded | Failed:
        """Re-load and re-validate the tenant's head from the store now (on this replica), even if it did not move."""
        tenant = serve.get_multiplexed_model_id()
        try:
            slot = await self._slot(tenant)
            served = await slot.current(force=True)
        except TenantUnavailableError as e:
            return Failed.of(e)
        return Reloaded(tenant, served.version)

    async def weights_digest(self) -> str:
        """sha256 of the replica's base weights, taken between requests (debug/invariant checks)."""
        return await self.core.digest()

    async def stats(self) -> dict:
        s = self.core.stats()
        return {**s.__dict__, "base_id": self.core.base.base_id}

    async def info(self) -> dict:
        """The served base: its id and native resolution (the default image size and the limits' base)."""
        sched = self.core.base.pipeline.scheduler.config
        return {"base_id": self.core.base.base_id, "resolution": self.core.base.resolution, "source": self.core.base.source,
                # the most steps its sampler can take (DDIM with steps_offset=1 indexes past the end at 1000 of 1000)
                "max_steps": int(sched.get("num_train_timesteps", 1000)) - int(sched.get("steps_offset", 0) or 0)}


def _with_stats(reply: Generated | Failed, stats: ReplicaStats) -> Generated | Failed:
    from dataclasses import replace

    return replace(reply, stats=stats)
