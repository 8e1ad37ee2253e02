"""The serving endpoint: HTTP throughput/latency by tenant mix, cold tenant loads (local vs S3), swap overhead.

    nice -n 10 .venv/bin/python -m benchmarks.bench_serve            # full run (~10 minutes on 2 shared cores)
    .venv/bin/python -m benchmarks.bench_serve --quick               # smoke run (~2 minutes)

The small model ("tiny model" below) is pinned to ``tiny-random`` (random weights, native 64 px;
:data:`benchmarks.common.BENCH_BASE_MODEL`), the model the tables in benchmarks/README.md were measured on (named
``tiny`` there, the default then), not the shipped trained default ``tiny`` (32 px).

Three parts, printed as markdown:
1. Swap overhead per request as a fraction of generation time, in-process: ``apply_`` + ``restore_`` of a tenant
   delta vs ``cns_ray.serve.swap.generate_images`` on the tiny model, and vs N denoising steps of an
   SD-1.5-shaped UNet (random weights; one forward at a 64x64 latent with the CFG batch of 2, times N).
2. Cold tenant load (``store.load`` with shape/base checks + ``ServedTenant.from_state``) of an SD-1.5-shaped
   1% delta and of a tiny-model tenant, from a local store and from moto's S3 server over HTTP on 127.0.0.1.
3. The Serve app (``build_app``) on a private local Ray on 127.0.0.1, tiny model, local store of random tenant
   states; a bounded load generator (fixed request count, fixed concurrency, threads + httpx, 127.0.0.1 only)
   measures requests/s and p50/p95 latency for base-only, 1, 8 and 64 tenants, and 64 tenants with the default
   LRU of 16 resident tenants; plus first (cold) vs warm request latency of a tenant.
Wall-clock timings on a CPU machine shared with other jobs: expect noise; compare rows of one run.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import math
import os
import random
import shutil
import socket
import statistics
import sys
import tempfile
import time
import uuid

import torch

from benchmarks.common import (
    BENCH_BASE_MODEL,
    QUICK_UNET_CONFIG,
    SD15_UNET_CONFIG,
    build_unet,
    environment_lines,
    fmt_bytes,
    fmt_ms,
    markdown_table,
    median_ms,
    time_calls,
)
from cns_ray.config import StoreConfig
from cns_ray.delta import LayerDelta, SparseDelta, apply_, restore_
from cns_ray.serve.swap import GenerationRequest, ServedTenant, generate_images
from cns_ray.store import ConceptRecord, ConceptStore, TenantState
from cns_ray.targets import target_specs, target_weights

SIZE, STEPS, GUIDANCE = 64, 4, 7.5  # the fixed small generation of the HTTP and tiny-model parts (tiny-random's native 64 px)
TINY_DENSITY, SD_DENSITY = 0.02, 0.01


# ------------------------------------------------------------------ inputs
def random_state(tenant: str, shapes: dict, base_id: str, dim: int, density: float, seed: int) -> TenantState:
    """A realistic-size tenant state: ``density`` of every target layer (sorted unique indices, small fp16-exact
    values) and one placeholder token ``<tenant>``; deterministic in ``seed``."""
    g = torch.Generator().manual_seed(seed)
    layers = {}
    for name, (o, i) in shapes.items():
        k = max(1, round(o * i * density))
        idx = torch.randperm(o * i, generator=g)[:k].sort().values  # [k] int64
        layers[name] = LayerDelta(idx, (torch.randn(k, generator=g) * 1e-2).half().float())  # [k]
    tok = f"<{tenant}>"
    concept = ConceptRecord(name=tenant, token=tok, class_word="dog", neurons={n: d.index for n, d in layers.items()})
    delta = SparseDelta(base_id, dict(shapes), layers)
    return TenantState(tenant=tenant, base_id=base_id, delta=delta, tokens={tok: torch.randn(dim, generator=g)}, concepts=[concept])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(samples: list[float], q: float) -> float:
    """Nearest-rank percentile, in ms."""
    s = sorted(samples)
    return s[max(0, math.ceil(q * len(s)) - 1)] * 1e3


# ------------------------------------------------------------------ 1. swap overhead
def bench_swap_tiny(base, reps: int) -> list[list]:
    weights = base.target_weights()
    dim = base.text_encoder.get_input_embeddings().weight.shape[1]
    state = random_state("t", base.target_shapes(), base.base_id, dim, TINY_DENSITY, 1)
    served = ServedTenant.from_state(state, "cpu", torch.float32)
    empty = ServedTenant.empty("plain", base.base_id)
    req = GenerationRequest(prompt="a photo of <t> dog", height=SIZE, width=SIZE, steps=STEPS, guidance_scale=GUIDANCE, seed=1)

    def swap():
        restore_(weights, apply_(weights, served.delta, base.base_id))

    t_swap = time_calls(swap, reps * 5)
    t_gen, t_plain = [], []
    for _ in range(reps):  # interleaved: machine load hits both alike
        t_gen += time_calls(lambda: generate_images(base, weights, served, req), 1, warmup=1)
        t_plain += time_calls(lambda: generate_images(base, weights, empty, req), 1, warmup=0)
    sw, gen, plain = median_ms(t_swap), median_ms(t_gen), median_ms(t_plain)
    total = sum(o * i for o, i in base.target_shapes().values())
    return [[
        f"{BENCH_BASE_MODEL} model, {state.delta.nnz:,} entries ({state.delta.nnz / total:.0%} of K/V)",
        f"{SIZE}x{SIZE}, {STEPS} steps, guidance {GUIDANCE}: generate_images {fmt_ms(gen)} (base only {fmt_ms(plain)})",
        fmt_ms(sw), f"{sw / gen:.3%}",
    ]]


def bench_swap_sd(config: dict, latent: int, reps: int) -> tuple[list[list], dict]:
    """Swap of a 1% delta vs UNet forwards on an SD-shaped UNet; returns rows and the target shapes."""
    t0 = time.perf_counter()
    unet = build_unet(config)
    specs = target_specs(unet)
    shapes = {n: t.shape for n, t in specs.items()}
    print(f"- SD-shaped UNet built in {time.perf_counter() - t0:.0f} s: {len(specs)} K/V layers, "
          f"{sum(t.numel for t in specs.values()):,} target weights", file=sys.stderr)
    weights = target_weights(unet)
    state = random_state("sd", shapes, "sd-shaped", 768, SD_DENSITY, 2)
    delta = ServedTenant.from_state(state, "cpu", torch.float32).delta
    t_swap = time_calls(lambda: restore_(weights, apply_(weights, delta)), reps * 5)
    x = torch.randn(2, 4, latent, latent)  # [CFG batch, C, h, w]
    ctx = torch.randn(2, 77, 768)  # [CFG batch, tokens, D]
    with torch.no_grad():
        t_fwd = time_calls(lambda: unet(x, 500, encoder_hidden_states=ctx), max(1, reps // 5), warmup=1)
    sw, fwd = median_ms(t_swap), median_ms(t_fwd)
    rows = []
    for steps in (4, 25, 50):
        rows.append([
            f"SD-1.5-shaped UNet{'' if config is SD15_UNET_CONFIG else ' (reduced, --quick)'}, {delta.nnz:,} entries (1% of K/V)",
            f"{steps} steps x UNet forward at {latent}x{latent} latent, CFG batch 2 = {steps} x {fmt_ms(fwd)}",
            fmt_ms(sw), f"{sw / (steps * fwd):.3%}",
        ])
    del unet, weights
    return rows, shapes


# ------------------------------------------------------------------ 2. cold tenant load
@contextlib.contextmanager
def moto_s3():
    """moto's S3 server on 127.0.0.1 and dummy AWS credentials in this process only; yields a fresh bucket."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        bucket = f"bench-{uuid.uuid4().hex[:8]}"
        boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1").create_bucket(Bucket=bucket)
        yield bucket
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()


