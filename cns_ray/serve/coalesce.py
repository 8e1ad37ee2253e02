"""One pipeline call at a time, each holding as many waiting items as fit: full calls under load.

Ray Serve's ``serve.batch`` (2.60) forms a batch as soon as its first request's ``batch_wait_timeout_s`` ends,
whether or not the previous call has finished, and the formed batches then queue on ``max_concurrent_batches`` for
the single worker thread: under load calls held ~2 requests with 8-16 waiting (benchmarks/README.md, issue 14).
The generator therefore accepts Serve's batches concurrently and submits them here; batches submitted while a call
runs are merged into the next call, up to ``max_items``, so at >= 2x ``max_items`` in flight every call is full.
"""

from __future__ import annotations

import asyncio
import contextvars
from typing import Awaitable, Callable, Generic, Sequence, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Coalescer(Generic[T, R]):
    """Runs ``run`` on one merged list at a time (first come, first served; a submission is never split).

    - ``submit(items)`` returns ``items``' results, in order, when the call that held them ends;
    - a submission whose caller went away (its ``submit`` cancelled) before its call started is left out;
    - if a call raises, every submission in it gets that exception, and the next call still runs;
    - a submission larger than ``max_items`` runs alone (never split, never refused).
    Not thread-safe: one event loop (the replica's) submits and drains."""

    def __init__(self, run: Callable[[list[T]], Awaitable[Sequence[R]]], max_items: int):
        if max_items < 1:
            raise ValueError(f"max_items={max_items} must be >= 1: it is the most items one call may hold")
        self._run, self._max = run, max_items
        self._pending: list[tuple[list[T], asyncio.Future]] = []
        self._drainer: asyncio.Task | None = None
        self.calls = 0  # calls started (for tests and stats)

    async def submit(self, items: Sequence[T]) -> list[R]:
        fut = asyncio.get_running_loop().create_future()
        self._pending.append((list(items), fut))
        if self._drainer is None or self._drainer.done():
            # an empty context: the calls are no single request's (Serve's batcher unsets its request context too)
            self._drainer = asyncio.get_running_loop().create_task(self._drain(), context=contextvars.Context())
        return await fut

    def _take(self) -> list[tuple[list[T], asyncio.Future]]:
        """The next call's submissions: the oldest live ones whose items fit in ``max_items`` together."""
        take: list[tuple[list[T], asyncio.Future]] = []
        n = 0
        while self._pending:
            items, fut = self._pending[0]
            if fut.done():  # its caller was cancelled while it waited
                self._pending.pop(0)
                continue
            if take and n + len(items) > self._max:
                break
            take.append(self._pending.pop(0))
            n += len(items)
        return take

    async def _drain(self) -> None:
        while take := self._take():
            self.calls += 1
            try:
                merged = [x for items, _ in take for x in items]
                results = list(await self._run(merged))
                if len(results) != len(merged):
                    raise RuntimeError(f"the coalesced call returned {len(results)} results for {len(merged)} items: "
                                       "its run function must return one result per item, in order")
            except asyncio.CancelledError:  # the replica shuts down: nobody is served after this
                for _, fut in (*take, *self._pending):
                    fut.cancel()
                self._pending.clear()
                raise
            except Exception as e:  # noqa: BLE001 - handed to every submitter of this call
                for _, fut in take:
                    if not fut.done():
                        fut.set_exception(e)
                continue
            start = 0
            for items, fut in take:
                if not fut.done():
                    fut.set_result(results[start : start + len(items)])
                start += len(items)
