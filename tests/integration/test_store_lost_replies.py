"""Lost replies on S3: a fault-injecting proxy between boto3 and moto's server performs chosen requests and drops
their replies; botocore retries. A commit or rollback whose reply was lost is a success, and nothing committed is
ever deleted. Also: a head check of an unchanged head is a conditional GET answered 304."""

from __future__ import annotations

import pytest
from s3_fault_proxy import FaultProxy
from store_data import assert_same_state, make_state

from cns_ray.config import StoreConfig
from cns_ray.store import ConceptStore


@pytest.fixture()
def proxy(s3_env, moto_server, monkeypatch):
    with FaultProxy(moto_server) as p:
        monkeypatch.setenv("AWS_ENDPOINT_URL", p.url)
        yield p


@pytest.fixture()
def store(proxy, s3_env) -> ConceptStore:
    return ConceptStore(StoreConfig(uri=f"s3://{s3_env}/lost"))


def _dropped(proxy: FaultProxy, part: str) -> list:
    return [s for s in proxy.seen(part) if s.dropped]


def test_lost_reply_of_the_head_move_keeps_the_commit(proxy, store):
    first, second = make_state("acme"), make_state("acme", ("rex", "cat"), seed=1)
    store.commit("acme", first, parent=None)
    proxy.drop_reply("PUT", "/tenants/acme/head.json")
    v = store.commit("acme", second, parent=1)  # the retry meets 412 (its own write): still a success
    assert len(_dropped(proxy, "head.json")) == 1
    assert [s.status for s in proxy.seen("head.json") if s.method == "PUT"][-2:] == [200, 412]
    fresh = ConceptStore(StoreConfig(uri=store.uri()))
    assert v == 2 and fresh.head("acme") == 2
    assert_same_state(fresh.load("acme"), second)
    assert fresh.verify() == [] and fresh.orphans() == []


def test_lost_reply_of_a_create_once_file_is_its_own_write(proxy, store):
    proxy.drop_reply("PUT", "/versions/1/delta.parquet")
    proxy.drop_reply("PUT", "/versions/1/commit.json")
    state = make_state("acme")
    assert store.commit("acme", state, parent=None) == 1
    assert len(_dropped(proxy, "/versions/1/")) == 2
    assert_same_state(store.load("acme"), state)
    assert store.verify() == []


def test_lost_reply_of_a_rollback_is_no_false_conflict(proxy, store):
    store.commit("acme", make_state("acme"), parent=None)
    store.commit("acme", make_state("acme", ("rex", "cat"), seed=1), parent=1)
    proxy.drop_reply("PUT", "/tenants/acme/head.json")
    store.rollback("acme", 1)
    assert len(_dropped(proxy, "head.json")) == 1
    assert ConceptStore(StoreConfig(uri=store.uri())).head("acme") == 1


def test_head_check_is_a_conditional_get(proxy, store):
    store.commit("acme", make_state("acme"), parent=None)
    reader = ConceptStore(StoreConfig(uri=store.uri()))
    assert reader.head("acme") == 1
    n = len(proxy.seen())
    assert reader.head("acme") == 1
    (check,) = proxy.seen()[n:]  # one request, whatever the number of versions
    assert check.method == "GET" and check.path.endswith("/tenants/acme/head.json")
    assert check.headers.get("If-None-Match") and check.status == 304 and check.body_bytes == 0
    store.commit("acme", make_state("acme", ("rex", "cat"), seed=1), parent=1)
    assert reader.head("acme") == 2  # a moved head is seen at once


def test_every_reply_of_the_head_move_lost_still_keeps_the_commit(proxy, store):
    """botocore gives up (no reply ever came): the head is re-read, and it shows the commit landed."""
    store.commit("acme", make_state("acme"), parent=None)
    proxy.drop_reply("PUT", "/tenants/acme/head.json", times=100)
    second = make_state("acme", ("rex", "cat"), seed=1)
    assert store.commit("acme", second, parent=1) == 2
    assert len(_dropped(proxy, "head.json")) >= 2  # the first try and botocore's retries
    assert_same_state(ConceptStore(StoreConfig(uri=store.uri())).load("acme"), second)
    assert store.verify() == []