def bench_cold_load(cases: list[tuple[str, TenantState, dict]], local_root: str, reps: int) -> list[list]:
    """(label, state, shapes) -> rows: load + from_state from a local store and from S3 (moto), and the ratio."""
    def timed(store: ConceptStore, tenant: str, shapes: dict, base_id: str) -> tuple[list[float], list[float]]:
        t_load, t_all = [], []
        for _ in range(reps + 1):
            t0 = time.perf_counter()
            st = store.load(tenant, shapes=shapes, base_id=base_id)
            t1 = time.perf_counter()
            ServedTenant.from_state(st, "cpu", torch.float32)
            t_load.append(t1 - t0)
            t_all.append(time.perf_counter() - t0)
        return t_load[1:], t_all[1:]  # the first one warms imports and the S3 connection

    local = ConceptStore(StoreConfig(uri=local_root))
    rows = []
    with moto_s3() as bucket:
        s3 = ConceptStore(StoreConfig(uri=f"s3://{bucket}/store"))
        for label, state, shapes in cases:
            for store in (local, s3):
                store.commit(state.tenant, state, parent=None)
            size = os.path.getsize(f"{local_root}/tenants/{state.tenant}/versions/1/delta.parquet")
            res = {name: timed(store, state.tenant, shapes, state.base_id) for name, store in (("local", local), ("s3", s3))}
            lo, s3t = median_ms(res["local"][1]), median_ms(res["s3"][1])
            for name in ("local", "s3"):
                ld, al = res[name]
                rows.append([label if name == "local" else "", f"{state.delta.nnz:,} / {fmt_bytes(size)}",
                             "local folder" if name == "local" else "S3 (moto server, HTTP 127.0.0.1)",
                             fmt_ms(median_ms(ld)), fmt_ms(median_ms(al)), fmt_ms(pct(al, 0.9)),
                             "1.0x" if name == "local" else f"{s3t / lo:.1f}x"])
    return rows


