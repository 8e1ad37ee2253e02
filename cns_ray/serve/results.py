"""What a generator replica answers: typed results, never dicts, whatever Ray does to exception types in between.

A request either made its images (:class:`Generated`) or failed with a status and a type from the one error table
(:class:`Failed`, built from the exception's ``http_status``/``error_type``, cns_ray/errors.py). Each reply carries
the replica's counters (:class:`ReplicaStats`) so the ingress's ``/metrics`` can sum them over replicas.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cns_ray.errors import ApiError, CNSError


@dataclass(frozen=True)
class ReplicaStats:
    """Cumulative counters of one generator replica (a snapshot)."""

    replica: str = ""
    requests: int = 0
    ok: int = 0
    failed: int = 0
    cancelled: int = 0
    images: int = 0
    steps: int = 0
    """Denoising steps run (a cancelled request stops adding to it)."""
    cache_hits: int = 0
    cache_misses: int = 0
    tenant_loads: int = 0
    tenant_evictions: int = 0
    load_seconds: float = 0.0
    batches: int = 0
    batch_sizes: dict[int, int] = field(default_factory=dict)
    """Mixed mode: pipeline calls by number of requests in the call."""
    queued: int = 0
    """Requests on this replica not finished yet (waiting for the worker thread or running) at the snapshot."""
    busy_s: float = 0.0
    busy_cpu_s: float = 0.0
    """CPU seconds of the worker thread while generating: below ``busy_s`` when the thread waited for a core."""


@dataclass(frozen=True)
class Generated:
    """The images of one request."""

    images: list[bytes]
    seed: int
    version: int | None
    tenant: str
    stats: ReplicaStats | None = None
    ok: bool = True


@dataclass(frozen=True)
class Failed:
    """One request's failure: HTTP status, error type and a message for the tenant."""

    status: int
    type: str
    message: str
    retry_after_s: int | None = None
    stats: ReplicaStats | None = None
    ok: bool = False

    @classmethod
    def of(cls, e: BaseException) -> "Failed":
        if isinstance(e, CNSError):
            return cls(e.http_status, e.error_type, str(e), e.retry_after_s)
        return cls(500, "generation_failed", f"generation failed: {type(e).__name__}: {e}")

    def error(self) -> ApiError:
        """The exception the ingress raises for this failure (rendered by cns_ray/serve/http_errors.py)."""
        return ApiError(self.status, self.type, self.message, self.retry_after_s)


@dataclass(frozen=True)
class Reloaded:
    """A tenant's state re-read and re-validated from the store."""

    tenant: str
    version: int | None
    ok: bool = True
