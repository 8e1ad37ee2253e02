"""The endpoint's metrics as Prometheus text (``GET /metrics`` of the ingress).

Two sources: what the ingress sees (requests by route, tenant and status, with cancellations as status 499, a
latency histogram per route and tenant, requests in flight per tenant) and what the generator replicas report with
every reply (cns_ray/serve/results.py ``ReplicaStats``: tenant cache hits/misses/loads/evictions and load seconds,
mixed-mode batch sizes, requests queued, cancellations). Replica counters are the latest snapshot of each replica
this ingress heard from, summed over replicas (and shown per replica). With several ingress replicas, scrape each
one: their request counters add up; the replica counters are the same on each (use ``max``).
"""

from __future__ import annotations

import threading
from collections import defaultdict

from cns_ray.serve.results import ReplicaStats

# Upper bounds (seconds) of the latency histogram buckets.
BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

_REPLICA_COUNTERS = {
    "requests": "generator requests received",
    "ok": "generator requests that made their images",
    "failed": "generator requests that failed",
    "cancelled": "generator requests cancelled because their caller went away",
    "images": "images made",
    "steps": "denoising steps run",
    "cache_hits": "tenant cache hits (tenant state resident on the replica)",
    "cache_misses": "tenant cache misses (state loaded on first use)",
    "tenant_loads": "tenant states loaded and validated from the store",
    "tenant_evictions": "tenant states evicted (LRU)",
    "load_seconds": "seconds spent loading tenant states",
    "batches": "pipeline calls (mixed mode: requests / batches = mean batch size)",
    "busy_s": "seconds the replica's worker thread spent generating",
    "busy_cpu_s": "CPU seconds of the replica's worker thread while generating (below busy_s: it waited for a core)",
}


def _esc(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    """Counters of one ingress replica plus the latest stats of each generator replica. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count: dict[tuple[str, str, int], int] = defaultdict(int)  # (route, tenant, status)
        self._hist: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0] * (len(BUCKETS) + 1))
        self._sum: dict[tuple[str, str], float] = defaultdict(float)
        self._replicas: dict[str, ReplicaStats] = {}
        self.in_flight: dict[str, int] | None = None  # the guard's per-tenant in-flight counts (shared)

    def observe(self, route: str, status: int, seconds: float, tenant: str = "-") -> None:
        with self._lock:
            self._count[(route, tenant, status)] += 1
            self._sum[(route, tenant)] += seconds
            i = next((k for k, b in enumerate(BUCKETS) if seconds <= b), len(BUCKETS))
            self._hist[(route, tenant)][i] += 1

    def replica(self, stats: ReplicaStats | None) -> None:
        """Keep ``stats`` if it is the newest snapshot of its replica (counters only grow)."""
        if stats is None or not stats.replica:
            return
        with self._lock:
            old = self._replicas.get(stats.replica)
            if old is None or stats.requests >= old.requests:
                self._replicas[stats.replica] = stats

    def snapshot(self) -> dict:
        with self._lock:
            return {
                "requests": {f"{r} {t} {s}": n for (r, t, s), n in sorted(self._count.items())},
                "replicas": {k: v.__dict__ for k, v in self._replicas.items()},
            }

    def prometheus(self) -> str:
        out = ["# HELP cns_requests_total HTTP requests by route, tenant and status (499: the client went away).",
               "# TYPE cns_requests_total counter"]
        with self._lock:
            for (route, tenant, status), n in sorted(self._count.items()):
                out.append(f'cns_requests_total{{route="{_esc(route)}",tenant="{_esc(tenant)}",status="{status}"}} {n}')
            out += ["# HELP cns_request_seconds HTTP request latency by route and tenant.", "# TYPE cns_request_seconds histogram"]
            for (route, tenant), counts in sorted(self._hist.items()):
                lab = f'route="{_esc(route)}",tenant="{_esc(tenant)}"'
                acc = 0
                for b, c in zip(BUCKETS + (float("inf"),), counts):
                    acc += c
                    le = "+Inf" if b == float("inf") else f"{b:g}"
                    out.append(f'cns_request_seconds_bucket{{{lab},le="{le}"}} {acc}')
                out.append(f"cns_request_seconds_sum{{{lab}}} {self._sum[(route, tenant)]:.6f}")
                out.append(f"cns_request_seconds_count{{{lab}}} {acc}")
            out += ["# HELP cns_in_flight Requests in flight at this ingress, by tenant.", "# TYPE cns_in_flight gauge"]
            for tenant, n in sorted((self.in_flight or {}).items()):
                out.append(f'cns_in_flight{{tenant="{_esc(tenant)}"}} {n}')
            reps = dict(self._replicas)
        for name, help_ in _REPLICA_COUNTERS.items():
            metric = f"cns_generator_{name}_total"
            out += [f"# HELP {metric} {help_}, summed over generator replicas.", f"# TYPE {metric} counter"]
            out.append(f"{metric} {sum(getattr(s, name) for s in reps.values()):g}")
            for rid, s in sorted(reps.items()):
                out.append(f'cns_generator_replica_{name}_total{{replica="{_esc(rid)}"}} {getattr(s, name):g}')
        out += ["# HELP cns_generator_queued Requests queued or running on the generator replicas (at their last reply).",
                "# TYPE cns_generator_queued gauge", f"cns_generator_queued {sum(s.queued for s in reps.values())}"]
        out += ["# HELP cns_batch_size_total Mixed-mode pipeline calls by number of requests in the call.",
                "# TYPE cns_batch_size_total counter"]
        sizes: dict[int, int] = defaultdict(int)
        for s in reps.values():
            for k, v in s.batch_sizes.items():
                sizes[int(k)] += v
        for k in sorted(sizes):
            out.append(f'cns_batch_size_total{{size="{k}"}} {sizes[k]}')
        return "\n".join(out) + "\n"
