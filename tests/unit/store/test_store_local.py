"""The concept store on a local folder: the shared behaviours, plus races and crashes across real processes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from store_cases import *  # noqa: F401,F403  (the shared behaviour tests, run here against a folder)
from store_data import assert_same_state, make_state

from cns_ray.config import StoreConfig
from cns_ray.store import ConceptStore
from cns_ray.store.commit import LEASE_S

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
TESTS = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture()
def store_uri(tmp_path):
    return str(tmp_path / "cns-store")


def _run_children(code: str, args: list[list[str]], timeout: float = 120) -> list[subprocess.CompletedProcess]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([REPO, TESTS])}
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *a], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for a in args]
    out = []
    for p in procs:
        so, se = p.communicate(timeout=timeout)
        out.append(subprocess.CompletedProcess(p.args, p.returncode, so, se))
    return out


def test_manifest_replace_is_exclusive_across_processes(store_uri, tmp_path):
    """Optimistic increments of one manifest from several processes: no update is lost, so at most one writer wins
    each round. Children load only the backend module (no torch), so many rounds stay fast."""
    from cns_ray.store.backend import LocalBackend

    LocalBackend(store_uri, store_uri).put("tenants/acme/manifest.json", b"0")
    code = """
        import importlib.util, os, sys, time
        spec = importlib.util.spec_from_file_location("backend", os.path.join(sys.argv[1], "cns_ray/store/backend.py"))
        backend = sys.modules["backend"] = importlib.util.module_from_spec(spec); spec.loader.exec_module(backend)
        root, go, n = sys.argv[2], sys.argv[3], int(sys.argv[4])
        b = backend.LocalBackend(root, root)
        while not os.path.exists(go):
            time.sleep(0.005)
        conflicts = 0
        for _ in range(n):
            while True:
                data, tag = b.get_tagged("tenants/acme/manifest.json")
                try:
                    b.replace("tenants/acme/manifest.json", str(int(data) + 1).encode(), tag)
                    break
                except backend.PreconditionFailed:
                    conflicts += 1
        print(conflicts)
    """
    go, procs, n = tmp_path / "go", 3, 40
    threading.Timer(0.5, go.touch).start()
    results = _run_children(code, [[REPO, store_uri, str(go), str(n)]] * procs)
    assert all(r.returncode == 0 for r in results), [r.stderr[-2000:] for r in results]
    final = LocalBackend(store_uri, store_uri).get("tenants/acme/manifest.json")
    assert int(final) == procs * n  # every increment landed once: no two writers won on the same content
    print(f"conflicts seen per process: {[int(r.stdout) for r in results]}")


def test_process_killed_before_head_moves(store_uri):
    """A real SIGKILL after the version files are written: old head readable, half version invisible."""
    store = ConceptStore(StoreConfig(uri=store_uri))
    first = make_state("acme")
    store.commit("acme", first, parent=None)
    code = """
        import os, signal, sys
        from store_data import make_state
        from cns_ray.config import StoreConfig
        from cns_ray.store import ConceptStore
        store = ConceptStore(StoreConfig(uri=sys.argv[1]))
        store._backend.replace = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
        store.commit("acme", make_state("acme", ("rex", "half"), seed=5), parent=1)
    """
    (r,) = _run_children(code, [[store_uri]])
    assert r.returncode == -9, r.stderr[-2000:]
    assert store.head("acme") == 1 and [h.version for h in store.history("acme")] == [1]
    assert_same_state(store.load("acme"), first)
    assert store.orphans() == [] and len(store.orphans(now=time.time() + LEASE_S + 1)) == 1 and store.verify() == []
    assert sorted(os.listdir(os.path.join(store_uri, "tenants", "acme", "versions", "2"))) == [
        "commit.json", "concepts.parquet", "delta.parquet", "tokens.parquet", "version.json"]


def test_cli_gc_removes_stale_temp_files_and_legacy_manifests(store_uri, capsys):
    import json

    from cns_ray.cli import main

    store = ConceptStore(StoreConfig(uri=store_uri))
    store.commit("acme", make_state("acme"), parent=None)
    d = os.path.join(store_uri, "tenants", "acme", "versions", "1")
    stale, fresh = os.path.join(d, "." + "delta.parquet.tmp-" + "a" * 32), os.path.join(d, ".x.tmp-" + "b" * 32)
    for p in (stale, fresh):
        open(p, "wb").close()
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    store.backend.put("tenants/acme/manifest.json", b"{}")  # a legacy leftover: head.json is authoritative
    assert main(["store", "gc", "--store", store_uri, "--grace-hours", "1", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert len(rep["temp_files"]) == 1 and rep["temp_files"][0].endswith("a" * 32) and len(rep["legacy_manifests"]) == 1
    assert not os.path.exists(stale) and os.path.exists(fresh) and store.verify() == []
