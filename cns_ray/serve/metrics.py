"""Request counters and latencies of one ingress replica, as Prometheus text."""

from __future__ import annotations

import threading
from collections import defaultdict

# Upper bounds (seconds) of the latency histogram buckets.
BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    """Counts by (route, status) and a latency histogram per route. Thread-safe (sync routes run in threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count: dict[tuple[str, int], int] = defaultdict(int)
        self._hist: dict[str, list[int]] = defaultdict(lambda: [0] * (len(BUCKETS) + 1))
        self._sum: dict[str, float] = defaultdict(float)

    def observe(self, route: str, status: int, seconds: float) -> None:
        with self._lock:
            self._count[(route, status)] += 1
            self._sum[route] += seconds
            i = next((k for k, b in enumerate(BUCKETS) if seconds <= b), len(BUCKETS))
            self._hist[route][i] += 1

    def snapshot(self) -> dict:
        with self._lock:
            return {
                "requests": {f"{r} {s}": n for (r, s), n in sorted(self._count.items())},
                "latency_sum_s": dict(self._sum),
            }

    def prometheus(self) -> str:
        lines = [
            "# HELP cns_requests_total HTTP requests by route and status.",
            "# TYPE cns_requests_total counter",
        ]
        with self._lock:
            for (route, status), n in sorted(self._count.items()):
                lines.append(f'cns_requests_total{{route="{route}",status="{status}"}} {n}')
            lines += ["# HELP cns_request_seconds HTTP request latency.", "# TYPE cns_request_seconds histogram"]
            for route, counts in sorted(self._hist.items()):
                acc = 0
                for b, c in zip(BUCKETS + (float("inf"),), counts):
                    acc += c
                    le = "+Inf" if b == float("inf") else f"{b:g}"
                    lines.append(f'cns_request_seconds_bucket{{route="{route}",le="{le}"}} {acc}')
                lines.append(f'cns_request_seconds_sum{{route="{route}"}} {self._sum[route]:.6f}')
                lines.append(f'cns_request_seconds_count{{route="{route}"}} {acc}')
        return "\n".join(lines) + "\n"
