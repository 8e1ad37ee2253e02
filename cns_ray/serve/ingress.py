"""HTTP ingress (FastAPI through Serve): API key -> tenant, generation, concept management, learning jobs.

(No ``from __future__ import annotations`` here: FastAPI must see real types in the routes' signatures.)

The boundary, in one place each: the guard (cns_ray/serve/guard.py: request id, API key before the body, body size
and time limits, per-tenant in-flight cap, JSON 500s), the error table (the classes of cns_ray/errors.py, rendered
by cns_ray/serve/http_errors.py as ``{"error": {"message", "type"}}``), typed bodies and limits
(cns_ray/serve/limits.py) and typed generator replies (cns_ray/serve/results.py). A generator replica that died or
is restarting is a 503 ``service_unavailable`` with ``Retry-After``.
"""


import asyncio
import base64
import json
import logging
import time

from fastapi import Depends, FastAPI, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from ray import serve

from cns_ray.errors import AuthError, CNSError, NotFoundError, ServiceUnavailableError
from cns_ray.serve import http_errors
from cns_ray.serve.auth import KeyRing, Principal
from cns_ray.serve.config import ServingConfig
from cns_ray.serve.guard import Guard, GuardState
from cns_ray.serve.limits import ImageRequest, Limits, RollbackRequest, build_generation
from cns_ray.serve.metrics import Metrics
from cns_ray.serve.results import Failed

log = logging.getLogger(__name__)

app = FastAPI(title="cns-ray", description="Multi-tenant CNS concept serving", version="1")
http_errors.install(app)
app.add_middleware(Guard)


def principal(request: Request) -> Principal:
    """The caller, authenticated by the guard from the headers before the body was read."""
    who = getattr(request.state, "principal", None)
    if who is None:
        raise AuthError("missing API key: send 'Authorization: Bearer <api key>'")
    return who


def _unavailable(e: BaseException) -> ServiceUnavailableError:
    return ServiceUnavailableError(f"the image generator is not available right now ({type(e).__name__}): "
                                   "a replica died or is restarting; retry after a few seconds")


async def call_generator(response, metrics: Metrics | None = None):
    """Await a generator call; a dead or unreachable replica becomes a 503 with Retry-After; a typed failure is
    raised as its error. ``metrics`` keeps the replica stats the reply carries."""
    import ray.exceptions as rex
    from ray.serve import exceptions as sex

    dead = tuple(c for c in (getattr(rex, "RayActorError", None), getattr(rex, "ActorUnavailableError", None),
                             getattr(sex, "BackPressureError", None), getattr(sex, "DeploymentUnavailableError", None),
                             getattr(rex, "WorkerCrashedError", None), getattr(rex, "NodeDiedError", None)) if c)
    try:
        reply = await response
    except dead as e:
        log.warning("generator call failed: %s", e)
        raise _unavailable(e) from e
    if metrics is not None:
        metrics.replica(getattr(reply, "stats", None))
    if isinstance(reply, Failed):
        raise reply.error()
    return reply


def _concept_json(c) -> dict:
    return {
        "name": c.name,
        "token": c.token,
        "class_word": c.class_word,
        "method": c.method,
        "nnz": c.nnz,
        "version_added": c.version_added,
        "stats": c.stats,
    }


def _version_json(v) -> dict:
    return {
        "version": v.version,
        "parent": v.parent,
        "created_at": v.created_at,
        "message": v.message,
        "base_id": v.base_id,
        "concepts": list(v.concepts),
        "nnz": v.nnz,
        "is_head": v.is_head,
    }


# Everything the routes use is defined above this class: Serve pickles the class when it is decorated.
def _export_zip(store, tenant: str, version: int | None) -> tuple[bytes, int]:
    """store.export into a temporary folder, zipped in memory (a version is a few MB at most)."""
    import io
    import tempfile
    import zipfile
    from pathlib import Path

    if store.head(tenant) is None:
        raise NotFoundError(f"tenant {tenant!r} has no versions yet: learn a concept first")
    v = version if version is not None else store.head(tenant)
    with tempfile.TemporaryDirectory() as d:
        store.export(tenant, d, v)
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:  # Parquet files are already compressed
            for f in sorted(Path(d).rglob("*")):
                if not f.is_file():
                    continue
                if f.name == "manifest.json":  # the server's store location is not the tenant's business
                    excerpt = json.loads(f.read_text())
                    if "exported_from" in excerpt:
                        excerpt["exported_from"] = "cns-ray endpoint"
                    z.writestr(f.relative_to(d).as_posix(), json.dumps(excerpt, indent=1, sort_keys=True))
                else:
                    z.write(f, f.relative_to(d).as_posix())
    return buf.getvalue(), v