# ------------------------------------------------------------------ 3. the HTTP endpoint
def run_load(url: str, jobs: list[tuple[str, str, int]], concurrency: int, deadline_s: float, *, size: int | None = SIZE,
             steps: int | None = STEPS, guidance: float | None = GUIDANCE) -> dict:
    """POST every (api key, prompt, seed) with ``concurrency`` threads; requests not started by the deadline are skipped.

    ``size``/``steps``/``guidance`` None: left out of the body (the endpoint's defaults)."""
    import httpx

    end = time.monotonic() + deadline_s
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    with httpx.Client(base_url=url, timeout=600, limits=limits) as client:
        def one(job):
            if time.monotonic() > end:
                return None
            key, prompt, seed = job
            body = {"prompt": prompt, "seed": seed, "size": f"{size}x{size}" if size else None, "steps": steps,
                    "guidance_scale": guidance}
            body = {k: v for k, v in body.items() if v is not None}
            t0 = time.perf_counter()
            try:
                r = client.post("/v1/images/generations", json=body, headers={"Authorization": f"Bearer {key}"})
            except httpx.TimeoutException:  # counted as failed (a loaded machine), the run goes on
                return 0, time.perf_counter() - t0
            return r.status_code, time.perf_counter() - t0
        t0 = time.perf_counter()
        with cf.ThreadPoolExecutor(concurrency) as pool:
            out = list(pool.map(one, jobs))
        wall = time.perf_counter() - t0
    lat = [r[1] for r in out if r and r[0] == 200]
    return {"wall": wall, "lat": lat, "ok": len(lat), "failed": sum(1 for r in out if r and r[0] != 200),
            "skipped": sum(1 for r in out if r is None)}


def jobs_for(tenants: list[str], n: int, seed: int) -> list[tuple[str, str, int]]:
    rng = random.Random(seed)
    order = [tenants[i % len(tenants)] for i in range(n)]
    rng.shuffle(order)  # mixed traffic: tenants interleaved, each about n / len(tenants) times
    return [(f"key-{t}", f"a photo of <{t}> dog", i) for i, t in enumerate(order)]


