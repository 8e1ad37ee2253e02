"""Mixed-tenant batches vs one request at a time with the delta swapped in: throughput of one generator replica.

    nice -n 10 .venv/bin/python -m benchmarks.bench_batch            # 64 requests per row (~3-10 minutes on 2 shared cores)
    .venv/bin/python -m benchmarks.bench_batch --quick               # smoke run: 16 requests per row

Two parts, printed as markdown, both on the shipped default model ``tiny`` (32 px) and 8 tenants with random
2% deltas (every request of a different tenant than its neighbour):
1. In-process: N requests through ``generate_images`` one at a time (the swap path: what a ``batch_mode="swap"``
   replica does) vs ``cns_ray.serve.batch.generate_batch`` in batches of 1 and ``max_batch_size``; images/s and the
   ratio to the swap path (wall and CPU time); plus the largest pixel difference between the two paths' images.
2. Over HTTP: the Serve app in each setup of ``HTTP_SETUPS`` (the swap path and mixed mode at 2x max_batch_size in
   flight, mixed at 1x), each its own app with one generator replica, all deployed at once under their own route
   prefixes; the same requests (threads + httpx on 127.0.0.1): requests/s vs the swap path and vs the in-process
   batches of max_batch_size, p50/p95 latency, requests per pipeline call and the share of full calls; the replica
   worker thread's CPU time per request, and the share of its busy time it held a core (where the time goes).
Every row runs the same rounds of ``--round`` requests in turn (the HTTP rows' order rotating), so the drift of a
shared machine hits every row alike: compare rows of one run.
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


IN_PROCESS = ("swap", 1, 8)  # the swap path, then mixed batches of these sizes (max_batch_size is added if missing)

HTTP_SETUPS = (
    # (label, batch_mode, in flight (x max_batch_size), generator max_ongoing_requests (None: the default), batch wait s)
    ("swap path", "swap", 2, None, 0.01),
    ("mixed (the defaults), 2x max_batch_size in flight", "mixed", 2, None, 0.01),
    ("mixed (the defaults), 1x max_batch_size in flight", "mixed", 1, None, 0.01),
)


class InProcess:
    """The in-process rows: the swap path (``generate_images`` one request at a time) and ``generate_batch`` in
    batches of ``size``; wall and process CPU time (1 torch thread: CPU time is the work, less disturbed by others)."""

    def __init__(self, base, n_tenants: int):
        self.base, self.weights = base, base.target_weights()
        self.served = tenants_of(base, n_tenants)
        self.wall: dict = {}
        self.cpu: dict = {}
        self.images: dict = {}
        self.n: dict = {}

    def run(self, key, chunk: list[tuple[str, GenerationRequest]]) -> None:
        t0, c0 = time.perf_counter(), time.process_time()
        if key == "swap":
            out = [generate_images(self.base, self.weights, self.served[t], r)[0] for t, r in chunk]
        else:
            out = [imgs[0] for i in range(0, len(chunk), key)
                   for imgs in generate_batch(self.base, self.weights, [(self.served[t], r) for t, r in chunk[i : i + key]])]
        self.wall[key] = self.wall.get(key, 0.0) + time.perf_counter() - t0
        self.cpu[key] = self.cpu.get(key, 0.0) + time.process_time() - c0
        self.images.setdefault(key, []).extend(out)
        self.n[key] = self.n.get(key, 0) + len(chunk)

    def ips(self, key) -> float:
        return self.n[key] / self.wall[key]

    def rows(self, n_tenants: int) -> list[list]:
        rows = [["swap path, one request at a time", f"{self.ips('swap'):.2f}", "1.00x", "1.00x", self.cpu_ms("swap"), "-"]]
        for k in (k for k in self.wall if k != "swap"):
            diff = max(int(np.abs(_pixels(a) - _pixels(b)).max()) for a, b in zip(self.images[k], self.images["swap"]))
            rows.append([f"mixed batches of {k} ({min(k, n_tenants)} tenants per batch)", f"{self.ips(k):.2f}",
                         f"{self.wall['swap'] / self.wall[k]:.2f}x", f"{self.cpu['swap'] / self.cpu[k]:.2f}x",
                         self.cpu_ms(k), str(diff)])
        return rows

    def cpu_ms(self, key) -> str:
        return fmt_ms(self.cpu[key] / self.n[key] * 1e3)


class HttpRow:
    """One HTTP setup of :data:`HTTP_SETUPS`: its own Serve app (one generator replica) under ``/{prefix}``; the
    load's figures summed over the rounds, the replica's counters taken before and after each round."""

    def __init__(self, label: str, mode: str, flight: int, prefix: str, cfg):
        self.label, self.mode, self.flight, self.prefix, self.cfg = label, mode, flight, prefix, cfg
        self.wall, self.ok, self.sent, self.lat = 0.0, 0, 0, []
        self.requests = self.calls = 0
        self.busy, self.busy_cpu, self.sizes = 0.0, 0.0, {}

    def run(self, url: str, gen, jobs: list) -> None:
        s0 = gen.stats.remote().result()
        r = run_load(f"{url}/{self.prefix}", jobs, self.flight, 900, size=None, steps=None, guidance=None)
        s1 = gen.stats.remote().result()
        self.wall += r["wall"]
        self.ok += r["ok"]
        self.sent += len(jobs)
        self.lat += r["lat"]
        n_req = s1["requests"] - s0["requests"]
        self.requests += n_req
        self.calls += (s1["batches"] - s0["batches"]) if self.mode == "mixed" else n_req
        self.busy += s1["busy_s"] - s0["busy_s"]
        self.busy_cpu += s1["busy_cpu_s"] - s0["busy_cpu_s"]
        for k, v in s1["batch_sizes"].items():
            self.sizes[int(k)] = self.sizes.get(int(k), 0) + v - s0["batch_sizes"].get(k, 0)

    def row(self, swap: "HttpRow", batched_ips: float, max_batch: int) -> list:
        rps, p50 = self.ok / self.wall, pct(self.lat, 0.5)
        swap_rps, swap_p50 = swap.ok / swap.wall, pct(swap.lat, 0.5)
        full = f"{self.sizes.get(max_batch, 0) / max(sum(self.sizes.values()), 1):.0%}" if self.mode == "mixed" else "-"
        return [self.label, str(self.flight), str(self.cfg.generator_ongoing()), f"{self.ok}/{self.sent}", f"{rps:.2f}",
                f"{rps / swap_rps:.2f}x", f"{rps / batched_ips:.2f}x", fmt_ms(p50), f"{p50 / swap_p50:.2f}x",
                fmt_ms(pct(self.lat, 0.95)), f"{self.requests / max(self.calls, 1):.1f}", full,
                f"{self.busy / self.wall:.0%}", fmt_ms(self.busy_cpu / max(self.requests, 1) * 1e3),
                f"{self.busy_cpu / max(self.busy, 1e-9):.0%}"]


def bench(args, base) -> tuple[list[list], list[list] | None, list[str]]:
    """In-process rows and (unless ``--only inproc``) every HTTP setup, interleaved: each round runs the same
    ``--round`` requests through every row in turn (the HTTP rows' order rotating), so the machine's drift hits
    every row alike. Returns the in-process rows, the HTTP rows and notes (load average per round)."""
    names = [f"t{i}" for i in range(args.tenants)]
    reqs = requests_for(names, args.requests)
    inproc = InProcess(base, args.tenants)
    keys = list(dict.fromkeys((*IN_PROCESS, args.batch)))
    inproc.run("swap", reqs[:1])  # warm-up, not counted
    inproc.wall, inproc.cpu, inproc.images, inproc.n = {}, {}, {}, {}
    http, tmp = None, None
    notes = []
    try:
        if args.only != "inproc":
            *http, tmp = _start_http(args, base, names)
        for r, r0 in enumerate(range(0, args.requests, args.round)):
            chunk = reqs[r0 : r0 + args.round]
            for k in keys:
                inproc.run(k, chunk)
            if http is not None:
                rows, url, gens = http
                order = rows[r % len(rows):] + rows[: r % len(rows)]
                jobs = [(f"key-{t}", q.prompt, q.seed) for t, q in chunk]
                for row in order:
                    row.run(url, gens[row.prefix], jobs)
            notes.append(f"{os.getloadavg()[0]:.1f}")
        in_rows = inproc.rows(args.tenants)
        if http is None:
            return in_rows, None, notes
        rows = http[0]
        return in_rows, [row.row(rows[0], inproc.ips(args.batch), args.batch) for row in rows], notes
    finally:
        if args.only != "inproc":
            _stop_http(tmp)


def _start_http(args, base, names: list[str]):
    """Every HTTP setup deployed at once, each its own app and route prefix, on one local Ray; every tenant
    requested once per app (resident, pipeline warm)."""
    from ray import serve

    from cns_ray.jobs.ray_env import init_ray
    from cns_ray.serve.app import build_app
    from cns_ray.serve.auth import hash_key
    from cns_ray.serve.config import ServingConfig

    tmp = tempfile.mkdtemp(prefix="cns-bench-batch-")
    store = ConceptStore(StoreConfig(uri=tmp))
    dim = base.text_encoder.get_input_embeddings().weight.shape[1]
    for i, t in enumerate(names):
        store.commit(t, random_state(t, base.target_shapes(), base.base_id, dim, DENSITY, 100 + i), parent=None)
    keys = {hash_key(f"key-{t}"): t for t in names}
    init_ray("local", num_cpus=4)  # logical CPUs: room for every app's replicas (each runs 1 torch thread)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    rows, gens = [], {}
    for k, (label, mode, flight, ongoing, wait) in enumerate(HTTP_SETUPS):
        cfg = ServingConfig(store=tmp, torch_threads=1, num_cpus=0.5, replicas=1, default_steps=STEPS,
                            default_guidance=GUIDANCE, api_keys=keys, read_env_keys=False, batch_mode=mode,
                            max_batch_size=args.batch, batch_wait_timeout_s=wait, max_in_flight_per_tenant=64,
                            generator_max_ongoing_requests=ongoing, scheduler_name=f"bench-sched-{uuid.uuid4().hex[:6]}")
        prefix = f"setup{k}"
        serve.run(build_app(cfg), name=f"cns-bench-batch-{k}", route_prefix=f"/{prefix}")
        rows.append(HttpRow(label, mode, flight * args.batch, prefix, cfg))
        gens[prefix] = serve.get_deployment_handle("Generator", app_name=f"cns-bench-batch-{k}")
    warm = [(f"key-{t}", q.prompt, q.seed) for t, q in requests_for(names, len(names))]
    for row in rows:
        run_load(f"{url}/{row.prefix}", warm, 1, 300, size=None, steps=None, guidance=None)
    return rows, url, gens, tmp


def _stop_http(tmp: str | None) -> None:
    from ray import serve

    try:
        serve.shutdown()
        import ray

        ray.shutdown()
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: 16 requests")
    ap.add_argument("--requests", type=int, default=None, help="requests per row (default 64, 16 with --quick)")
    ap.add_argument("--tenants", type=int, default=8)
    ap.add_argument("--batch", type=int, default=8, help="max_batch_size over HTTP (default 8)")
    ap.add_argument("--round", type=int, default=None, help="requests per round (default 32, 16 with --quick)")
    ap.add_argument("--only", choices=("inproc", "both"), default="both", help="inproc: skip the HTTP part")
    args = ap.parse_args(argv)
    args.requests = args.requests or (16 if args.quick else 64)
    args.round = min(args.round or (16 if args.quick else 32), args.requests)
    from cns_ray.models import load_base_model

    torch.set_num_threads(1)  # as in a replica here: 2 threads on 2 contended cores ran 5-10x slower
    t_start = time.perf_counter()
    print("## Mixed-tenant batches vs the swap path" + (" (--quick)" if args.quick else ""))
    print("\n".join(environment_lines()))
    print(f"- machine shared with other jobs: load average {_load()} at start on {os.cpu_count()} cores")
    print(f"- rows interleaved: rounds of {args.round} requests, each round through every row in turn\n")
    base = load_base_model("tiny")
    in_rows, http_rows, loads = bench(args, base)
    print(f"### 1. In-process, model `tiny` (32 px), {args.requests} requests, {STEPS} steps, guidance {GUIDANCE}, "
          f"{args.tenants} tenants with {DENSITY:.0%} deltas, 1 torch thread\n")
    print(markdown_table(["path", "images/s", "vs swap (wall)", "vs swap (CPU time per image)", "CPU per image (ms)",
                          "max pixel diff vs swap"], in_rows))
    if http_rows is not None:
        print(f"\n### 2. HTTP, one generator replica per setup (0.5 CPU, 1 torch thread), max_batch_size {args.batch}, "
              f"{args.requests} requests per row\n")
        print(markdown_table(["setup", "in flight", "generator max_ongoing_requests", "ok", "requests/s", "vs swap",
                              f"vs in-process batches of {args.batch}", "p50 (ms)", "p50 vs swap", "p95 (ms)",
                              "requests per call", "full calls", "replica busy", "worker CPU per request (ms)",
                              "worker on a core while busy"], http_rows))
    print(f"\nLoad average (1 min) after each round: {', '.join(loads)}; at the end {_load()}. "
          f"Total {time.perf_counter() - t_start:.0f} s.")
    return 0


def _load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


if __name__ == "__main__":
    raise SystemExit(main())
