"""Cancellation reaches the denoising loop, in the swap and the mixed path: a cancelled request stops after the
step it is in (no Ray: the generator core on the real default base model, its single worker thread)."""

import asyncio

import pytest

from cns_ray.serve.config import ServingConfig
from cns_ray.serve.swap import GenerationRequest, weights_digest
from serve_states import random_state

STEPS = 400  # far more than the test lets run


@pytest.fixture(scope="module")
def core(tiny_base, tmp_path_factory):
    from cns_ray.config import StoreConfig
    from cns_ray.serve.generator import GeneratorCore
    from cns_ray.store import ConceptStore

    root = str(tmp_path_factory.mktemp("cancel-store"))
    store = ConceptStore(StoreConfig(uri=root))
    store.commit("acme", random_state(tiny_base, "acme", 3), parent=None)
    return GeneratorCore(ServingConfig(store=root, max_steps=STEPS), base=tiny_base, store=store)


async def _cancel_after_some_steps(core, coro_fn):
    start = core.counters["steps"]
    task = asyncio.ensure_future(coro_fn())
    for _ in range(2000):  # bounded: until the pipeline has run a few steps
        await asyncio.sleep(0.01)
        if core.counters["steps"] - start >= 3:
            break
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.get_running_loop().run_in_executor(core.worker, lambda: None)  # the worker is free again
    return core.counters["steps"] - start


@pytest.mark.parametrize("mode", ["swap", "mixed"])
def test_a_cancelled_request_stops_in_the_denoising_loop(core, tiny_base, mode):
    before = weights_digest(tiny_base)
    req = GenerationRequest(prompt="a photo of <tok> dog", steps=STEPS, seed=1, height=32, width=32)
    slot = core.new_slot("acme")
    cancelled0, ok0 = core.counters["cancelled"], core.counters["ok"]

    async def run():
        if mode == "swap":
            return await core.generate(slot, req)
        import threading

        return await _mixed(core, slot, req, threading.Event())

    done = asyncio.run(_cancel_after_some_steps(core, run))
    assert 3 <= done < STEPS  # stopped early (a step or two after the cancel), not after all 400
    assert core.counters["ok"] == ok0
    if mode == "swap":
        assert core.counters["cancelled"] == cancelled0 + 1
    assert weights_digest(tiny_base) == before  # restored on cancel


async def _mixed(core, slot, req, event):
    try:
        return await core.generate_many([(slot, req), (slot, req)], [event, event])
    except asyncio.CancelledError:
        event.set()  # what Generator.generate does for each caller of the batch
        raise


def test_a_request_cancelled_while_it_waited_is_left_out_of_the_mixed_call(core):
    """The coalescer hands the generator what waited; a request whose caller left meanwhile is not generated."""
    import threading

    req = GenerationRequest(prompt="a photo of <tok> dog", steps=2, seed=1, height=32, width=32)
    slot = core.new_slot("acme")
    gone, kept = threading.Event(), threading.Event()
    gone.set()
    requests0, ok0, steps0 = core.counters["requests"], core.counters["ok"], core.counters["steps"]
    left, done = asyncio.run(core.generate_many([(slot, req), (slot, req)], [gone, kept], ["r-gone", "r-kept"]))
    assert left.type == "cancelled" and left.status == 499
    assert done.images and core.counters["ok"] == ok0 + 1
    assert core.counters["requests"] == requests0 + 1  # only the live request reached the pipeline
    assert core.counters["steps"] - steps0 == 2  # one call of 2 steps, for the one image
    stats = core.stats()
    assert 0 < stats.busy_cpu_s <= stats.busy_s + 0.01  # the worker thread's CPU time, within its busy time
