"""Connecting to Ray the loopback-safe way.

Under ``ray job submit`` (``RAY_ADDRESS`` is set) or with an explicit address, :func:`init_ray` attaches to that
cluster. Otherwise it starts a private local Ray bound to 127.0.0.1 only: ``address="local"`` (never attach to a
cluster someone else started on this machine), ``_node_ip_address="127.0.0.1"``, no dashboard, and the environment
Ray needs to keep every listener on loopback (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, no usage stats, token
authentication off for this private cluster only; see ENVIRONMENT.md).
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
_LOCAL_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
}


def init_ray(
    address: str | None = None,
    *,
    num_cpus: float | None = None,
    num_gpus: int | None = None,
    namespace: str | None = None,
    log_to_driver: bool = False,
) -> str:
    """Make sure this process is connected to Ray; returns ``"existing"``, ``"attached"`` or ``"local"``.

    address: ``None`` -> ``RAY_ADDRESS`` if set (``ray job submit`` sets it), else a new local cluster on
    127.0.0.1; ``"local"`` -> always a new local cluster; anything else (``"auto"``, ``"127.0.0.1:6379"``,
    ``"ray://host:10001"``) -> attach there. num_cpus/num_gpus only size a new local cluster.
    A process already connected is left as it is.
    """
    target = address if address is not None else (os.environ.get("RAY_ADDRESS") or None)
    local = target is None or target == "local"
    if local:
        for key, value in _LOCAL_ENV.items():
            os.environ.setdefault(key, value)
    import ray

    if ray.is_initialized():
        return "existing"
    if not local:
        log.info("attaching to Ray at %s", target)
        ray.init(address=target, namespace=namespace, log_to_driver=log_to_driver, configure_logging=False)
        return "attached"
    _loopback_only()
    log.info("starting a local Ray on %s (num_cpus=%s, num_gpus=%s)", LOOPBACK, num_cpus, num_gpus)
    ray.init(
        address="local",
        _node_ip_address=LOOPBACK,
        include_dashboard=False,
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        namespace=namespace,
        log_to_driver=log_to_driver,
        configure_logging=False,
    )
    return "local"


def gpus_available() -> float:
    """GPUs in the connected cluster (0 when none, or when Ray is not connected)."""
    import ray

    if not ray.is_initialized():
        return 0.0
    return float(ray.cluster_resources().get("GPU", 0.0))


def gpus_possible() -> float:
    """GPUs the connected cluster has now, else the most its autoscaler may add: the node types it declared
    (``cluster.yaml``'s ``available_node_types``, KubeRay worker groups) with their max counts. A cluster whose GPU
    workers are scaled to 0 says 0 in ``cluster_resources()`` but can still run a GPU replica. 0 without Ray."""
    now = gpus_available()
    if now > 0:
        return now
    try:  # the autoscaler's cluster config in the GCS, as Ray Train reads it (no public API for it in Ray 2.x)
        from ray._private.state import state

        declared = state.get_max_resources_from_cluster_config() or {}
    except Exception as e:  # noqa: BLE001 - an older Ray or no autoscaler: what is there now is all there is
        log.debug("no autoscaler cluster config: %s", e)
        return 0.0
    return float(declared.get("GPU") or 0)


def _loopback_only() -> None:
    """Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER once, at import: when ray was imported before the environment
    was set, the constant still says "cluster" and Ray binds the machine's address. Seen on ray 2.60: setting the
    constant too keeps every listener on 127.0.0.1 (checked with ``ss -ltnp``)."""
    if os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") != "0":
        return  # the user asked for a reachable cluster on purpose
    try:
        import ray._private.ray_constants as rc

        rc.ENABLE_RAY_CLUSTER = False
    except (ImportError, AttributeError):  # a Ray without the constant: the environment alone must do
        log.debug("ray_constants.ENABLE_RAY_CLUSTER not found; relying on the environment")


def check_gpu_request(use_gpu: bool, mode: str) -> None:
    """Fail fast when a run asks for GPUs that a private local Ray (``mode == "local"``) does not have; an attached
    cluster may still scale GPU workers up, so it is left to wait for them."""
    if use_gpu and mode == "local" and gpus_available() == 0:
        from cns_ray.errors import ConfigError

        raise ConfigError(
            "--gpu was given, but the local Ray started here has 0 GPUs (none detected): drop --gpu, or attach to a "
            "GPU cluster with --address (e.g. auto, HEAD:6379)"
        )
