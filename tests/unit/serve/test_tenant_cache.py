"""TenantSlot: TTL'd head checks, one shared load, clear refusal of a state that cannot be served."""

import asyncio

import pytest

from cns_ray.errors import CorruptStateError
from cns_ray.serve.swap import ServedTenant
from cns_ray.serve.tenant_cache import TenantSlot, TenantUnavailableError


class FakeStore:
    """Head pointer + loader with call counts (the real store is exercised in the integration tests)."""

    def __init__(self):
        self.heads = {"acme": 1}
        self.loads = 0
        self.broken = set()

    def head(self, tenant):
        return self.heads[tenant]

    def load(self, tenant, head):
        self.loads += 1
        if head in self.broken:
            raise CorruptStateError(f"delta.parquet of version {head} is corrupt")
        return ServedTenant(tenant=tenant, version=head, delta=None, tokens={})


def test_new_head_is_picked_up_after_the_ttl():
    store, now = FakeStore(), [0.0]
    slot = TenantSlot("acme", store.load, store.head, ttl_s=5, clock=lambda: now[0])

    async def run():
        assert (await slot.current()).version == 1
        store.heads["acme"] = 2
        now[0] = 4.0
        assert (await slot.current()).version == 1  # inside the TTL: no store read
        now[0] = 6.0
        assert (await slot.current()).version == 2
        store.heads["acme"] = 3
        assert (await slot.current(force=True)).version == 3

    asyncio.run(run())
    assert store.loads == 3


def test_concurrent_first_requests_share_one_load():
    store = FakeStore()
    slot = TenantSlot("acme", store.load, store.head, ttl_s=60)

    async def run():
        return await asyncio.gather(*[slot.current() for _ in range(8)])

    assert {s.version for s in asyncio.run(run())} == {1}
    assert store.loads == 1


def test_unservable_head_is_refused_with_the_tenant_and_the_fix():
    store, now = FakeStore(), [0.0]
    slot = TenantSlot("acme", store.load, store.head, ttl_s=1, clock=lambda: now[0])
    store.broken.add(2)

    async def run():
        await slot.current()
        store.heads["acme"] = 2
        now[0] = 2.0
        with pytest.raises(TenantUnavailableError, match="tenant 'acme'.*corrupt.*roll back"):
            await slot.current()
        store.heads["acme"] = 1  # rolled back: served again
        assert (await slot.current()).version == 1

    asyncio.run(run())


def test_eviction_is_counted_once():
    """Serve's multiplexer calls ``__del__`` when it evicts a slot (LRU); garbage collection must not count it again."""
    import gc

    evicted = []
    store = FakeStore()
    slot = TenantSlot("acme", store.load, store.head, 10.0, on_evict=evicted.append)
    slot.__del__()
    del slot
    gc.collect()
    assert evicted == ["acme"]
