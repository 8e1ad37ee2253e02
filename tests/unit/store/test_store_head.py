"""The head pointer: one small read whatever the version count; legacy manifest.json stores still read and migrate."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest
from store_data import assert_same_state, make_state

from cns_ray.config import StoreConfig
from cns_ray.errors import CommitConflictError
from cns_ray.store import ConceptStore
from cns_ray.store.head import HeadRecord
from cns_ray.store.manifest import MANIFEST_SCHEMA


class CountingBackend:
    """Wraps a backend; records (method, key, bytes returned) of every read."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def __getattr__(self, name):
        f = getattr(self.inner, name)
        if not callable(f) or name == "uri":  # uri() is no I/O
            return f

        def call(*a, **k):
            out = f(*a, **k)
            size = len(out[0]) if isinstance(out, tuple) else len(out) if isinstance(out, bytes) else None
            self.calls.append((name, a[0] if a else None, size))
            return out

        return call


def test_head_check_reads_one_small_object_with_2000_versions(tmp_path):
    store = ConceptStore(StoreConfig(uri=str(tmp_path / "s")))
    store.commit("acme", make_state("acme"), parent=None)
    rec1 = store.backend.get("tenants/acme/versions/1/version.json")
    n = 2000
    for v in range(2, n + 1):  # cheap records (no fsync): the head check must not read them anyway
        d = tmp_path / "s" / "tenants" / "acme" / "versions" / str(v)
        d.mkdir()
        (d / "version.json").write_bytes(rec1.replace(b'"version": 1', f'"version": {v}'.encode()))
    head = store.head_record("acme").moved(n, "commit", "x", "now")
    head.committed = head.live = [[1, n]]
    store.backend.put("tenants/acme/head.json", head.to_bytes())

    reader = ConceptStore(StoreConfig(uri=store.uri()))
    reader._backend = counting = CountingBackend(reader._backend)
    assert reader.head("acme") == n
    assert [(m, k) for m, k, _ in counting.calls] == [("get_if_changed", "tenants/acme/head.json")]
    assert counting.calls[0][2] < 2048  # small, whatever the number of versions
    assert [h.version for h in reader.history("acme")][-3:] == [n - 2, n - 1, n]


def _make_legacy(store: ConceptStore, tenant: str) -> None:
    """Turn a tenant into the pre-head.json layout: one manifest.json with every entry and the head."""
    b = store.backend
    head = store.head_record(tenant)
    entries = []
    for v in range(1, head.top() + 1):
        d = asdict(store.version_entry(tenant, v))
        d.pop("commit_id")
        entries.append(d)
        b.delete(f"tenants/{tenant}/versions/{v}/version.json")
        b.delete(f"tenants/{tenant}/versions/{v}/commit.json")
    moves = [{"at": "2026-01-01T00:00:00.000+00:00", "head": e["version"], "action": "commit"} for e in entries]
    manifest = {"schema_version": MANIFEST_SCHEMA, "tenant": tenant, "head": head.head, "versions": entries, "moves": moves}
    b.put(f"tenants/{tenant}/manifest.json", json.dumps(manifest).encode())
    b.delete(f"tenants/{tenant}/head.json")


def test_legacy_manifest_is_read_then_migrated_on_write(tmp_path):
    store = ConceptStore(StoreConfig(uri=str(tmp_path / "s")))
    states = [make_state("acme"), make_state("acme", ("rex", "cat"), seed=1)]
    store.commit("acme", states[0], parent=None)
    store.commit("acme", states[1], parent=1)
    _make_legacy(store, "acme")

    old = ConceptStore(StoreConfig(uri=store.uri()))
    assert not old.backend.exists("tenants/acme/head.json")
    assert old.list_tenants() == ["acme"] and old.head("acme") == 2
    assert [h.version for h in old.history("acme")] == [1, 2]
    assert_same_state(old.load("acme", 1), states[0])
    assert old.verify() == []
    with pytest.raises(CommitConflictError):
        old.commit("acme", make_state("acme", ("z",), seed=3), parent=1)
    old.rollback("acme", 1)  # the first write migrates
    assert old.backend.exists("tenants/acme/head.json") and old.head("acme") == 1
    assert old.backend.exists("tenants/acme/versions/2/version.json")
    v = old.commit("acme", make_state("acme", ("rex", "dot"), seed=4), parent=1)
    assert v == 3 and [h.version for h in old.history("acme")] == [1, 2, 3] and old.verify() == []
    assert_same_state(old.load("acme", 2), states[1])
    assert HeadRecord.from_bytes(old.backend.get("tenants/acme/head.json"), "head").committed == [[1, 3]]
