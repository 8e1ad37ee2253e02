"""One error hierarchy. Every message names the value, the limit and the fix.

The HTTP boundary's error table lives here too: each class carries ``http_status`` and ``error_type`` (the
``{"error": {"message", "type"}}`` body the endpoint answers with; cns_ray/serve/http_errors.py renders it), so a
new error class gets its status where it is defined, and the CLI and the endpoint agree on what an error means.
"""

from __future__ import annotations


class CNSError(Exception):
    """Base of every error cns-ray raises on purpose."""

    http_status: int = 500
    error_type: str = "internal_error"
    retry_after_s: int | None = None
    """Seconds a client should wait before retrying (sent as ``Retry-After``); None = do not retry as is."""


class ConfigError(CNSError, ValueError):
    """A configuration value is out of range or inconsistent."""

    http_status = 400
    error_type = "invalid_request"


class InvalidNameError(CNSError, ValueError):
    """A tenant, concept or token name is not allowed (path tricks, length, characters)."""

    http_status = 422
    error_type = "invalid_name"


class DeltaValidationError(CNSError, ValueError):
    """A sparse delta is not valid for the base it is meant for. Carries every problem found."""

    http_status = 422
    error_type = "invalid_delta"

    def __init__(self, problems: list[str], *, source: str = "delta"):
        self.problems = list(problems)
        self.source = source
        shown = "\n  - ".join(self.problems[:20])
        more = f"\n  ... and {len(self.problems) - 20} more" if len(self.problems) > 20 else ""
        super().__init__(f"{source} is invalid ({len(self.problems)} problem(s)); nothing was applied:\n  - {shown}{more}")


class BaseMismatchError(DeltaValidationError):
    """A state was learned on another base model (its base_id differs)."""


class StoreError(CNSError):
    """The concept store could not be read or written."""

    http_status = 503
    error_type = "store_unavailable"


class NotFoundError(StoreError, KeyError):
    """A tenant, version, concept or cached object does not exist."""

    http_status = 404
    error_type = "not_found"

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class CommitConflictError(StoreError):
    """Another writer moved the tenant's head first; nothing of this commit is visible."""

    http_status = 409
    error_type = "conflict"


class CorruptStateError(StoreError):
    """A stored file is unreadable, truncated or inconsistent with its manifest."""

    http_status = 503
    error_type = "tenant_unavailable"


class ModelLoadError(CNSError):
    """A base model could not be found or loaded."""

    http_status = 503
    error_type = "model_unavailable"


class InputError(CNSError, ValueError):
    """User input (images, captions, prompts, tokens) is unusable."""

    http_status = 422
    error_type = "invalid_request"


class AuthError(CNSError):
    """No key, an unknown key, or a key that may not act on the tenant asked for (``status`` 401, 403 or 400)."""

    http_status = 401
    error_type = "authentication_error"

    def __init__(self, message: str, status: int = 401):
        super().__init__(message)
        self.status = status
        self.http_status = status
        self.error_type = {401: "authentication_error", 403: "permission_denied"}.get(status, "invalid_request")

    def __reduce__(self):  # survive pickling (Ray) with the status
        return (type(self), (str(self), self.status))


class RequestTooLargeError(InputError):
    """A request body, upload or image is over a size limit."""

    http_status = 413
    error_type = "request_too_large"


class TooManyRequestsError(CNSError):
    """A tenant has as many requests in flight as it may have; retry when one finished."""

    http_status = 429
    error_type = "rate_limited"
    retry_after_s = 1


class ServiceUnavailableError(CNSError):
    """The endpoint cannot serve now (a generator replica died or is restarting); retry shortly."""

    http_status = 503
    error_type = "service_unavailable"
    retry_after_s = 5


class TenantUnavailableError(StoreError):
    """A tenant's state cannot be served (corrupt, truncated, learned on another base, store unreachable)."""

    http_status = 503
    error_type = "tenant_unavailable"

    def __init__(self, tenant: str, problem: str):
        self.tenant = tenant
        self.problem = problem
        super().__init__(f"tenant {tenant!r} cannot be served: {problem}")

    def __reduce__(self):
        return (type(self), (self.tenant, self.problem))


class RequestCancelledError(CNSError):
    """The client went away (or the request was cancelled) before its images were made; generation stopped."""

    http_status = 499
    error_type = "cancelled"


class GenerationError(CNSError):
    """The pipeline failed while generating (the shared weights were restored)."""

    http_status = 500
    error_type = "generation_failed"


class ApiError(CNSError):
    """An HTTP-level refusal with an explicit status and type (unknown route, malformed body, slow body, ...)."""

    def __init__(self, status: int, etype: str, message: str, retry_after_s: int | None = None):
        super().__init__(message)
        self.status, self.etype, self.message = status, etype, message
        self.http_status, self.error_type = status, etype
        self.retry_after_s = retry_after_s

    def __reduce__(self):
        return (type(self), (self.status, self.etype, self.message, self.retry_after_s))
