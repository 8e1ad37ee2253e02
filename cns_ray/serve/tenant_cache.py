"""One resident tenant in a replica: its served state, and the version check that picks up a new head.

The LRU over tenants is Serve's model multiplexing (one :class:`TenantSlot` per multiplexed model id; Serve shares
one load among concurrent first requests and evicts the least recently used). A slot re-reads the tenant's head at
most every ``ttl_s`` seconds; when the head moved (a new version, a rollback, a delete), the next request loads
the new state first. A head that cannot be loaded (corrupt, another base) is refused with
:class:`TenantUnavailableError`; the slot keeps its last good state but does not serve it in place of the head,
and retries on the next request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable

from cns_ray.errors import BaseMismatchError, CorruptStateError, DeltaValidationError, NotFoundError, StoreError, TenantUnavailableError
from cns_ray.serve.swap import ServedTenant

log = logging.getLogger(__name__)

__all__ = ["TenantSlot", "TenantUnavailableError", "describe_load_error"]


Loader = Callable[[str, "int | None"], ServedTenant]  # (tenant, head) -> served state (blocking)
HeadFn = Callable[[str], "int | None"]  # tenant -> head version or None (blocking)


def describe_load_error(e: Exception) -> str:
    kind = {
        BaseMismatchError: "its state was learned on another base model",
        DeltaValidationError: "its delta is invalid",
        CorruptStateError: "its stored state is corrupt",
        NotFoundError: "a file of its head version is missing",
        StoreError: "the concept store could not be read",
    }
    for cls, text in kind.items():
        if isinstance(e, cls):
            return f"{text} ({e}); roll back to a good version (POST /v1/concepts/rollback) or relearn"
    return f"{type(e).__name__}: {e}"


class TenantSlot:
    """A tenant's served state with a TTL'd head check. Safe for concurrent coroutines of one replica."""

    def __init__(
        self,
        tenant: str,
        loader: Loader,
        head_fn: HeadFn,
        ttl_s: float,
        clock: Callable[[], float] = time.monotonic,
        on_evict: Callable[[str], None] | None = None,
    ):
        self.tenant = tenant
        self._on_evict = on_evict
        self._loader = loader
        self._head_fn = head_fn
        self._ttl = ttl_s
        self._clock = clock
        self._lock = asyncio.Lock()
        self._served: ServedTenant | None = None
        self._error: TenantUnavailableError | None = None
        self._checked_at = float("-inf")
        self.loads = 0

    @property
    def version(self) -> int | None:
        return self._served.version if self._served else None

    def _fresh(self) -> bool:
        return self._error is None and self._served is not None and self._clock() - self._checked_at < self._ttl

    def __del__(self) -> None:
        """Serve's multiplexer calls this when it evicts the slot (LRU); counted once."""
        cb, self._on_evict = getattr(self, "_on_evict", None), None
        if cb is not None:
            cb(self.tenant)

    async def current(self, force: bool = False) -> ServedTenant:
        """The state of the tenant's head (re-checked when the TTL passed; ``force``: re-loaded and re-validated
        from the store even when the head did not move, e.g. after a file of that version changed)."""
        if not force and self._fresh():
            return self._served  # type: ignore[return-value]
        async with self._lock:
            if not force and self._fresh():  # another coroutine refreshed while we waited
                return self._served  # type: ignore[return-value]
            try:
                head = await asyncio.to_thread(self._head_fn, self.tenant)
                if force or self._served is None or head != self._served.version or self._error is not None:
                    served = await asyncio.to_thread(self._loader, self.tenant, head)
                    self.loads += 1
                    log.info("tenant %s: loaded version %s", self.tenant, served.version)
                    self._served = served
                self._error = None
                self._checked_at = self._clock()
            except Exception as e:
                self._error = TenantUnavailableError(self.tenant, describe_load_error(e))
                log.warning("%s", self._error)
                raise self._error from e
            return self._served