@serve.deployment(name="Ingress", max_ongoing_requests=64)
@serve.ingress(app)
class Ingress:
    def __init__(self, generator, config: dict):
        from cns_ray.config import StoreConfig
        from cns_ray.fs import resolve
        from cns_ray.serve.loopback import keep_replica_grpc_on_loopback
        from cns_ray.store import ConceptStore

        keep_replica_grpc_on_loopback()
        self.cfg = ServingConfig.from_dict(config)
        self.gen = generator
        self.keys = KeyRing.from_config(self.cfg.keys_file, self.cfg.api_keys, self.cfg.admin_key_sha256, self.cfg.read_env_keys)
        self.store = ConceptStore(StoreConfig(uri=self.cfg.store))
        self.metrics = Metrics()
        roots = {self.cfg.store, self.store.uri()}
        try:
            roots.add(resolve(self.cfg.store).path)
        except Exception:  # noqa: BLE001 - redaction is best effort beyond the URI itself
            pass
        self.guard = GuardState(self.cfg, self.keys, self.metrics, tuple(r for r in roots if r))
        self.metrics.in_flight = self.guard.in_flight
        self._limits: Limits | None = None
        self._synth = None  # cns_ray.serve.learn_route.SynthService, made by the first method=synthesize request

    # ---------------------------------------------------------------- helpers
    async def limits(self) -> Limits:
        if self._limits is None:
            info = await call_generator(self.gen.info.remote())
            self._limits = Limits.for_base(self.cfg, int(info["resolution"]), int(info.get("max_steps", 999)))
        return self._limits

    async def _reload(self, tenant: str) -> None:
        try:
            await call_generator(self.gen.options(multiplexed_model_id=tenant).reload.remote())
        except CNSError:  # the change itself is committed; the next request reports a state it cannot serve
            log.warning("reload of tenant %s after a change failed; the refresh TTL will pick it up", tenant, exc_info=True)

    def _state(self, tenant: str):
        if self.store.head(tenant) is None:
            return None
        return self.store.load(tenant)

    async def drain(self) -> int:
        """Stop taking new requests (503 + Retry-After); the number still in flight (``cns serve`` waits for 0)."""
        self.guard.draining = True
        return sum(self.guard.in_flight.values())

    # ---------------------------------------------------------------- routes
    @app.get("/healthz")
    async def healthz(self):
        return {"status": "ok", "keys": self.keys.n_keys}

    @app.get("/metrics")
    async def metrics_text(self):
        return PlainTextResponse(self.metrics.prometheus())

    @app.get("/v1/limits")
    async def get_limits(self, who: Principal = Depends(principal)):
        lim = await self.limits()
        return {**lim.describe(), "max_in_flight_per_tenant": self.cfg.max_in_flight_per_tenant}

    @app.post("/v1/images/generations")
    async def generations(self, request: Request, body: ImageRequest, who: Principal = Depends(principal)):
        gen = build_generation(body, await self.limits())
        rid = request.state.request_id
        if self.cfg.batch_mode == "mixed":  # no multiplexed id: Serve's batcher splits batches by it
            call = self.gen.generate.remote(gen, tenant=who.tenant, request_id=rid)
        else:
            call = self.gen.options(multiplexed_model_id=who.tenant).generate.remote(gen, request_id=rid)
        reply = await call_generator(call, self.metrics)
        headers = {"X-CNS-Seed": str(reply.seed), "X-CNS-Version": str(reply.version)}
        if body.response_format == "png":
            return Response(content=reply.images[0], media_type="image/png", headers=headers)
        data = [{"b64_json": base64.b64encode(b).decode()} for b in reply.images]
        return JSONResponse(
            {"created": int(time.time()), "data": data, "seed": reply.seed, "tenant": who.tenant, "version": reply.version},
            headers=headers,
        )

    @app.get("/v1/concepts")
    def list_concepts(self, who: Principal = Depends(principal)):
        state = self._state(who.tenant)
        concepts = [] if state is None else [_concept_json(c) for c in state.concepts]
        return {"tenant": who.tenant, "version": None if state is None else state.version, "concepts": concepts}

    @app.get("/v1/concepts/history")
    def history(self, who: Principal = Depends(principal)):
        return {"tenant": who.tenant, "versions": [_version_json(v) for v in self.store.history(who.tenant)]}

    @app.get("/v1/concepts/export")
    async def export(self, version: int | None = None, who: Principal = Depends(principal)):
        """One version of the tenant (head by default) as a zip: its Parquet files + a manifest excerpt."""
        data, v = await asyncio.to_thread(_export_zip, self.store, who.tenant, version)
        name = f"{who.tenant}-v{v}.zip"
        return Response(content=data, media_type="application/zip", headers={"Content-Disposition": f'attachment; filename="{name}"'})

    @app.post("/v1/concepts/rollback")
    async def rollback(self, body: RollbackRequest, who: Principal = Depends(principal)):
        await asyncio.to_thread(self.store.rollback, who.tenant, body.version)
        await self._reload(who.tenant)
        return {"tenant": who.tenant, "head": await asyncio.to_thread(self.store.head, who.tenant)}

    @app.post("/v1/concepts/reload")
    async def reload(self, who: Principal = Depends(principal)):
        """Re-load and re-validate the tenant's head from the store (a state that fails now fails on every route)."""
        reply = await call_generator(self.gen.options(multiplexed_model_id=who.tenant).reload.remote())
        return {"ok": True, "tenant": reply.tenant, "version": reply.version}

    @app.get("/v1/concepts/{name}")
    def show_concept(self, name: str, who: Principal = Depends(principal)):
        from cns_ray.store.names import validate_name

        validate_name(name, "concept")
        state = self._state(who.tenant)
        rec = None if state is None else state.concept(name)
        if rec is None:
            raise NotFoundError(f"tenant {who.tenant!r} has no concept {name!r}: GET /v1/concepts lists its concepts")
        return {"tenant": who.tenant, "version": state.version, **_concept_json(rec)}

    @app.delete("/v1/concepts/{name}")
    async def delete_concept(self, name: str, who: Principal = Depends(principal)):
        from cns_ray.store.names import validate_name

        validate_name(name, "concept")
        state = await asyncio.to_thread(self._state, who.tenant)
        if state is None or state.concept(name) is None:
            raise NotFoundError(f"tenant {who.tenant!r} has no concept {name!r}: GET /v1/concepts lists its concepts")
        version = await asyncio.to_thread(self.store.delete_concept, who.tenant, name)
        await self._reload(who.tenant)
        return {"tenant": who.tenant, "deleted": name, "version": version}

    @app.post("/v1/concepts/{name}/purge")
    async def purge_concept(self, name: str, who: Principal = Depends(principal)):
        """Erase a concept (cns concepts purge) as a job of the tenant's queue: 202 + job id (GET /v1/jobs/{id}).

        The rebuild replays every later concept's learning, which can take minutes: no request is held open for it.
        Checked now against the head (unknown concept: 404; later concepts without stored inputs: 422), planned again
        when the job runs, on the head the tenant's earlier jobs left."""
        from cns_ray.serve.learn_route import scheduler
        from cns_ray.store.names import validate_name
        from cns_ray.store.purge import plan_purge

        validate_name(name, "concept")
        await asyncio.to_thread(plan_purge, self.store, who.tenant, name)
        actor = await asyncio.to_thread(scheduler, self.cfg)
        job_id = await actor.submit_purge.remote(who.tenant, name, 0.5)
        log.info("tenant %s: submitted purge of %s as job %s", who.tenant, name, job_id)
        return JSONResponse({"job_id": job_id, "tenant": who.tenant, "concept": name, "kind": "purge"}, status_code=202)

    @app.post("/v1/concepts")
    async def learn(
        self,
        images: list[UploadFile] = File(...),
        concept: str = Form(...),
        class_word: str = Form(...),
        token: str | None = Form(None),
        steps: int | None = Form(None),
        method: str = Form("cns"),
        cones_joint: str | None = Form(None),
        source: str | None = Form(None),
        who: Principal = Depends(principal),
    ):
        from cns_ray.serve.learn_route import (SYNTHESIZE, SynthService, cones_joint_field, source_field, submit_learning,
                                               synthesize_upload)

        source = source_field(source, method)  # given with another method, or unknown: 422, nothing done
        if method == SYNTHESIZE:  # zero-shot: committed within the request (cns_ray/synth/), no job
            cones_joint_field(cones_joint, method, concept)  # given with method=synthesize: 422, nothing done
            self._synth = self._synth or SynthService(self.cfg)
            out = await synthesize_upload(self.cfg, self.store, self._synth, who.tenant, images, concept, class_word,
                                          token, steps, source)
            await self._reload(who.tenant)
            return JSONResponse(out, status_code=201)
        job_id = await submit_learning(self.cfg, self.store, who.tenant, images, concept, class_word, token, steps,
                                       method=method, cones_joint=cones_joint)
        return JSONResponse({"job_id": job_id, "tenant": who.tenant, "concept": concept, "method": method}, status_code=202)

    @app.get("/v1/jobs")
    async def list_jobs(self, who: Principal = Depends(principal)):
        from cns_ray.serve.learn_route import scheduler

        actor = await asyncio.to_thread(scheduler, self.cfg)
        jobs = await actor.list.remote(who.tenant)
        return {"tenant": who.tenant, "jobs": [j for j in jobs if j.get("tenant") == who.tenant]}

    @app.get("/v1/jobs/{job_id}")
    async def job_status(self, job_id: str, who: Principal = Depends(principal)):
        from cns_ray.serve.learn_route import job_for_tenant

        return await job_for_tenant(self.cfg, who.tenant, job_id)