def bench_http(args, base, n_tenants: int) -> tuple[list[list], list[list], str]:
    from ray import serve

    from cns_ray.jobs.ray_env import init_ray
    from cns_ray.serve.app import build_app
    from cns_ray.serve.auth import hash_key
    from cns_ray.serve.config import ServingConfig

    tmp = tempfile.mkdtemp(prefix="cns-bench-serve-")
    store = ConceptStore(StoreConfig(uri=tmp))
    dim = base.text_encoder.get_input_embeddings().weight.shape[1]
    tenants = [f"t{i:02d}" for i in range(n_tenants)]
    for i, t in enumerate(tenants):
        store.commit(t, random_state(t, base.target_shapes(), base.base_id, dim, TINY_DENSITY, 100 + i), parent=None)
    keys = {hash_key(f"key-{t}"): t for t in [*tenants, "plain"]}  # "plain" has no versions: base model, no swap

    def config(max_tenants: int) -> ServingConfig:
        return ServingConfig(store=tmp, base_model=BENCH_BASE_MODEL, torch_threads=args.torch_threads, num_cpus=0.5,
                             replicas=1, default_steps=STEPS, max_tenants_per_replica=max_tenants, api_keys=keys, read_env_keys=False,
                             max_in_flight_per_tenant=64,  # throughput, not per-tenant fairness, is measured here
                             scheduler_name=f"bench-sched-{uuid.uuid4().hex[:6]}")

    init_ray("local", num_cpus=2)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    name = "cns-bench"
    try:
        serve.run(build_app(config(n_tenants)), name=name, route_prefix="/")
        gen = serve.get_deployment_handle("Generator", app_name=name)
        run_load(url, jobs_for(["plain"], 4, 0), 1, 60)  # warm the replica (first pipeline call, ingress info)

        # first request of each tenant (cold: the replica loads its state) vs its second (warm), sequential
        first, warm = [], []
        for t in tenants[: args.cold_tenants]:
            first += run_load(url, jobs_for([t], 1, 1), 1, 60)["lat"]
            warm += run_load(url, jobs_for([t], 1, 2), 1, 60)["lat"]
        cold_rows = [[f"first request of a tenant (state loaded into the replica), {len(first)} tenants",
                      fmt_ms(statistics.median(first) * 1e3), fmt_ms(pct(first, 0.95)),
                      f"{statistics.median(first) / statistics.median(warm):.2f}x"],
                     ["the same tenant's next request (resident)", fmt_ms(statistics.median(warm) * 1e3),
                      fmt_ms(pct(warm, 0.95)), "1.00x"]]

        scenarios = [("base model only (tenant without state: no swap)", ["plain"], n_tenants)]
        scenarios += [(f"{k} tenant{'s' if k > 1 else ''}" + (" (single-tenant)" if k == 1 else " mixed"), tenants[:k], n_tenants)
                      for k in args.mixes if k <= n_tenants]
        if not args.quick and n_tenants > 16:
            scenarios.append((f"{n_tenants} tenants mixed, LRU of 16 resident (the default)", tenants, 16))
        results: dict[str, list] = {}
        plan = [(s, r) for r in range(args.rounds) for s in scenarios if s[2] == n_tenants]  # interleaved rounds
        plan += [(s, r) for s in scenarios if s[2] != n_tenants for r in range(args.rounds)]
        current, per_round = n_tenants, args.requests // args.rounds
        for (label, ts, lru), rnd in plan:
            if lru != current:
                serve.run(build_app(config(lru)), name=name, route_prefix="/")
                gen, current = serve.get_deployment_handle("Generator", app_name=name), lru
            if rnd == 0:
                run_load(url, jobs_for(ts, len(ts), 3), args.concurrency, 300)  # every tenant resident (if it fits)
            s0 = gen.stats.remote().result()
            r = run_load(url, jobs_for(ts, per_round, 4 + rnd), args.concurrency, args.deadline / args.rounds)
            s1 = gen.stats.remote().result()
            acc = results.setdefault(label, [0.0, [], 0, 0, 0, 0, 0.0])  # wall, lat, ok, failed, skipped, loads, busy
            acc[0] += r["wall"]
            acc[1] += r["lat"]
            acc[2] += r["ok"]
            acc[3] += r["failed"]
            acc[4] += r["skipped"]
            acc[5] += s1["tenant_loads"] - s0["tenant_loads"]
            acc[6] += s1["busy_s"] - s0["busy_s"]
        rows, ref = [], None
        for (label, ts, _), (wall, lat, ok, failed, skipped, loads, busy) in zip(scenarios, [results[s[0]] for s in scenarios]):
            rps = ok / wall
            if len(ts) == 1 and ts[0] != "plain":
                ref = rps
            sent = per_round * args.rounds
            rows.append([label, f"{ok}/{sent}" + (f" ({failed} failed, {skipped} skipped)" if ok < sent else ""),
                         f"{rps:.2f}", fmt_ms(pct(lat, 0.5)), fmt_ms(pct(lat, 0.95)), str(loads), f"{busy / wall:.0%}", rps])
        for row in rows:
            rps = row.pop()
            row.insert(3, f"{rps / ref:.2f}x" if ref else "-")
        return rows, cold_rows, url
    finally:
        with contextlib.suppress(Exception):
            serve.shutdown()
        import ray

        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


