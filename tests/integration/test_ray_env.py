"""init_ray starts a private local Ray bound to 127.0.0.1, even when ray was imported before the environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys

SCRIPT = r"""
import json, os
import ray  # imported first on purpose: Ray reads its cluster switch at import
from cns_ray.jobs.ray_env import init_ray
mode = init_ray(num_cpus=1)
again = init_ray()
listen = []
try:
    import psutil
    me = psutil.Process()
    procs = [me] + me.children(recursive=True)
    for p in procs:
        try:
            listen += [c.laddr.ip for c in p.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN]
        except (psutil.Error, OSError):
            pass
except ImportError:
    pass
print("RESULT " + json.dumps({"mode": mode, "again": again, "gcs": ray.get_runtime_context().gcs_address,
                              "node": ray.nodes()[0]["NodeManagerAddress"], "listen": sorted(set(listen))}))
ray.shutdown()
"""


def test_init_ray_local_is_loopback_only(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=180)
    line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
    assert line, out.stderr[-3000:]
    r = json.loads(line[0][len("RESULT "):])
    assert r["mode"] == "local" and r["again"] == "existing"
    assert r["gcs"].startswith("127.0.0.1:")
    assert r["node"] == "127.0.0.1"
    loopback = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}
    assert set(r["listen"]) <= loopback, f"Ray listens beyond loopback: {r['listen']}"
