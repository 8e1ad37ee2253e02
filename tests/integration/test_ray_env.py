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


GPU_SCRIPT = r"""
import json
from cns_ray.jobs.ray_env import gpus_possible, init_ray
init_ray("local", num_cpus=1)
import ray
from ray.core.generated import autoscaler_pb2
from cns_ray.serve.app import _wants_gpu
from cns_ray.serve.config import ServingConfig
out = {"none": gpus_possible(), "auto_none": _wants_gpu(ServingConfig())}
# What an autoscaler reports: a CPU head and a GPU worker type scaled to 0 now, up to 3 nodes.
cfg = autoscaler_pb2.ClusterConfig()
head = cfg.node_group_configs.add(); head.name = "head"; head.resources["CPU"] = 1; head.max_count = 1
gpu = cfg.node_group_configs.add(); gpu.name = "gpu_worker"; gpu.resources["CPU"] = 4; gpu.resources["GPU"] = 1
gpu.min_count = 0; gpu.max_count = 3
from ray.experimental.internal_kv import _internal_kv_put
_internal_kv_put(ray._raylet.GCS_AUTOSCALER_CLUSTER_CONFIG_KEY.encode(), cfg.SerializeToString(), overwrite=True,
                 namespace=ray._raylet.GCS_AUTOSCALER_STATE_NAMESPACE.encode())
out.update(now=ray.cluster_resources().get("GPU", 0), declared=gpus_possible(), auto=_wants_gpu(ServingConfig()),
           off=_wants_gpu(ServingConfig(use_gpu=False)))
print("RESULT " + json.dumps(out))
ray.shutdown()
"""


def test_serving_asks_for_gpus_when_the_autoscaler_can_add_them():
    """use_gpu: null -> GPU replicas on a cluster whose GPU worker type is declared but scaled to 0."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run([sys.executable, "-c", GPU_SCRIPT], env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
    assert out == {"none": 0.0, "auto_none": False, "now": 0, "declared": 3.0, "auto": True, "off": False}
