"""Serving with many tenants: 1,000 tenants in the store vs 8, the default LRU, cold loads from a local store.

    nice -n 10 .venv/bin/python -m benchmarks.bench_tenants            # ~5 minutes on 2 shared cores
    .venv/bin/python -m benchmarks.bench_tenants --quick               # 100 tenants, 32 requests per row

On the shipped default model ``tiny``, the Serve app with its defaults (``batch_mode="mixed"``, LRU of
``max_tenants_per_replica`` = 16 states per replica), one generator replica (0.5 CPU, 1 torch thread), random 2%
deltas + one token per tenant. Rows, one Ray, same request count and concurrency (2x max_batch_size in flight),
interleaved in rounds of ``--round`` requests (the two rows alternate which goes first):
- 8 tenants, interleaved (all resident: a warm-up request each before each of its rounds, not timed);
- 1,000 tenants, each request of a tenant drawn at random (almost every request a cold load: 16 of 1,000 resident).
Plus, in-process: the cold-load time (``store.load`` + ``ServedTenant.from_state``) and the memory one resident
tenant holds (its delta's int64 indices and values, its token embeddings). And (unless ``--no-affinity``) tenant
affinity with two generator replicas: 16 tenants, each loaded once by a warm-up request, then requests through the
Generator's handle (the route the ingress takes, cns_ray/serve/routing.py): the share of a tenant's requests served
by the replica that already held it, and how many tenants ended up loaded on both replicas.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import tempfile
import time
import uuid

import torch

from benchmarks.bench_serve import free_port, pct, random_state, run_load
from benchmarks.common import environment_lines, fmt_bytes, fmt_ms, markdown_table
from cns_ray.config import StoreConfig
from cns_ray.serve.swap import ServedTenant
from cns_ray.store import ConceptStore

STEPS, GUIDANCE, DENSITY = 10, 4.0, 0.02


def resident_bytes(served: ServedTenant) -> int:
    d = sum(ld.index.numel() * ld.index.element_size() + ld.value.numel() * ld.value.element_size()
            for ld in served.delta.layers.values())
    return d + sum(t.numel() * t.element_size() for t in served.tokens.values())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="100 tenants, 32 requests per row")
    ap.add_argument("--tenants", type=int, default=None, help="tenants in the store (default 1000, quick 100)")
    ap.add_argument("--requests", type=int, default=None, help="requests per row (default 96, quick 32)")
    ap.add_argument("--round", type=int, default=32, help="requests per round (rows alternate in rounds)")
    ap.add_argument("--no-affinity", action="store_true", help="skip the two-replica tenant-affinity row")
    args = ap.parse_args(argv)
    n_many = args.tenants or (100 if args.quick else 1000)
    n_req = args.requests or (32 if args.quick else 96)
    n_round = min(args.round, n_req)
    from ray import serve

    from cns_ray.jobs.ray_env import init_ray
    from cns_ray.models import load_base_model
    from cns_ray.serve.app import build_app
    from cns_ray.serve.auth import hash_key
    from cns_ray.serve.config import ServingConfig

    torch.set_num_threads(1)
    t_start = time.perf_counter()
    print(f"## Many tenants: {n_many} vs 8 in the store" + (" (--quick)" if args.quick else ""))
    print("\n".join(environment_lines()))
    print(f"- machine shared with other jobs: load average {_load()} at start on {os.cpu_count()} cores")
    base = load_base_model("tiny")
    tmp = tempfile.mkdtemp(prefix="cns-bench-tenants-")
    try:
        store = ConceptStore(StoreConfig(uri=tmp))
        dim = base.text_encoder.get_input_embeddings().weight.shape[1]
        names = [f"t{i}" for i in range(n_many)]
        t0 = time.perf_counter()
        for i, t in enumerate(names):
            store.commit(t, random_state(t, base.target_shapes(), base.base_id, dim, DENSITY, 100 + i), parent=None)
        print(f"- store: {n_many} tenants committed in {time.perf_counter() - t0:.0f} s (local folder)\n")

        loads, sizes = [], []
        for t in names[:20]:  # in-process cold load: what a replica does on a miss
            t0 = time.perf_counter()
            served = ServedTenant.from_state(store.load(t, shapes=base.target_shapes(), base_id=base.base_id), "cpu", torch.float32)
            loads.append(time.perf_counter() - t0)
            sizes.append(resident_bytes(served))
        print(f"Cold load in-process (store.load + from_state, median of 20): {fmt_ms(statistics.median(loads) * 1e3)} ms; "
              f"one resident tenant holds {fmt_bytes(statistics.median(sizes))} "
              f"({served.delta.nnz:,} delta entries as int64 index + float32 value, {len(served.tokens)} token)\n")

        keys = {hash_key(f"key-{t}"): t for t in names}
        rng = random.Random(0)
        prompt = "a large <{t}> shape at the center on a grey background"
        few = [(f"key-{names[i % 8]}", prompt.format(t=names[i % 8]), i) for i in range(n_req)]
        many = [(f"key-{t}", prompt.format(t=t), i) for i, t in enumerate(rng.choice(names) for _ in range(n_req))]
        init_ray("local", num_cpus=2)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        cfg = ServingConfig(store=tmp, torch_threads=1, num_cpus=0.5, replicas=1, default_steps=STEPS,
                            default_guidance=GUIDANCE, api_keys=keys, read_env_keys=False, max_in_flight_per_tenant=64,
                            scheduler_name=f"bench-sched-{uuid.uuid4().hex[:6]}")
        serve.run(build_app(cfg), name="cns-bench-tenants", route_prefix="/")
        gen = serve.get_deployment_handle("Generator", app_name="cns-bench-tenants")
        flight = 2 * cfg.max_batch_size
        run_load(url, few[:8], 1, 120, size=None, steps=None, guidance=None)  # 8 tenants resident, pipeline warm
        labels = ("8 tenants (resident)", f"{n_many} tenants, random (cold loads)")
        acc = {k: {"wall": 0.0, "ok": 0, "lat": [], "loads": 0, "load_s": 0.0, "evictions": 0, "requests": 0, "calls": 0}
               for k in labels}
        loads_seen = []
        for r, r0 in enumerate(range(0, n_req, n_round)):
            pair = ((labels[0], few[r0 : r0 + n_round]), (labels[1], many[r0 : r0 + n_round]))
            for label, jobs in (pair if r % 2 == 0 else pair[::-1]):
                if label == labels[0]:  # the 8 resident again (a round of 1,000 evicted them), not timed
                    run_load(url, few[:8], 1, 120, size=None, steps=None, guidance=None)
                s0 = gen.stats.remote().result()
                res = run_load(url, jobs, flight, 900, size=None, steps=None, guidance=None)
                s1 = gen.stats.remote().result()
                a = acc[label]
                a["wall"] += res["wall"]
                a["ok"] += res["ok"]
                a["lat"] += res["lat"]
                for k, field in (("loads", "tenant_loads"), ("load_s", "load_seconds"), ("evictions", "tenant_evictions"),
                                 ("requests", "requests"), ("calls", "batches")):
                    a[k] += s1[field] - s0[field]
            loads_seen.append(f"{os.getloadavg()[0]:.1f}")
        rows, ref = [], None
        for label in labels:
            a = acc[label]
            rps = a["ok"] / a["wall"]
            ref = ref or rps
            rows.append([label, f"{a['ok']}/{n_req}", f"{rps:.2f}", f"{rps / ref:.2f}x", fmt_ms(pct(a["lat"], 0.5)),
                         fmt_ms(pct(a["lat"], 0.95)), str(a["loads"]),
                         fmt_ms(a["load_s"] / a["loads"] * 1e3) if a["loads"] else "-", str(a["evictions"]),
                         f"{a['requests'] / max(a['calls'], 1):.1f}"])
        print(f"HTTP, {cfg.batch_mode} mode, LRU of {cfg.max_tenants_per_replica} per replica, {n_req} requests per row "
              f"in rounds of {n_round}, {flight} in flight:\n")
        print(markdown_table(["traffic", "ok", "requests/s", "vs 8 tenants", "p50 (ms)", "p95 (ms)", "tenant loads",
                              "mean load (ms, in the replica)", "evictions", "requests per call"], rows))
        print(f"\nLoad average (1 min) after each round: {', '.join(loads_seen)}; now {_load()}.\n")
        serve.delete("cns-bench-tenants")
        if not args.no_affinity:
            print(affinity(tmp, keys, names[:16], 64, flight))
            print(f"\nLoad average at the end: {_load()}.")
    finally:
        try:
            serve.shutdown()
            import ray

            ray.shutdown()
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nTotal {time.perf_counter() - t_start:.0f} s.")
    return 0


def _load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def affinity(store_uri: str, keys: dict, tenants: list[str], n_req: int, flight: int) -> str:
    """Two generator replicas (mixed mode, the tenant-affinity router): each tenant warmed once (it loads on the
    replica the router picks), then ``n_req`` requests of the tenants interleaved through the Generator's handle
    with ``flight`` in flight; which replica served each (the reply's stats)."""
    import concurrent.futures as cf
    from collections import Counter, defaultdict

    from ray import serve

    from cns_ray.serve.app import build_app
    from cns_ray.serve.config import ServingConfig
    from cns_ray.serve.swap import GenerationRequest

    cfg = ServingConfig(store=store_uri, torch_threads=1, num_cpus=0.5, replicas=2, default_steps=STEPS,
                        default_guidance=GUIDANCE, api_keys=keys, read_env_keys=False, max_in_flight_per_tenant=64,
                        scheduler_name=f"bench-sched-{uuid.uuid4().hex[:6]}")
    serve.run(build_app(cfg), name="cns-bench-affinity", route_prefix="/affinity")
    gen = serve.get_deployment_handle("Generator", app_name="cns-bench-affinity")

    def one(job: tuple[str, int]) -> tuple[str, str, int, bool]:
        t, seed = job
        req = GenerationRequest(prompt=f"a large <{t}> shape at the center on a grey background", steps=STEPS,
                                guidance_scale=GUIDANCE, seed=seed)
        reply = gen.generate.remote(req, tenant=t, request_id=f"aff-{t}-{seed}").result()
        return t, reply.stats.replica, reply.stats.tenant_loads, reply.ok

    try:
        warm = [one((t, 0)) for t in tenants]  # one at a time: each tenant loads where the router sends it
        time.sleep(3)  # the replicas' held tenants reach the router (Serve pushes them after a load)
        home = {t: rep for t, rep, *_ in warm}
        jobs = [(tenants[i % len(tenants)], 1 + i) for i in range(n_req)]
        with cf.ThreadPoolExecutor(flight) as pool:
            served = list(pool.map(one, jobs))
        at_home = sum(1 for t, rep, *_ in served if rep == home[t])
        where = defaultdict(set)
        for t, rep, *_ in warm + served:
            where[t].add(rep)
        loads = {}
        for _, rep, n, _ in warm + served:
            loads[rep] = max(loads.get(rep, 0), n)
        split = Counter(home.values())
        ok = sum(1 for *_, good in served if good)
        rows = [[f"2 replicas, {len(tenants)} tenants, {n_req} requests ({ok} ok), {flight} in flight",
                 " / ".join(str(v) for v in split.values()), f"{at_home}/{n_req} ({at_home / n_req:.0%})",
                 str(sum(1 for v in where.values() if len(v) > 1)), str(sum(loads.values()))]]
        return ("Tenant affinity (mixed mode, cns_ray/serve/routing.py), requests through the Generator's handle:\n\n"
                + markdown_table(["setup", "tenants first loaded per replica", "requests served by the replica that "
                                  "held the tenant", "tenants served by both replicas", "tenant loads (both replicas)"], rows))
    finally:
        serve.delete("cns-bench-affinity")


if __name__ == "__main__":
    raise SystemExit(main())
