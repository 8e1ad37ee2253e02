"""Mixed-tenant batches vs one request at a time with the delta swapped in: throughput of one generator replica.

    nice -n 10 .venv/bin/python -m benchmarks.bench_batch            # full run (~5 minutes on 2 shared cores)
    .venv/bin/python -m benchmarks.bench_batch --quick               # smoke run (~1 minute)

Two parts, printed as markdown, both on the shipped default model ``tiny`` (32 px) and 8 tenants with random
2% deltas (every request of a different tenant than its neighbour):
1. In-process: N requests through ``generate_images`` one at a time (the swap path: what a ``batch_mode="swap"``
   replica does) vs ``cns_ray.serve.batch.generate_batch`` in batches of 1, 4, 8 and 16; images/s and the ratio to the
   swap path; plus the largest pixel difference between the two paths' images.
2. Over HTTP: the Serve app in each setup of ``HTTP_SETUPS`` (swap path; mixed with 1x / 2x max_batch_size in
   flight, the generator's max_ongoing_requests and the batch wait varied one at a time), one replica, the same
   requests (threads + httpx on 127.0.0.1): requests/s vs the swap path and vs the in-process batches of
   max_batch_size, p50/p95 latency, requests per pipeline call: where the requests wait.
Wall-clock timings on a CPU machine shared with other jobs: compare rows of one run.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import tempfile
import time
import uuid

import numpy as np
import torch

from benchmarks.bench_serve import free_port, pct, random_state, run_load
from benchmarks.common import environment_lines, fmt_ms, markdown_table
from cns_ray.config import StoreConfig
from cns_ray.serve.batch import generate_batch
from cns_ray.serve.swap import GenerationRequest, ServedTenant, generate_images
from cns_ray.store import ConceptStore

STEPS, GUIDANCE, DENSITY = 10, 4.0, 0.02


def tenants_of(base, n: int) -> dict[str, ServedTenant]:
    dim = base.text_encoder.get_input_embeddings().weight.shape[1]
    out = {}
    for i in range(n):
        st = random_state(f"t{i}", base.target_shapes(), base.base_id, dim, DENSITY, 100 + i)
        st.version = 1
        out[f"t{i}"] = ServedTenant.from_state(st, "cpu", torch.float32)
    return out


def requests_for(names: list[str], n: int) -> list[tuple[str, GenerationRequest]]:
    return [(names[i % len(names)], GenerationRequest(prompt=f"a large <{names[i % len(names)]}> shape at the center "
             "on a grey background", steps=STEPS, guidance_scale=GUIDANCE, seed=i)) for i in range(n)]


def _pixels(png: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


def bench_in_process(base, n_requests: int, n_tenants: int) -> list[list]:
    """Swap path vs batches of 1/4/8/16, interleaved in rounds of 16 requests so drift of the machine's load hits
    every row alike; wall and process CPU time (1 torch thread: CPU time is the work, less disturbed by others)."""
    weights = base.target_weights()
    served = tenants_of(base, n_tenants)
    reqs = requests_for(list(served), n_requests)
    generate_images(base, weights, served["t0"], reqs[0][1])  # warm-up
    sizes = (1, 4, 8, 16)
    wall, cpu, out = {k: 0.0 for k in ("swap", *sizes)}, {k: 0.0 for k in ("swap", *sizes)}, {k: [] for k in ("swap", *sizes)}
    for r0 in range(0, n_requests, 16):
        chunk = reqs[r0 : r0 + 16]
        for k in ("swap", *sizes):
            t0, c0 = time.perf_counter(), time.process_time()
            if k == "swap":
                out[k] += [generate_images(base, weights, served[t], r)[0] for t, r in chunk]
            else:
                for i in range(0, len(chunk), k):
                    out[k] += [imgs[0] for imgs in generate_batch(base, weights, [(served[t], r) for t, r in chunk[i : i + k]])]
            wall[k] += time.perf_counter() - t0
            cpu[k] += time.process_time() - c0
    rows = [["swap path, one request at a time", f"{n_requests / wall['swap']:.2f}", "1.00x", "1.00x", "-"]]
    for k in sizes:
        diff = max(int(np.abs(_pixels(a) - _pixels(b)).max()) for a, b in zip(out[k], out["swap"]))
        rows.append([f"mixed batches of {k} ({min(k, n_tenants)} tenants per batch)", f"{n_requests / wall[k]:.2f}",
                     f"{wall['swap'] / wall[k]:.2f}x", f"{cpu['swap'] / cpu[k]:.2f}x", str(diff)])
    return rows


HTTP_SETUPS = (
    # (label, batch_mode, in flight (x max_batch_size), generator max_ongoing_requests (None: the default), batch wait s)
    ("swap path", "swap", 2, None, 0.01),
    ("mixed, 1x max_batch_size in flight (the earlier table)", "mixed", 1, 16, 0.01),
    ("mixed, 2x in flight, generator max_ongoing_requests 16 (the old fixed value)", "mixed", 2, 16, 0.01),
    ("mixed, 2x in flight, the defaults (max_ongoing_requests 3x max_batch_size)", "mixed", 2, None, 0.01),
    ("mixed, 2x in flight, the defaults, batch wait 0.05 s", "mixed", 2, None, 0.05),
)


def bench_http(args, base, batched_ips: float) -> list[list]:
    """Each setup of :data:`HTTP_SETUPS` deployed in turn on one Ray, the same requests after a warm-up per tenant."""
    from ray import serve

    from cns_ray.jobs.ray_env import init_ray
    from cns_ray.serve.app import build_app
    from cns_ray.serve.auth import hash_key
    from cns_ray.serve.config import ServingConfig

    tmp = tempfile.mkdtemp(prefix="cns-bench-batch-")
    store = ConceptStore(StoreConfig(uri=tmp))
    dim = base.text_encoder.get_input_embeddings().weight.shape[1]
    names = [f"t{i}" for i in range(args.tenants)]
    for i, t in enumerate(names):
        store.commit(t, random_state(t, base.target_shapes(), base.base_id, dim, DENSITY, 100 + i), parent=None)
    keys = {hash_key(f"key-{t}"): t for t in names}
    jobs = [(f"key-{t}", r.prompt, r.seed) for t, r in requests_for(names, args.requests)]
    init_ray("local", num_cpus=2)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    rows, swap = [], None
    try:
        for label, mode, flight, ongoing, wait in HTTP_SETUPS:
            cfg = ServingConfig(store=tmp, torch_threads=1, num_cpus=0.5, replicas=1, default_steps=STEPS,
                                default_guidance=GUIDANCE, api_keys=keys, read_env_keys=False, batch_mode=mode,
                                max_batch_size=args.batch, batch_wait_timeout_s=wait, max_in_flight_per_tenant=64,
                                generator_max_ongoing_requests=ongoing,
                                scheduler_name=f"bench-sched-{uuid.uuid4().hex[:6]}")
            serve.run(build_app(cfg), name="cns-bench-batch", route_prefix="/")
            gen = serve.get_deployment_handle("Generator", app_name="cns-bench-batch")
            run_load(url, jobs[: args.tenants], 1, 120, size=None, steps=None, guidance=None)  # every tenant resident, pipeline warm
            s0 = gen.stats.remote().result()
            r = run_load(url, jobs, flight * args.batch, 600, size=None, steps=None, guidance=None)
            s1 = gen.stats.remote().result()
            n_req = s1["requests"] - s0["requests"]
            calls = s1["batches"] - s0["batches"] if mode == "mixed" else n_req
            rps, p50 = r["ok"] / r["wall"], pct(r["lat"], 0.5)
            swap = swap or (rps, p50)
            rows.append([label, f"{flight * args.batch}", str(cfg.generator_ongoing()), f"{r['ok']}/{len(jobs)}", f"{rps:.2f}",
                         f"{rps / swap[0]:.2f}x", f"{rps / batched_ips:.2f}x", fmt_ms(p50), f"{p50 / swap[1]:.2f}x",
                         fmt_ms(pct(r["lat"], 0.95)), f"{n_req / max(calls, 1):.1f}",
                         f"{(s1['busy_s'] - s0['busy_s']) / r['wall']:.0%}"])
            serve.delete("cns-bench-batch")
        return rows
    finally:
        serve.shutdown()
        import ray

        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: 16 requests")
    ap.add_argument("--requests", type=int, default=None, help="requests per row (default 64, 16 with --quick)")
    ap.add_argument("--tenants", type=int, default=8)
    ap.add_argument("--batch", type=int, default=8, help="max_batch_size over HTTP (default 8)")
    ap.add_argument("--only", choices=("inproc", "both"), default="both", help="inproc: skip the HTTP part")
    args = ap.parse_args(argv)
    args.requests = args.requests or (16 if args.quick else 64)
    from cns_ray.models import load_base_model

    torch.set_num_threads(1)  # as in a replica here: 2 threads on 2 contended cores ran 5-10x slower
    t_start = time.perf_counter()
    print("## Mixed-tenant batches vs the swap path" + (" (--quick)" if args.quick else ""))
    print("\n".join(environment_lines()))
    print(f"- machine shared with other jobs (load average at start {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)\n")
    base = load_base_model("tiny")
    print(f"### 1. In-process, model `tiny` (32 px), {args.requests} requests, {STEPS} steps, guidance {GUIDANCE}, "
          f"{args.tenants} tenants with {DENSITY:.0%} deltas, 1 torch thread\n")
    rows = bench_in_process(base, args.requests, args.tenants)
    print(markdown_table(["path", "images/s", "vs swap (wall)", "vs swap (CPU time per image)", "max pixel diff vs swap"], rows))
    batched = next(float(r[1]) for r in rows if r[0].startswith(f"mixed batches of {args.batch} "))
    if args.only == "inproc":
        return 0
    print(f"\n### 2. HTTP, one generator replica (0.5 CPU, 1 torch thread), max_batch_size {args.batch}, "
          f"{args.requests} requests per row\n")
    print(markdown_table(["setup", "in flight", "generator max_ongoing_requests", "ok", "requests/s", "vs swap",
                          f"vs in-process batches of {args.batch}", "p50 (ms)", "p50 vs swap", "p95 (ms)",
                          "requests per call", "replica busy"], bench_http(args, base, batched)))
    print(f"\nTotal {time.perf_counter() - t_start:.0f} s.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