# ------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: reduced UNet, 8 tenants, 16 requests per mix")
    ap.add_argument("--requests", type=int, default=None, help="requests per traffic mix (default 64, 16 with --quick)")
    ap.add_argument("--concurrency", type=int, default=8, help="requests in flight (default 8)")
    ap.add_argument("--deadline", type=float, default=300.0, help="seconds per traffic mix; later requests are skipped")
    ap.add_argument("--torch-threads", type=int, default=1, help="torch threads of the generator replica (default 1)")
    ap.add_argument("--rounds", type=int, default=2, help="each mix runs in this many interleaved rounds (drift hits all alike)")
    ap.add_argument("--reps", type=int, default=None, help="timed repetitions in parts 1-2 (default 10, 3 with --quick)")
    args = ap.parse_args(argv)
    args.requests = args.requests or (16 if args.quick else 64)
    args.reps = args.reps or (3 if args.quick else 10)
    args.mixes = (1, 8) if args.quick else (1, 8, 64)
    args.cold_tenants = 4 if args.quick else 16
    n_tenants = 8 if args.quick else 64

    from cns_ray.models import load_base_model

    torch.set_num_threads(args.torch_threads)  # as in the replica; 2 threads on 2 contended cores ran 5-10x slower here
    t_start = time.perf_counter()
    print("## Serving benchmark: HTTP throughput by tenant mix, cold tenant loads, swap overhead"
          + (" (--quick)" if args.quick else ""))
    print("\n".join(environment_lines()))
    print(f"- machine shared with other jobs (load average at start {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores): "
          "timings are noisy; compare rows of one run\n")
    base = load_base_model(BENCH_BASE_MODEL)

    print("### 1. Swap overhead per request (apply_ + restore_, in-process, median)\n")
    rows = bench_swap_tiny(base, args.reps)
    sd_rows, sd_shapes = bench_swap_sd(QUICK_UNET_CONFIG if args.quick else SD15_UNET_CONFIG, 16 if args.quick else 64, args.reps)
    print(markdown_table(["tenant delta", "generation (ms, median)", "apply+restore (ms)", "swap / generation"], rows + sd_rows))
    print("\nSD rows: UNet forwards only (random weights, fp32, CPU); text encoder and VAE left out, so the fraction "
          "is an upper bound. Swap times include apply_'s validation of the delta against the live shapes.")

    print("\n### 2. Cold tenant load: store.load (integrity + shape checks) + ServedTenant.from_state\n")
    dim = base.text_encoder.get_input_embeddings().weight.shape[1]
    cases = [(f"SD-1.5-shaped{' (reduced)' if args.quick else ''}, 1% of K/V",
              random_state("sdtenant", sd_shapes, "sd-shaped", 768, SD_DENSITY, 3), sd_shapes),
             (f"{BENCH_BASE_MODEL} model, 2% of K/V", random_state("tinytenant", base.target_shapes(), base.base_id, dim, TINY_DENSITY, 4),
              base.target_shapes())]
    with tempfile.TemporaryDirectory(prefix="cns-bench-cold-") as tmp:
        cold = bench_cold_load(cases, tmp, args.reps)
    print(markdown_table(["state", "entries / delta.parquet", "store", "store.load (ms)", "load + from_state (ms)",
                          "p90 (ms)", "vs local"], cold))

    print(f"\n### 3. HTTP endpoint (Ray Serve on 127.0.0.1, {BENCH_BASE_MODEL} model, 1 generator replica, torch threads "
          f"{args.torch_threads}; in-process parts use the same); {SIZE}x{SIZE}, {STEPS} steps, guidance {GUIDANCE}, n=1\n")
    http_rows, cold_rows, _ = bench_http(args, base, n_tenants)
    print(f"{args.requests} requests per mix in {args.rounds} interleaved rounds, {args.concurrency} in flight (threads + httpx), after one warm-up request "
          "per tenant; 'tenant loads' counts state loads in the replica during the timed run; 'replica busy' is the "
          "time its swap+generate worker ran over the wall time.\n")
    print(markdown_table(["traffic", "ok", "requests/s", "vs single-tenant", "p50 (ms)", "p95 (ms)", "tenant loads",
                          "replica busy"], http_rows))
    print("\nFirst vs next request of a tenant, sequential (one in flight), local store:\n")
    print(markdown_table(["request", "median (ms)", "p95 (ms)", "vs resident"], cold_rows))
    print(f"\nTotal {time.perf_counter() - t_start:.0f} s.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
