"""HTTP ingress (FastAPI through Serve): API key -> tenant, generation, concept management, learning jobs.

(No ``from __future__ import annotations`` here: FastAPI must see real types in the routes' signatures.)

Every error is JSON ``{"error": {"message", "type"}}``: 400 bad request / malformed JSON, 401 no or bad key,
403 a key acting on another tenant, 404 unknown concept/version/job, 409 commit conflict, 413 upload too large,
422 values out of limits or names not allowed, 503 a tenant state that cannot be served or learning unavailable.
"""


import asyncio
import base64
import logging
import re
import time

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict
from ray import serve

from cns_ray.errors import CNSError, CommitConflictError, ConfigError, CorruptStateError, InputError, InvalidNameError, NotFoundError
from cns_ray.serve.auth import TENANT_HEADER, AuthError, KeyRing, Principal
from cns_ray.serve.config import ServingConfig
from cns_ray.serve.metrics import Metrics

log = logging.getLogger(__name__)

app = FastAPI(title="cns-ray", description="Multi-tenant CNS concept serving", version="1")
app.state.metrics = Metrics()


class ApiError(Exception):
    def __init__(self, status: int, etype: str, message: str):
        super().__init__(message)
        self.status, self.etype, self.message = status, etype, message


def _err(status: int, etype: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": etype}}, status_code=status)


def cns_error_status(e: CNSError) -> tuple[int, str]:
    for cls, status, etype in (
        (AuthError, None, "authentication_error"),
        (InvalidNameError, 422, "invalid_name"),
        (NotFoundError, 404, "not_found"),
        (CommitConflictError, 409, "conflict"),
        (CorruptStateError, 503, "tenant_unavailable"),
        (InputError, 400, "invalid_request"),
        (ConfigError, 400, "invalid_request"),
    ):
        if isinstance(e, cls):
            return (status or getattr(e, "status", 401)), etype
    return 500, type(e).__name__


@app.exception_handler(ApiError)
async def _api_error(_req: Request, e: ApiError):
    return _err(e.status, e.etype, e.message)


@app.exception_handler(CNSError)
async def _cns_error(_req: Request, e: CNSError):
    status, etype = cns_error_status(e)
    return _err(status, etype, str(e))


@app.exception_handler(RequestValidationError)
async def _validation_error(_req: Request, e: RequestValidationError):
    errs = e.errors()
    if any(x.get("type") == "json_invalid" for x in errs):
        return _err(400, "invalid_json", "request body is not valid JSON: send a JSON object, e.g. {\"prompt\": \"a photo of <tok> dog\"}")
    msgs = [f"{'.'.join(str(p) for p in x.get('loc', ()) if p != 'body')}: {x.get('msg')}" for x in errs]
    return _err(422, "invalid_request", "; ".join(msgs))


@app.middleware("http")
async def _observe(request: Request, call_next):
    t0 = time.perf_counter()
    response = await call_next(request)
    route = request.scope.get("route")
    request.app.state.metrics.observe(getattr(route, "path", "unmatched"), response.status_code, time.perf_counter() - t0)
    return response


class ImageRequest(BaseModel):
    """OpenAI-style image generation body (extra OpenAI fields such as ``model`` are ignored)."""

    model_config = ConfigDict(extra="ignore")
    prompt: str
    n: int = 1
    size: str | None = None
    seed: int | None = None
    steps: int | None = None
    guidance_scale: float | None = None
    negative_prompt: str = ""
    response_format: str = "b64_json"


class RollbackRequest(BaseModel):
    version: int


_SIZE_RE = re.compile(r"^(\d{1,5})x(\d{1,5})$")


def parse_size(size: str | None, default: int, cfg: ServingConfig) -> tuple[int, int]:
    """``"512x512"`` -> (height, width), checked against the limits."""
    if size is None:
        return default, default
    m = _SIZE_RE.match(size.strip())
    if not m:
        raise ApiError(422, "invalid_request", f"size {size!r} must look like '512x512' (width x height)")
    w, h = int(m.group(1)), int(m.group(2))
    for v in (w, h):
        if v < 8 or v > cfg.max_size or v % 8:
            raise ApiError(422, "invalid_request", f"size {size!r}: each side must be a multiple of 8 in [8, {cfg.max_size}]")
    return h, w


def build_generation(body: ImageRequest, cfg: ServingConfig, default_size: int) -> dict:
    """Validate ``body`` against the limits; a GenerationRequest as a dict."""
    problems = []
    if not body.prompt.strip():
        problems.append("prompt is empty: describe the image, e.g. 'a photo of <tok> dog'")
    if len(body.prompt) > cfg.max_prompt_chars:
        problems.append(f"prompt has {len(body.prompt)} characters, the limit is {cfg.max_prompt_chars}: shorten it")
    if len(body.negative_prompt) > cfg.max_prompt_chars:
        problems.append(f"negative_prompt has {len(body.negative_prompt)} characters, the limit is {cfg.max_prompt_chars}")
    if not 1 <= body.n <= cfg.max_n:
        problems.append(f"n={body.n} must be in [1, {cfg.max_n}]")
    steps = cfg.default_steps if body.steps is None else body.steps
    if not 1 <= steps <= cfg.max_steps:
        problems.append(f"steps={steps} must be in [1, {cfg.max_steps}]")
    guidance = cfg.default_guidance if body.guidance_scale is None else body.guidance_scale
    if not 0 <= guidance <= 50:
        problems.append(f"guidance_scale={guidance} must be in [0, 50]")
    if body.seed is not None and not 0 <= body.seed < 2**63:
        problems.append(f"seed={body.seed} must be in [0, 2**63)")
    if body.response_format not in ("b64_json", "png"):
        problems.append(f"response_format={body.response_format!r} must be 'b64_json' or 'png'")
    elif body.response_format == "png" and body.n != 1:
        problems.append("response_format 'png' returns one image: use n=1 or 'b64_json'")
    if problems:
        raise ApiError(422, "invalid_request", "; ".join(problems))
    height, width = parse_size(body.size, default_size, cfg)
    return {
        "prompt": body.prompt,
        "n": body.n,
        "height": height,
        "width": width,
        "steps": steps,
        "guidance_scale": float(guidance),
        "seed": body.seed,
        "negative_prompt": body.negative_prompt,
    }


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
        raise ApiError(404, "not_found", f"tenant {tenant!r} has no versions yet: learn a concept first")
    v = version if version is not None else store.head(tenant)
    with tempfile.TemporaryDirectory() as d:
        store.export(tenant, d, v)
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:  # Parquet files are already compressed
            for f in sorted(Path(d).rglob("*")):
                if f.is_file():
                    z.write(f, f.relative_to(d).as_posix())
    return buf.getvalue(), v


@serve.deployment(name="Ingress", max_ongoing_requests=64)
@serve.ingress(app)
class Ingress:
    def __init__(self, generator, config: dict):
        from cns_ray.config import StoreConfig
        from cns_ray.serve.loopback import keep_replica_grpc_on_loopback
        from cns_ray.store import ConceptStore

        keep_replica_grpc_on_loopback()
        self.cfg = ServingConfig.from_dict(config)
        self.gen = generator
        self.keys = KeyRing.from_config(self.cfg.keys_file, self.cfg.api_keys, self.cfg.admin_key_sha256, self.cfg.read_env_keys)
        self.store = ConceptStore(StoreConfig(uri=self.cfg.store))
        self._default_size = self.cfg.default_size
        self._base_id: str | None = None

    # ---------------------------------------------------------------- helpers
    def _who(self, request: Request) -> Principal:
        h = request.headers
        return self.keys.authenticate(h.get("authorization"), h.get("x-api-key"), h.get(TENANT_HEADER.lower()))

    async def _info(self) -> tuple[int, str]:
        if self._default_size is None or self._base_id is None:
            info = await self.gen.info.remote()
            self._default_size = self._default_size or info["resolution"]
            self._base_id = info["base_id"]
        return self._default_size, self._base_id

    async def _reload(self, tenant: str) -> None:
        try:
            await self.gen.options(multiplexed_model_id=tenant).reload.remote()
        except Exception:  # noqa: BLE001 - best effort; the TTL picks the change up anyway
            log.warning("reload of tenant %s after a change failed; the refresh TTL will pick it up", tenant, exc_info=True)

    def _state(self, tenant: str):
        if self.store.head(tenant) is None:
            return None
        return self.store.load(tenant)

    # ---------------------------------------------------------------- routes
    @app.get("/healthz")
    async def healthz(self):
        return {"status": "ok", "keys": self.keys.n_keys}

    @app.get("/metrics")
    async def metrics(self, request: Request):
        return PlainTextResponse(request.app.state.metrics.prometheus())

    @app.post("/v1/images/generations")
    async def generations(self, request: Request, body: ImageRequest):
        who = self._who(request)
        size, _ = await self._info()
        gen = build_generation(body, self.cfg, size)
        if self.cfg.batch_mode == "mixed":  # no multiplexed id: Serve's batcher splits batches by it
            reply = await self.gen.generate.remote(gen, tenant=who.tenant)
        else:
            reply = await self.gen.options(multiplexed_model_id=who.tenant).generate.remote(gen)
        if not reply["ok"]:
            raise ApiError(reply["status"], reply["error"]["type"], reply["error"]["message"])
        headers = {"X-CNS-Seed": str(reply["seed"]), "X-CNS-Version": str(reply["version"])}
        if body.response_format == "png":
            return Response(content=reply["images"][0], media_type="image/png", headers=headers)
        data = [{"b64_json": base64.b64encode(b).decode()} for b in reply["images"]]
        return JSONResponse(
            {"created": int(time.time()), "data": data, "seed": reply["seed"], "tenant": who.tenant, "version": reply["version"]},
            headers=headers,
        )

    @app.get("/v1/concepts")
    def list_concepts(self, request: Request):
        who = self._who(request)
        state = self._state(who.tenant)
        concepts = [] if state is None else [_concept_json(c) for c in state.concepts]
        return {"tenant": who.tenant, "version": None if state is None else state.version, "concepts": concepts}

    @app.get("/v1/concepts/history")
    def history(self, request: Request):
        who = self._who(request)
        return {"tenant": who.tenant, "versions": [_version_json(v) for v in self.store.history(who.tenant)]}

    @app.get("/v1/concepts/export")
    async def export(self, request: Request, version: int | None = None):
        """One version of the tenant (head by default) as a zip: its Parquet files + a manifest excerpt."""
        who = self._who(request)
        data, v = await asyncio.to_thread(_export_zip, self.store, who.tenant, version)
        name = f"{who.tenant}-v{v}.zip"
        return Response(content=data, media_type="application/zip", headers={"Content-Disposition": f'attachment; filename="{name}"'})

    @app.post("/v1/concepts/rollback")
    async def rollback(self, request: Request, body: RollbackRequest):
        who = self._who(request)
        await asyncio.to_thread(self.store.rollback, who.tenant, body.version)
        await self._reload(who.tenant)
        return {"tenant": who.tenant, "head": self.store.head(who.tenant)}

    @app.post("/v1/concepts/reload")
    async def reload(self, request: Request):
        who = self._who(request)
        reply = await self.gen.options(multiplexed_model_id=who.tenant).reload.remote()
        if not reply["ok"]:
            raise ApiError(reply["status"], reply["error"]["type"], reply["error"]["message"])
        return reply

    @app.get("/v1/concepts/{name}")
    def show_concept(self, request: Request, name: str):
        from cns_ray.store.names import validate_name

        who = self._who(request)
        validate_name(name, "concept")
        state = self._state(who.tenant)
        rec = None if state is None else state.concept(name)
        if rec is None:
            raise ApiError(404, "not_found", f"tenant {who.tenant!r} has no concept {name!r}: GET /v1/concepts lists its concepts")
        return {"tenant": who.tenant, "version": state.version, **_concept_json(rec)}

    @app.delete("/v1/concepts/{name}")
    async def delete_concept(self, request: Request, name: str):
        from cns_ray.store.names import validate_name

        who = self._who(request)
        validate_name(name, "concept")
        state = await asyncio.to_thread(self._state, who.tenant)
        if state is None or state.concept(name) is None:
            raise ApiError(404, "not_found", f"tenant {who.tenant!r} has no concept {name!r}: GET /v1/concepts lists its concepts")
        version = await asyncio.to_thread(self.store.delete_concept, who.tenant, name)
        await self._reload(who.tenant)
        return {"tenant": who.tenant, "deleted": name, "version": version}

    @app.post("/v1/concepts")
    async def learn(
        self,
        request: Request,
        images: list[UploadFile] = File(...),
        concept: str = Form(...),
        class_word: str = Form(...),
        token: str | None = Form(None),
        steps: int | None = Form(None),
    ):
        from cns_ray.serve.learn_route import submit_learning

        who = self._who(request)
        length = int(request.headers.get("content-length") or 0)
        if length > self.cfg.max_upload_bytes + 64 * 1024:
            raise ApiError(413, "upload_too_large", f"upload is {length} bytes, the limit is {self.cfg.max_upload_bytes}: send fewer or smaller images")
        job_id = await submit_learning(self.cfg, self.store, who.tenant, images, concept, class_word, token, steps)
        return JSONResponse({"job_id": job_id, "tenant": who.tenant, "concept": concept}, status_code=202)

    @app.get("/v1/jobs")
    async def list_jobs(self, request: Request):
        from cns_ray.serve.learn_route import scheduler

        who = self._who(request)
        actor = await asyncio.to_thread(scheduler, self.cfg)
        jobs = await actor.list.remote(who.tenant)
        return {"tenant": who.tenant, "jobs": [j for j in jobs if j.get("tenant") == who.tenant]}

    @app.get("/v1/jobs/{job_id}")
    async def job_status(self, request: Request, job_id: str):
        from cns_ray.serve.learn_route import job_for_tenant

        who = self._who(request)
        return await job_for_tenant(self.cfg, who.tenant, job_id)

