"""The ingress guard and error rendering on a real FastAPI app over ASGI (no Ray): every answer is the JSON error
shape with a request id, the key is checked before the body, unhandled exceptions are a JSON 500, paths redacted."""

import asyncio

import httpx
import pytest
from fastapi import FastAPI

from cns_ray.errors import CorruptStateError
from cns_ray.serve import http_errors
from cns_ray.serve.auth import KeyRing, hash_key
from cns_ray.serve.config import ServingConfig
from cns_ray.serve.guard import Guard, GuardState
from cns_ray.serve.metrics import Metrics

ROOT = "/tmp/secret-store-root"


def _app():
    app = FastAPI()
    http_errors.install(app)
    cfg = ServingConfig(max_json_bytes=2048, body_timeout_s=5, read_env_keys=False)
    state = GuardState(cfg, KeyRing({hash_key("k1"): "acme"}), Metrics(), (ROOT,))
    app.add_middleware(Guard, state=state)
    seen = []

    @app.post("/echo")
    async def echo(body: dict):
        seen.append(body)
        return body

    @app.get("/boom")
    async def boom():
        raise RuntimeError(f"bug reading {ROOT}/tenants/acme/versions/1/delta.parquet")

    @app.get("/corrupt")
    async def corrupt():
        raise CorruptStateError(f"{ROOT}/tenants/acme/versions/1/delta.parquet is truncated; see /var/log/x.log")

    return app, state, seen


def _run(coro):
    return asyncio.run(coro)


async def _call(app, method, path, **kw):
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app, raise_app_exceptions=False), base_url="http://t") as c:
        return await c.request(method, path, **kw)


def _shape(r, status, etype):
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type"}, body
    assert body["error"]["type"] == etype, body
    assert r.headers.get("x-request-id")
    return body["error"]["message"]


def test_no_key_is_401_before_the_body_is_parsed_or_validated():
    app, _, seen = _app()
    _shape(_run(_call(app, "POST", "/echo", content=b"{not json")), 401, "authentication_error")
    _shape(_run(_call(app, "POST", "/echo", content=b"\xff\xfe", headers={"content-type": "application/json"})), 401, "authentication_error")
    assert seen == []


@pytest.mark.parametrize(
    "method,path,kw,status,etype",
    [
        ("GET", "/nope", {}, 404, "not_found"),
        ("DELETE", "/echo", {}, 405, "method_not_allowed"),
        ("POST", "/echo", {"content": b"{not json", "headers": {"content-type": "application/json"}}, 400, "invalid_json"),
        ("POST", "/echo", {"content": b'{"a": "\xff"}', "headers": {"content-type": "application/json"}}, 400, "invalid_json"),
        ("POST", "/echo", {"json": [1, 2]}, 422, "invalid_request"),
        ("POST", "/echo", {"content": b"x" * 4096, "headers": {"content-type": "application/json"}}, 413, "request_too_large"),
        ("GET", "/boom", {}, 500, "internal_error"),
        ("GET", "/corrupt", {}, 503, "tenant_unavailable"),
    ],
)
def test_every_error_has_the_documented_shape(method, path, kw, status, etype):
    app, _, _ = _app()
    headers = {"Authorization": "Bearer k1", **kw.pop("headers", {})}
    msg = _shape(_run(_call(app, method, path, headers=headers, **kw)), status, etype)
    assert ROOT not in msg and "/var/log" not in msg and "/tmp" not in msg  # no server paths


def test_unhandled_exception_names_the_request_id_and_counts_as_500():
    app, state, _ = _app()
    r = _run(_call(app, "GET", "/boom", headers={"Authorization": "Bearer k1", "X-Request-ID": "abc-123"}))
    assert r.headers["x-request-id"] == "abc-123" and "abc-123" in r.json()["error"]["message"]
    assert 'status="500"' in state.metrics.prometheus()


def test_streamed_body_over_the_limit_is_413_whatever_content_length_said():
    app, _, seen = _app()

    async def chunks():
        for _ in range(8):
            yield b"x" * 1024

    _shape(_run(_call(app, "POST", "/echo", content=chunks(), headers={"Authorization": "Bearer k1", "content-type": "application/json"})),
           413, "request_too_large")
    assert seen == []


def test_in_flight_cap_per_tenant_is_429_with_retry_after():
    app, state, _ = _app()
    state.in_flight["acme"] = state.cfg.max_in_flight_per_tenant
    r = _run(_call(app, "POST", "/echo", json={"a": 1}, headers={"Authorization": "Bearer k1"}))
    _shape(r, 429, "rate_limited")
    assert r.headers["retry-after"] == "1"
    state.in_flight["acme"] = 0
    r = _run(_call(app, "POST", "/echo", json={"a": 1}, headers={"Authorization": "Bearer k1"}))
    assert r.status_code == 200 and state.in_flight["acme"] == 0


def test_redact_keeps_routes_and_drops_paths():
    msg = http_errors.redact(f"{ROOT}/tenants/a/x.parquet and /home/u/.cache/f; see POST /v1/concepts/rollback", [ROOT])
    assert msg == "<store>/tenants/a/x.parquet and <path>; see POST /v1/concepts/rollback"


def test_draining_refuses_new_requests_with_503_and_retry_after():
    app, state, _ = _app()
    state.draining = True
    r = _run(_call(app, "POST", "/echo", json={"a": 1}, headers={"Authorization": "Bearer k1"}))
    assert "shutting down" in _shape(r, 503, "service_unavailable") and r.headers["retry-after"] == "5"
