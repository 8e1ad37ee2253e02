"""Concept-store behaviours shared by every backend.

Not collected by itself: tests/unit/store/test_store_local.py (a folder) and tests/integration/test_store_s3.py
(moto's S3 server over HTTP) star-import these tests and each define the ``store_uri`` fixture.
Test data: TenantStates built by hand from random tensors; nothing is trained.
"""

from __future__ import annotations

import threading
import time

import pytest
import torch

from cns_ray.config import StoreConfig
from cns_ray.errors import (
    BaseMismatchError,
    CommitConflictError,
    CorruptStateError,
    DeltaValidationError,
    InputError,
    InvalidNameError,
    NotFoundError,
)
from cns_ray.store import ConceptStore, load_export
from cns_ray.store.commit import LEASE_S

from store_data import BASE, SHAPES, assert_same_state, make_state


@pytest.fixture()
def store(store_uri) -> ConceptStore:
    return ConceptStore(StoreConfig(uri=store_uri))


# ---------------------------------------------------------------------------------------------- basics
def test_empty_store_and_unknown_tenant(store):
    assert store.list_tenants() == []
    assert store.head("acme") is None
    assert store.history("acme") == []
    with pytest.raises(NotFoundError, match="acme"):
        store.load("acme")


@pytest.mark.parametrize("value_dtype", ["float16", "float32"])
def test_commit_then_load_round_trip_bit_exact(store_uri, value_dtype):
    store = ConceptStore(StoreConfig(uri=store_uri, value_dtype=value_dtype))
    state = make_state("acme", ("rex", "cat"))
    v = store.commit("acme", state, parent=None, message="first")
    assert v == 1 and store.head("acme") == 1 and store.list_tenants() == ["acme"]
    got = ConceptStore(StoreConfig(uri=store_uri)).load("acme")  # a fresh reader
    assert got.version == 1 and got.tenant == "acme"
    assert_same_state(got, state, getattr(torch, value_dtype))
    assert [c.version_added for c in got.concepts] == [1, 1]
    assert state.concepts[0].version_added is None  # the caller's state is not modified


def test_history_rollback_and_commit_after_rollback(store):
    states = [make_state("acme", ("rex",) + tuple(f"c{k}" for k in range(i)), seed=i) for i in range(3)]
    parent = None
    for i, s in enumerate(states):
        parent = store.commit("acme", s, parent=parent, message=f"step {i}")
    hist = store.history("acme")
    assert [h.version for h in hist] == [1, 2, 3] and [h.parent for h in hist] == [None, 1, 2]
    assert [h.is_head for h in hist] == [False, False, True]
    assert hist[2].concepts == ["rex", "c0", "c1"] and hist[2].nnz == states[2].delta.nnz
    assert hist[0].message == "step 0" and hist[0].base_id == BASE

    store.rollback("acme", 1)
    assert store.head("acme") == 1
    assert [h.is_head for h in store.history("acme")] == [True, False, False]
    assert_same_state(store.load("acme"), states[0])
    assert_same_state(store.load("acme", 3), states[2])  # later versions stay readable

    with pytest.raises(CommitConflictError, match="expected head 3, found head 1"):
        store.commit("acme", states[2], parent=3)
    v = store.commit("acme", make_state("acme", ("rex", "new"), seed=7), parent=1)
    assert v == 4 and store.history("acme")[-1].parent == 1 and store.head("acme") == 4
    with pytest.raises(NotFoundError, match="no version 9"):
        store.rollback("acme", 9)


def test_stale_parent_is_a_conflict_and_writes_nothing(store):
    store.commit("acme", make_state("acme"), parent=None)
    with pytest.raises(CommitConflictError, match=r"expected head None, found head 1.*reload"):
        store.commit("acme", make_state("acme", seed=2), parent=None)
    assert store.head("acme") == 1 and store.orphans() == []


def test_concurrent_committers_one_wins_nothing_lost(store):
    store.commit("acme", make_state("acme"), parent=None)
    n = 4
    states = [make_state("acme", ("rex", f"w{i}"), seed=10 + i) for i in range(n)]
    barrier = threading.Barrier(n)
    results: dict[int, object] = {}

    def worker(i):
        barrier.wait()
        try:
            results[i] = store.commit("acme", states[i], parent=1, message=f"writer {i}")
        except CommitConflictError as e:
            results[i] = e

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [i for i, r in results.items() if isinstance(r, int)]
    assert len(winners) == 1, results
    w = winners[0]
    assert store.head("acme") == results[w]
    assert_same_state(store.load("acme"), states[w])
    for i, r in results.items():
        if i != w:
            assert "expected head 1, found head" in str(r) and "reload" in str(r)
    # Losers reload and retry: every writer's concept ends up committed, nothing lost.
    for i in (i for i in range(n) if i != w):
        head = store.load("acme")
        mine = make_state("acme", tuple(c.name for c in head.concepts) + (f"w{i}",), seed=50 + i)
        store.commit("acme", mine, parent=head.version)
    assert {f"w{i}" for i in range(n)} <= {c.name for c in store.load("acme").concepts}
    assert len(store.history("acme")) == 1 + n
    assert store.verify() == [] and store.orphans() == []  # losers removed their invisible leftovers


