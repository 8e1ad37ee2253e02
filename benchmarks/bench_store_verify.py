"""How long a head check, a history and `verify` take on a tenant with many versions (local store).

    python benchmarks/bench_store_verify.py --versions 10000

Builds the store cheaply: one real commit, its version folder copied to versions 2..N (records renumbered, parents
chained), one head.json naming them all. Prints a table. Target (issue 13): verify of 10,000 versions <= 60 s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))

from store_data import make_state  # noqa: E402

from cns_ray.config import StoreConfig  # noqa: E402
from cns_ray.store import ConceptStore  # noqa: E402


def build(root: str, n: int) -> ConceptStore:
    store = ConceptStore(StoreConfig(uri=root))
    store.commit("acme", make_state("acme", ("rex", "cat")), parent=None)
    src = os.path.join(root, "tenants", "acme", "versions", "1")
    rec = json.load(open(os.path.join(src, "version.json")))
    for v in range(2, n + 1):
        dst = os.path.join(root, "tenants", "acme", "versions", str(v))
        os.mkdir(dst)
        for f in ("delta.parquet", "tokens.parquet", "concepts.parquet"):
            shutil.copyfile(os.path.join(src, f), os.path.join(dst, f))
        with open(os.path.join(dst, "version.json"), "w") as fh:
            json.dump({**rec, "version": v, "parent": v - 1}, fh)
    head = store.head_record("acme").moved(n, "commit", "bench", "now")
    head.committed = head.live = [[1, n]]
    store.backend.put("tenants/acme/head.json", head.to_bytes())
    return ConceptStore(StoreConfig(uri=root))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--versions", type=int, default=10000)
    args = ap.parse_args()
    root = tempfile.mkdtemp(prefix="cns-bench-verify-")
    try:
        t = time.perf_counter()
        store = build(root, args.versions)
        rows = [("build", time.perf_counter() - t)]
        t = time.perf_counter()
        for _ in range(100):
            store.head("acme")
        rows.append(("head check (mean of 100)", (time.perf_counter() - t) / 100))
        rows.append(("head.json bytes", len(store.backend.get("tenants/acme/head.json"))))
        t = time.perf_counter()
        assert len(store.history("acme")) == args.versions
        rows.append(("history", time.perf_counter() - t))
        t = time.perf_counter()
        problems = store.verify()
        rows.append(("verify", time.perf_counter() - t))
        assert problems == [], problems[:3]
        print(f"{args.versions} versions, local store, {os.cpu_count()} CPUs")
        for name, value in rows:
            print(f"  {name:<28} {value:>12.4f}" if isinstance(value, float) else f"  {name:<28} {value:>12}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
