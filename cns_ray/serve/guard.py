"""The ingress's front door, a pure ASGI middleware: nothing cheap can hold the endpoint.

In this order, before any route runs and before a byte of the body is read:
1. a request id (the client's ``X-Request-ID`` if it is short and plain, else a new one), returned on every answer;
2. the API key (headers only): no key or a bad one is answered 401 at once, so unauthenticated requests never read a
   body nor hold a request slot (``/healthz`` is open; ``/metrics`` needs the admin key unless ``public_metrics``);
3. ``Content-Length`` against the route's limit (413 at once);
4. the tenant's requests in flight against ``max_in_flight_per_tenant`` (429 + ``Retry-After``).
Then the body is read through a guarded ``receive``: the whole body must arrive within ``body_timeout_s`` (408) and
may not exceed the limit while it streams (413), whatever ``Content-Length`` said. An exception no route handled is
a JSON 500 naming the request id; every failure is logged with it. Request counts and latencies go to the metrics.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from dataclasses import dataclass, field

from cns_ray.errors import ApiError, CNSError, RequestTooLargeError, ServiceUnavailableError, TooManyRequestsError
from cns_ray.serve.auth import TENANT_HEADER, KeyRing
from cns_ray.serve.config import ServingConfig
from cns_ray.serve.http_errors import REQUEST_ID_HEADER, error_bytes, error_parts
from cns_ray.serve.metrics import Metrics

log = logging.getLogger(__name__)

PUBLIC_PATHS = ("/healthz", "/metrics")
METRICS_PATH = "/metrics"  # public only with ServingConfig.public_metrics; else the admin key
UPLOAD_ROUTE = ("POST", "/v1/concepts")
_RID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")


@dataclass
class GuardState:
    """What the guard needs of one ingress replica (built by the Ingress constructor)."""

    cfg: ServingConfig
    keys: KeyRing
    metrics: Metrics
    redact_roots: tuple[str, ...] = ()
    in_flight: dict[str, int] = field(default_factory=dict)
    draining: bool = False
    """Set when the endpoint is stopping: new requests get 503 + Retry-After, the ones in flight finish."""

    def body_limit(self, method: str, path: str) -> int:
        if (method, path.rstrip("/")) == UPLOAD_ROUTE:
            return self.cfg.max_upload_bytes + 64 * 1024  # multipart framing on top of the images
        return self.cfg.max_json_bytes


def _state_of_replica() -> GuardState | None:
    try:
        from ray import serve

        return getattr(serve.get_replica_context().servable_object, "guard", None)
    except Exception:  # noqa: BLE001 - not in a replica (tests of the app alone)
        return None


def _serve_request_id() -> str:
    try:
        from ray.serve.context import _get_serve_request_context

        return _get_serve_request_context().request_id or ""
    except Exception:  # noqa: BLE001 - not in a Serve replica
        return ""


class Guard:
    """ASGI middleware around the FastAPI app (see the module docstring)."""

    def __init__(self, app, state: GuardState | None = None):
        self.app = app
        self._state = state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        g = self._state or _state_of_replica()
        if g is None:
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        rid = _serve_request_id()  # behind Serve's proxy: its id (the client's X-Request-ID or a new one); it sets the header
        add_header = not rid
        if not rid:
            rid = headers.get(REQUEST_ID_HEADER.lower(), "")
            rid = rid if _RID_RE.fullmatch(rid) else uuid.uuid4().hex[:16]
        method, path = scope["method"], scope["path"]
        scope.setdefault("state", {})["request_id"] = rid
        t0 = time.perf_counter()
        status = {"code": 0}
        tenant = "-"

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                if add_header:
                    message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", rid.encode())]}
            await send(message)

        async def refuse(e: BaseException) -> None:
            code, etype, message, extra = error_parts(e)
            body = error_bytes(code, etype, message, g.redact_roots)
            hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            hdrs += [(k.lower().encode(), v.encode()) for k, v in extra.items()]
            await send_with_id({"type": "http.response.start", "status": code, "headers": hdrs})
            await send_with_id({"type": "http.response.body", "body": body})

        counted = False
        try:
            if path == METRICS_PATH and not g.cfg.public_metrics:
                g.keys.authenticate_admin(headers.get("authorization"), headers.get("x-api-key"))
            elif path not in PUBLIC_PATHS:
                who = g.keys.authenticate(headers.get("authorization"), headers.get("x-api-key"), headers.get(TENANT_HEADER.lower()))
                tenant = who.tenant
                scope["state"]["principal"] = who
                limit = g.body_limit(method, path)
                length = headers.get("content-length")
                if length is not None and (not length.isdigit() or int(length) > limit):
                    raise RequestTooLargeError(f"request body is {length[:20]} bytes, the limit for {method} {path[:100]} is {limit}: "
                                               "send a smaller body (fewer or smaller images)")
                if g.draining:
                    raise ServiceUnavailableError("the endpoint is shutting down: retry in a few seconds (another replica or "
                                                  "the restarted endpoint will answer)")
                if g.in_flight.get(tenant, 0) >= g.cfg.max_in_flight_per_tenant:
                    raise TooManyRequestsError(f"tenant {tenant!r} has {g.cfg.max_in_flight_per_tenant} requests in flight, "
                                               "the limit per tenant: wait for one to finish (Retry-After) and retry")
                g.in_flight[tenant] = g.in_flight.get(tenant, 0) + 1
                counted = True
                receive = _guarded_receive(receive, limit, g.cfg.body_timeout_s, method, path)
            await self.app(scope, receive, send_with_id)
        except CNSError as e:  # refused at the door (auth, size, in-flight cap)
            if status["code"]:
                raise
            await refuse(e)
        except asyncio.CancelledError:
            status["code"] = status["code"] or 499  # the client went away
            raise
        except Exception as e:  # noqa: BLE001 - a bug: log it under the request id, answer JSON
            log.error("request %s %s %s of tenant %s failed", rid, method, path, tenant, exc_info=e)
            if status["code"]:
                raise
            await refuse(ApiError(500, "internal_error", f"internal error (request id {rid}): the operator's log has the details"))
        finally:
            if counted:
                g.in_flight[tenant] -= 1
            route = getattr(scope.get("route"), "path", "unmatched")
            code = status["code"] or 500
            g.metrics.observe(route, code, time.perf_counter() - t0, tenant)
            if code >= 500 or code == 499:
                log.warning("request %s %s %s tenant %s -> %d", rid, method, path, tenant, code)
            elif code >= 400:
                log.info("request %s %s %s tenant %s -> %d", rid, method, path, tenant, code)


def _guarded_receive(receive, limit: int, timeout_s: float, method: str, path: str):
    """``receive`` that ends the body at ``limit`` bytes and ``timeout_s`` seconds (then passes messages through)."""
    seen = 0
    done = False
    deadline = time.monotonic() + timeout_s

    async def guarded():
        nonlocal seen, done
        if done:
            return await receive()  # after the body: e.g. waiting for the client's disconnect
        left = deadline - time.monotonic()
        try:
            message = await asyncio.wait_for(receive(), timeout=max(left, 0.001))
        except asyncio.TimeoutError:
            raise ApiError(408, "request_timeout", f"request body did not arrive within {timeout_s:g} s "
                           "(body_timeout_s): send the whole body at once") from None
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise RequestTooLargeError(f"request body is over {limit} bytes, the limit for {method} {path[:100]}: "
                                           "send a smaller body (fewer or smaller images)")
            if not message.get("more_body", False):
                done = True
        else:
            done = True
        return message

    return guarded