def test_crash_between_version_files_and_head(store_uri, monkeypatch):
    store = ConceptStore(StoreConfig(uri=store_uri))
    first = make_state("acme")
    store.commit("acme", first, parent=None)

    def crash(*a, **k):
        raise RuntimeError("simulated crash before the head moved")

    monkeypatch.setattr(store._backend, "replace", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        store.commit("acme", make_state("acme", ("rex", "half"), seed=3), parent=1)
    fresh = ConceptStore(StoreConfig(uri=store_uri))
    assert fresh.head("acme") == 1 and [h.version for h in fresh.history("acme")] == [1]
    assert_same_state(fresh.load("acme"), first)
    with pytest.raises(NotFoundError):
        fresh.load("acme", 2)  # the half version is invisible
    assert fresh.orphans() == []  # in flight until its lease ends: gc must not take it
    orphans = fresh.orphans(now=time.time() + LEASE_S + 1)
    assert len(orphans) == 1 and "versions/2" in orphans[0]
    assert fresh.verify() == []  # garbage, not an error
    v = fresh.commit("acme", make_state("acme", ("rex", "next"), seed=4), parent=1)
    assert v == 3 and fresh.head("acme") == 3  # the leftover's number is skipped


def test_delete_concept_resets_only_its_own_entries(store):
    state = make_state("acme", ("rex", "cat"))
    store.commit("acme", state, parent=None)
    rex, cat = state.concepts
    v = store.delete_concept("acme", "rex")
    assert v == 2 and store.head("acme") == 2
    got = store.load("acme")
    assert [c.name for c in got.concepts] == ["cat"] and sorted(got.tokens) == ["<cat>"]
    assert "delete concept rex" in store.history("acme")[-1].message
    for layer, d in state.delta.layers.items():
        g = got.delta.layers[layer]
        assert torch.equal(g.index, cat.neurons[layer])  # rex-only entries gone, shared ones kept
        keep = torch.isin(d.index, g.index)
        assert torch.equal(g.value, d.value[keep].to(torch.float16))
    assert int(sum(torch.isin(rex.neurons[n], cat.neurons[n]).sum() for n in SHAPES)) > 0  # the test has overlap
    assert_same_state(store.load("acme", 1), state)  # old version untouched
    with pytest.raises(NotFoundError, match="no concept 'rex'"):
        store.delete_concept("acme", "rex")


def test_export_is_a_self_contained_copy(store, store_uri):
    state = make_state("acme", ("rex", "cat"))
    store.commit("acme", state, parent=None)
    store.commit("acme", make_state("acme", ("zed",), seed=9), parent=1)
    dest = store_uri.rstrip("/") + "-export/acme-v1"
    out = store.export("acme", dest, version=1)
    got = load_export(out)
    assert got.version == 1 and got.tenant == "acme"
    assert_same_state(got, state)


def test_truncated_file_is_refused_naming_it(store):
    store.commit("acme", make_state("acme"), parent=None)
    store.commit("acme", make_state("acme", ("rex", "cat"), seed=1), parent=1)
    key = "tenants/acme/versions/2/delta.parquet"
    data = store._backend.get(key)
    store._backend.put(key, data[: len(data) // 2])
    with pytest.raises(CorruptStateError, match=r"versions/2/delta\.parquet.*(truncated|corrupt)"):
        store.load("acme")
    problems = store.verify()
    assert len(problems) == 1 and "version 2" in problems[0] and "delta.parquet" in problems[0]
    store.rollback("acme", 1)  # the way out still works
    with pytest.raises(CorruptStateError):
        store.rollback("acme", 2)  # and the head is never pointed at a damaged version
    assert store.head("acme") == 1


def test_load_validates_against_the_served_base(store):
    store.commit("acme", make_state("acme"), parent=None)
    store.load("acme", shapes=SHAPES, base_id=BASE)
    wrong = {n: (o, i + 1) for n, (o, i) in SHAPES.items()}
    with pytest.raises(DeltaValidationError, match="shape"):
        store.load("acme", shapes=wrong)
    with pytest.raises(BaseMismatchError, match="another base model"):
        store.load("acme", base_id="ffffffffffffffff")


def test_tenants_are_isolated_and_names_checked(store):
    store.commit("acme", make_state("acme"), parent=None)
    with pytest.raises(NotFoundError):
        store.load("globex")
    with pytest.raises(InputError, match="belongs to tenant 'acme'"):
        store.commit("globex", make_state("acme"), parent=None)
    for bad in ("../acme", "acme/versions", "", "x" * 65):
        with pytest.raises(InvalidNameError):
            store.head(bad)
    with pytest.raises(InvalidNameError):
        store.delete_concept("acme", "../rex")
    assert store.list_tenants() == ["acme"]


def test_invalid_states_are_refused_before_writing(store):
    bad = make_state("acme")
    bad.delta.layers[next(iter(bad.delta.layers))].value[0] = float("nan")
    with pytest.raises(DeltaValidationError, match="non-finite"):
        store.commit("acme", bad, parent=None)
    huge = make_state("acme")
    huge.delta.layers[next(iter(huge.delta.layers))].value[0] = 1e6  # overflows float16
    with pytest.raises(DeltaValidationError, match="float32"):
        store.commit("acme", huge, parent=None)
    notoken = make_state("acme")
    notoken.tokens.clear()
    with pytest.raises(InputError, match="no embedding"):
        store.commit("acme", notoken, parent=None)
    assert store.head("acme") is None and store.orphans() == []


def test_general_masks_cache(store):
    g = torch.Generator().manual_seed(0)
    masks = {n: torch.rand(s, generator=g) < 0.5 for n, s in SHAPES.items()}
    assert store.get_general_masks(BASE, "k1") is None
    store.put_general_masks(BASE, "k1", masks, {"prompts": 20, "select_ratio": 0.1})
    got = store.get_general_masks(BASE, "k1")
    assert sorted(got) == sorted(masks) and all(torch.equal(got[n], masks[n]) for n in masks)
    with pytest.raises(InvalidNameError):
        store.put_general_masks("../x", "k1", masks, {})
    assert store.verify() == []


def test_uri_under_root(store, store_uri):
    assert store.uri("checkpoints", "acme").endswith("/checkpoints/acme")
    with pytest.raises(InvalidNameError):
        store.uri("checkpoints", "../..")


# ---------------------------------------------------------------------------------------------- CLI
def test_cli_concepts_verbs(store, store_uri, capsys):
    import json

    from cns_ray.cli import main

    def cns(*argv) -> tuple[int, str, str]:
        rc = main([*argv[:2], "--store", store_uri, *argv[2:]])
        out = capsys.readouterr()
        return rc, out.out, out.err

    store.commit("acme", make_state("acme", ("rex",)), parent=None, message="rex")
    store.commit("acme", make_state("acme", ("rex", "cat"), seed=1), parent=1, message="cat")

    rc, out, _ = cns("concepts", "list", "--tenant", "acme")
    assert rc == 0 and "version 2" in out and "rex" in out and "<cat>" in out
    rc, out, _ = cns("concepts", "list", "--tenant", "acme", "--json")
    assert rc == 0 and [c["name"] for c in json.loads(out)["concepts"]] == ["rex", "cat"]
    rc, out, _ = cns("concepts", "history", "--tenant", "acme")
    lines = [ln for ln in out.splitlines() if ln[2:6].strip().isdigit()]
    assert rc == 0 and len(lines) == 2 and lines[1].startswith("*") and not lines[0].startswith("*")
    rc, out, _ = cns("concepts", "rollback", "--tenant", "acme", "1")
    assert rc == 0 and "head 2 -> 1" in out and store.head("acme") == 1
    rc, out, _ = cns("concepts", "history", "--tenant", "acme", "--json")
    assert [v["is_head"] for v in json.loads(out)["versions"]] == [True, False]
    rc, out, _ = cns("concepts", "show", "--tenant", "acme", "rex", "--json")
    assert rc == 0 and json.loads(out)["version"] == 1 and json.loads(out)["stats"]["steps"] == 10
    rc, out, err = cns("concepts", "delete", "--tenant", "acme", "cat")
    assert rc != 0 and "no concept 'cat'" in err  # cat is not in the head after the rollback
    rc, out, _ = cns("concepts", "rollback", "--tenant", "acme", "2")
    rc, out, _ = cns("concepts", "delete", "--tenant", "acme", "cat")
    assert rc == 0 and "new head version 3" in out and [c.name for c in store.load("acme").concepts] == ["rex"]
    rc, out, err = cns("concepts", "rollback", "--tenant", "acme", "7")
    assert rc != 0 and "no version 7" in err and store.head("acme") == 3
    rc, out, err = cns("concepts", "list", "--tenant", "../etc")
    assert rc != 0 and "tenant name" in err
    rc, out, _ = cns("store", "verify")
    assert rc == 0 and "0 problem(s)" in out
    rc, out, _ = cns("concepts", "export", "--tenant", "acme", store_uri.rstrip("/") + "-cli-export")
    assert rc == 0 and "exported tenant acme" in out
    store._backend.put("tenants/acme/versions/1/tokens.parquet", b"garbage")
    rc, out, _ = cns("store", "verify", "--json")
    report = json.loads(out)
    assert rc == 1 and len(report["problems"]) == 1 and "tokens.parquet" in report["problems"][0]


# ---------------------------------------------------------------------------------------------- retention
def test_gc_keeps_head_parent_and_newest_and_spares_in_flight_commits(store, store_uri, monkeypatch):
    from cns_ray.store.gc import GcPolicy, collect

    parent = None
    for i in range(5):
        parent = store.commit("acme", make_state("acme", ("rex",) + tuple(f"c{k}" for k in range(i)), seed=i), parent=parent)
    store.rollback("acme", 2)  # head 2, its parent 1
    store.backend.put("checkpoints/acme/run-failed/checkpoint_000/state.pt", b"x")
    real_replace = store.backend.replace

    def crash(*a, **k):
        raise RuntimeError("crash before the head moved")

    monkeypatch.setattr(store.backend, "replace", crash)
    with pytest.raises(RuntimeError):
        store.commit("acme", make_state("acme", ("rex", "half"), seed=9), parent=2)  # claims version 6
    monkeypatch.setattr(store.backend, "replace", real_replace)

    dry = collect(store, GcPolicy(keep_last=2, dry_run=True))
    assert dry.removed_versions == {"acme": [3]} and [h.version for h in store.history("acme")] == [1, 2, 3, 4, 5]
    rep = collect(store, GcPolicy(keep_last=2, grace_s=3600))
    assert rep.removed_versions == {"acme": [3]} and rep.orphans == [] and rep.checkpoints == []  # v6 in flight
    assert [h.version for h in store.history("acme")] == [1, 2, 4, 5] and store.head("acme") == 2
    assert store.backend.list_files("tenants/acme/versions/3") == []
    with pytest.raises(NotFoundError, match="version 3 \\(it was removed"):
        store.rollback("acme", 3)
    store.rollback("acme", 5)
    assert store.verify() == []

    later = time.time() + LEASE_S + 3601
    rep = collect(store, GcPolicy(grace_s=3600), now=later)
    assert len(rep.orphans) == 1 and "versions/6" in rep.orphans[0]
    assert len(rep.checkpoints) == 1 and "run-failed" in rep.checkpoints[0]
    assert store.backend.list_files("tenants/acme/versions/6") == [] and store.backend.list_files("checkpoints") == []
    assert [h.version for h in store.history("acme")] == [1, 2, 4, 5] and store.verify() == []


# ---------------------------------------------------------------------------------------------- layout
def test_uploads_go_through_the_store_and_verify_checks_the_layout(store):
    from pathlib import Path

    from cns_ray.jobs.inputs import materialize_images

    ref = store.save_uploads("acme", [b"png-0", b"png-1"])
    assert ref.startswith("store:uploads/acme/")
    with materialize_images(ref, store.uri()) as imgs:
        assert sorted(p.name for p in Path(imgs.path).iterdir()) == ["000.png", "001.png"]
        assert (Path(imgs.path) / "001.png").read_bytes() == b"png-1"
    assert store.verify() == []
    store.backend.put("junk/notes.txt", b"x")
    store.backend.put("checkpoints/bad name/x", b"x")
    problems = store.verify()
    assert len(problems) == 2 and "junk: not part of the store layout" in problems[0] and "tenant name" in problems[1]


# ---------------------------------------------------------------------------------------------- Cones concepts
def test_cones_concept_commit_export_rollback_delete(store, tmp_path):
    from cns_ray.store.manifest import CONES_FILE

    from store_data import make_concept

    st = make_state("acme", ("rex",), seed=4)
    kit = make_concept("kit", 11, density=0.05)
    kit.method, kit.shapes = "cones", dict(SHAPES)
    st.concepts.append(kit)
    v1 = store.commit("acme", st, parent=None)
    assert CONES_FILE in store.read_version_files("acme", store.version_entry("acme", v1))
    assert_same_state(store.load("acme", v1, shapes=SHAPES, base_id=BASE), st)
    exported = load_export(store.export("acme", str(tmp_path / "export"), v1))
    assert_same_state(exported, st)
    assert exported.concept("kit").shapes == {n: tuple(s) for n, s in SHAPES.items()}
    v2 = store.delete_concept("acme", "kit")
    after = store.load("acme", v2)
    assert [c.name for c in after.concepts] == ["rex"] and after.delta.nnz == st.delta.nnz
    assert CONES_FILE not in store.read_version_files("acme", store.version_entry("acme", v2))
    store.rollback("acme", v1)
    assert store.load("acme").concept("kit").method == "cones"
    assert store.verify(shapes=SHAPES, base_id=BASE) == []
