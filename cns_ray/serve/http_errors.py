"""The HTTP boundary's error rendering: every error the endpoint answers is ``{"error": {"message", "type"}}``.

Status and type come from the error class (cns_ray/errors.py); FastAPI's own refusals (unknown route, wrong method,
body that does not parse, body validation) are mapped here; anything unexpected is a 500 ``internal_error`` whose
message names the request id (the traceback goes to the log under that id, never to the client). Messages are
redacted: server filesystem paths and the store's location never reach a tenant.
"""

from __future__ import annotations

import json
import re
from typing import Iterable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from cns_ray.errors import ApiError, CNSError

REQUEST_ID_HEADER = "X-Request-ID"

# Absolute paths under the usual roots of a server's filesystem (a route such as /v1/concepts is left alone).
_PATH_RE = re.compile(r"(?:file://)?/(?:tmp|home|root|var|usr|opt|work|mnt|data|srv|etc|private|Users|run|proc|dev)(?:/[^\s'\"),;]*)?")


def redact(message: str, roots: Iterable[str] = ()) -> str:
    """``message`` without the store's location (``roots``, longest first) or other server filesystem paths."""
    for root in sorted({r.rstrip("/") for r in roots if r and len(r.rstrip("/")) > 1}, key=len, reverse=True):
        message = message.replace(root, "<store>")
    return _PATH_RE.sub("<path>", message)


def error_body(status: int, etype: str, message: str) -> dict:
    return {"error": {"message": message, "type": etype}}


def error_parts(e: BaseException) -> tuple[int, str, str, dict[str, str]]:
    """(status, type, message, extra headers) of an exception, from the one error table."""
    if isinstance(e, CNSError):
        headers = {"Retry-After": str(e.retry_after_s)} if e.retry_after_s else {}
        return e.http_status, e.error_type, str(e), headers
    return 500, "internal_error", "internal error", {}


def error_response(status: int, etype: str, message: str, headers: dict[str, str] | None = None, roots: Iterable[str] = ()) -> JSONResponse:
    return JSONResponse(error_body(status, etype, redact(message, roots)), status_code=status, headers=headers or None)


def error_bytes(status: int, etype: str, message: str, roots: Iterable[str] = ()) -> bytes:
    return json.dumps(error_body(status, etype, redact(message, roots))).encode()


def _roots(_request: Request) -> tuple[str, ...]:
    from cns_ray.serve.guard import _state_of_replica

    g = _state_of_replica()
    return g.redact_roots if g is not None else ()


_HTTP_TYPES = {
    400: "invalid_request", 401: "authentication_error", 403: "permission_denied", 404: "not_found",
    405: "method_not_allowed", 408: "request_timeout", 413: "request_too_large", 415: "unsupported_media_type",
    422: "invalid_request", 429: "rate_limited", 503: "service_unavailable",
}


def install(app: FastAPI) -> None:
    """Register the handlers on ``app`` (unhandled exceptions are answered by cns_ray/serve/guard.py)."""

    @app.exception_handler(CNSError)
    async def _cns_error(request: Request, e: CNSError):
        status, etype, message, headers = error_parts(e)
        return error_response(status, etype, message, headers, _roots(request))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException):
        cause = e.__cause__
        if isinstance(cause, CNSError):  # raised while FastAPI read the body (size limit, slow body)
            return await _cns_error(request, cause)
        if e.status_code == 400 and cause is not None:  # the body did not parse (e.g. invalid UTF-8)
            return error_response(400, "invalid_json", f"request body could not be parsed ({type(cause).__name__}): "
                                  "send a UTF-8 JSON object, e.g. {\"prompt\": \"a photo of <tok> dog\"}")
        if e.status_code == 404:
            message = f"no route {request.method} {request.url.path[:200]}: see the HTTP API in the README"
        elif e.status_code == 405:
            message = f"method {request.method} is not allowed on {request.url.path[:200]}"
        else:
            message = str(e.detail)
        return error_response(e.status_code, _HTTP_TYPES.get(e.status_code, "http_error"), message, dict(e.headers or {}),
                              _roots(request))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, e: RequestValidationError):
        errs = e.errors()
        if any(x.get("type") == "json_invalid" for x in errs):
            return error_response(400, "invalid_json", "request body is not valid JSON: send a JSON object, e.g. {\"prompt\": \"a photo of <tok> dog\"}")
        msgs = []
        for x in errs[:10]:
            loc = ".".join(str(p) for p in x.get("loc", ()) if p != "body") or "body"
            msgs.append(f"{loc}: {x.get('msg')}")
        return error_response(422, "invalid_request", "; ".join(msgs), roots=_roots(request))


__all__ = ["ApiError", "REQUEST_ID_HEADER", "error_bytes", "error_parts", "error_response", "install", "redact"]
