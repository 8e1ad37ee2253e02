"""The coalescer the mixed-mode generator relies on: one call at a time, full calls from what waited, cancelled
submitters left out, a failing call failing only its own submitters (no Ray, no model)."""

from __future__ import annotations

import asyncio

import pytest

from cns_ray.serve.coalesce import Coalescer


class FakeRun:
    """A pipeline call that takes ``seconds`` and records what it held; an item ``"boom"`` fails the call."""

    def __init__(self, seconds: float = 0.05):
        self.calls: list[list] = []
        self.seconds = seconds

    async def __call__(self, items: list) -> list:
        self.calls.append(list(items))
        await asyncio.sleep(self.seconds)
        if "boom" in items:
            raise RuntimeError("boom")
        return [x * 10 for x in items]


async def _submit_behind_a_running_call(c: Coalescer, batches: list[list]) -> tuple[asyncio.Future, list[asyncio.Future]]:
    first = asyncio.ensure_future(c.submit([1]))
    await asyncio.sleep(0.01)  # the first call is running: what is submitted now waits for the next one
    return first, [asyncio.ensure_future(c.submit(b)) for b in batches]


def test_what_waits_behind_a_running_call_goes_into_full_calls_in_order():
    run = FakeRun()

    async def main():
        c = Coalescer(run, max_items=4)
        first, rest = await _submit_behind_a_running_call(c, [[2], [3, 4], [5], [6]])
        return await asyncio.gather(first, *rest), c.calls

    out, calls = asyncio.run(main())
    assert out == [[10], [20], [30, 40], [50], [60]]  # each submitter gets its own items' results, in order
    assert run.calls == [[1], [2, 3, 4, 5], [6]] and calls == 3  # never more than 4; a submission is never split


def test_a_cancelled_submitter_is_left_out_of_its_call():
    run = FakeRun()

    async def main():
        c = Coalescer(run, max_items=8)
        first, (a, b, d) = await _submit_behind_a_running_call(c, [[2], [3], [4]])
        b.cancel()  # its caller went away while it waited
        out = await asyncio.gather(first, a, d)
        with pytest.raises(asyncio.CancelledError):
            await b
        return out

    assert asyncio.run(main()) == [[10], [20], [40]]
    assert run.calls == [[1], [2, 4]]


def test_a_failing_call_fails_its_submitters_only_and_the_next_call_runs():
    run = FakeRun()

    async def main():
        c = Coalescer(run, max_items=2)
        first, (bad, mate, later) = await _submit_behind_a_running_call(c, [["boom"], [2], [3]])
        return await asyncio.gather(first, bad, mate, later, return_exceptions=True)

    first, bad, mate, later = asyncio.run(main())
    assert first == [10] and later == [30]
    assert isinstance(bad, RuntimeError) and isinstance(mate, RuntimeError)  # the generator reruns inside its call
    assert run.calls == [[1], ["boom", 2], [3]]


def test_an_oversized_submission_runs_alone_and_a_wrong_result_count_is_an_error():
    run = FakeRun(seconds=0)

    async def main():
        c = Coalescer(run, max_items=2)
        big = await c.submit([1, 2, 3])
        short = Coalescer(lambda items: asyncio.sleep(0, result=[0]), max_items=4)
        with pytest.raises(RuntimeError, match="returned 1 results for 2 items"):
            await short.submit([1, 2])
        return big

    assert asyncio.run(main()) == [10, 20, 30]
    with pytest.raises(ValueError, match="max_items=0 must be >= 1"):
        Coalescer(run, max_items=0)


def test_a_lone_submission_starts_at_once_and_the_coalescer_idles_after():
    run = FakeRun(seconds=0)

    async def main():
        c = Coalescer(run, max_items=8)
        a = await c.submit([1])
        b = await c.submit([2])  # the drainer had finished: a new one starts
        return a, b

    assert asyncio.run(main()) == ([10], [20]) and run.calls == [[1], [2]]
