"""A simulated GPU cluster on one machine, for tests of placement, concurrency and node loss.

Ray's ``cluster_utils.Cluster`` starts a real multi-node Ray in this process's children: a head (GCS, dashboard with
the state API; no GPU) and ``GPU_NODES`` nodes of one raylet each, each declaring ``num_gpus=1``. Every listener is on
127.0.0.1 (checked). The torch here has no CUDA, so a process given one of these GPUs computes on the CPU
(cns_ray/device.py): what is real is Ray's scheduling, placement, failure handling and the cross-node data path
(the concept store on moto's S3 server, the only storage every node can reach, as on a real cluster).

Node processes inherit this process's environment when they start: the AWS settings pointing at moto are put into
``os.environ`` before the first node and taken out again at teardown.

Placement is read from Ray's state API (``ray.util.state``), never from logs.
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass, field

import pytest

from conftest import free_port, init_local_ray

GPU_NODES = 3
HEAD_CPUS = 1
NODE_CPUS = 2
"""CPUs each GPU node declares: a generator replica (1) or a Train worker (0.5) plus small actors beside it."""
LOOPBACK = "127.0.0.1"
SYSTEM_CONFIG = {"health_check_period_ms": 1000, "health_check_failure_threshold": 5}
"""A killed node is declared dead after ~5 s (Ray's defaults: 3 s x 5); a node still answering is never dropped."""
AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@dataclass
class SimCluster:
    cluster: object
    """The ``ray.cluster_utils.Cluster``."""
    address: str
    """GCS address: ``ray.init(address=...)``, ``cns ... --address``."""
    store_uri: str
    """``s3://bucket/prefix`` on moto's server."""
    bucket: str
    endpoint: str
    """moto's endpoint URL (``AWS_ENDPOINT_URL``)."""
    env: dict = field(default_factory=dict)
    """Environment for a ``cns`` subprocess attached to this cluster."""

    # ------------------------------------------------------------------ nodes
    def nodes(self) -> dict[str, object]:
        """node_id -> ``ray._private.node.Node`` of the GPU nodes this fixture started and has not removed."""
        return {n.node_id: n for n in self.cluster.worker_nodes}

    def head_id(self) -> str:
        return self.cluster.head_node.node_id

    def alive_nodes(self) -> dict[str, dict]:
        """node_id -> resources_total of the nodes the state API says are ALIVE."""
        from ray.util.state import list_nodes

        return {n.node_id: dict(n.resources_total) for n in list_nodes(address=self.address, limit=1000)
                if n.state == "ALIVE"}

    def gpu_node_ids(self) -> set[str]:
        return {nid for nid, res in self.alive_nodes().items() if res.get("GPU", 0) >= 1}

    def remove(self, node_id: str) -> None:
        """Kill every process of a GPU node (raylet, workers, object store), as a lost machine."""
        node = self.nodes().get(node_id)
        if node is None:
            raise ValueError(f"node {node_id} is not a GPU node of this cluster (known: {sorted(self.nodes())})")
        self.cluster.remove_node(node, allow_graceful=False)
        deadline = time.monotonic() + 60
        while node_id in self.alive_nodes():  # the GCS marks it dead once its raylet stops answering
            if time.monotonic() > deadline:
                raise TimeoutError(f"node {node_id} still ALIVE in the state API 60 s after it was killed")
            time.sleep(0.5)

    def add_gpu_node(self) -> str:
        node = self.cluster.add_node(num_cpus=NODE_CPUS, num_gpus=1, node_ip_address=LOOPBACK)
        self.cluster.wait_for_nodes()
        return node.node_id

    def restore(self) -> None:
        """Back to ``GPU_NODES`` live GPU nodes (after a test removed some)."""
        while len(self.gpu_node_ids()) < GPU_NODES:
            self.add_gpu_node()

    # ------------------------------------------------------------------ state API
    def actors(self, class_name: str, state: str | None = None) -> list:
        """Actors of ``class_name`` (``ActorState``: actor_id, node_id, state, required_resources, ...)."""
        from ray.util.state import list_actors

        filters = [("class_name", "=", class_name)] + ([("state", "=", state)] if state else [])
        return list_actors(address=self.address, filters=filters, detail=True, limit=10000, raise_on_missing_output=False)

    def actor(self, actor_id: str):
        from ray.util.state import get_actor

        return get_actor(actor_id, address=self.address)


def listeners_beyond_loopback() -> dict[str, set[str]]:
    """Listening TCP sockets of this process and its children that are not on loopback (name -> addresses)."""
    import psutil

    exposed: dict[str, set[str]] = {}
    me = psutil.Process()
    for p in [me, *me.children(recursive=True)]:
        try:
            ips = {c.laddr.ip for c in p.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN}
            name = " ".join(p.cmdline())[:80]
        except (psutil.Error, OSError):
            continue
        bad = ips - {"127.0.0.1", "::ffff:127.0.0.1", "::1"}
        if bad:
            exposed[name] = bad
    return exposed


@pytest.fixture(scope="module")
def sim_cluster(moto_server):
    """A head (no GPU, state API) + ``GPU_NODES`` one-GPU nodes on 127.0.0.1, this process connected as a driver,
    and an empty S3 bucket for the concept store. A session's local Ray (``ray_local``) is shut down for the module
    and started again afterwards: a process drives one Ray cluster at a time."""
    import boto3
    import ray
    from ray._common.utils import reset_ray_address
    from ray._private.utils import read_ray_address, write_ray_address
    from ray.cluster_utils import Cluster

    had_local = ray.is_initialized()
    if had_local:
        try:
            from ray import serve

            serve.shutdown()
        except Exception:  # noqa: BLE001 - no Serve there
            pass
        ray.shutdown()
    saved = {k: os.environ.get(k) for k in (*AWS_ENV, "AWS_ENDPOINT_URL")}
    os.environ.update({**AWS_ENV, "AWS_ENDPOINT_URL": moto_server})
    bucket = f"cns-sim-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1").create_bucket(Bucket=bucket)
    import ray._private.ray_constants as ray_constants

    # Ray gives the dashboard (the state API) 60 s to start; on a 2-core machine shared with other jobs it was seen
    # to need ~110 s. The head waits up to 5 minutes instead of failing the module's set-up.
    ray_constants.RAY_DASHBOARD_STARTUP_TIMEOUT_S = max(ray_constants.RAY_DASHBOARD_STARTUP_TIMEOUT_S, 300)
    prev_address = read_ray_address()  # Cluster writes its address to /tmp/ray for `ray.init("auto")`: put it back
    cluster = None
    try:
        cluster = Cluster(
            initialize_head=True,
            head_node_args=dict(num_cpus=HEAD_CPUS, node_ip_address=LOOPBACK, include_dashboard=True,
                                dashboard_host=LOOPBACK, dashboard_port=free_port(), _system_config=SYSTEM_CONFIG),
        )
        for _ in range(GPU_NODES):
            cluster.add_node(num_cpus=NODE_CPUS, num_gpus=1, node_ip_address=LOOPBACK)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
        env = {**os.environ, "RAY_ADDRESS": cluster.address}
        sim = SimCluster(cluster, cluster.address, f"s3://{bucket}/cns", bucket, moto_server, env)
        exposed = listeners_beyond_loopback()
        assert not exposed, f"the simulated cluster listens beyond loopback: {exposed}"
        yield sim
    finally:
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
        if prev_address:
            write_ray_address(prev_address)
        else:
            reset_ray_address()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if had_local:
            init_local_ray()
