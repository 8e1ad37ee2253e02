"""Keep a Serve replica's internal gRPC server on loopback when the Ray node itself is loopback-only.

Ray Serve 2.60 starts an inter-deployment gRPC server in every replica on ``[::]:0`` (all interfaces), after the
deployment's constructor has run. On a node started with ``_node_ip_address="127.0.0.1"`` (local runs, tests)
nothing outside the machine may reach it, so the constructor calls :func:`keep_replica_grpc_on_loopback` first.
On a real multi-node cluster (node IP not loopback) nothing changes: other nodes must reach the replica.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def keep_replica_grpc_on_loopback() -> bool:
    """Patch this replica process so its internal gRPC server binds 127.0.0.1; True when patched."""
    try:
        import ray
        import ray.serve._private.replica as replica_mod
    except ImportError:  # not in a Serve replica
        return False
    if not ray.is_initialized() or ray.util.get_node_ip_address() not in _LOOPBACK:
        return False
    original = getattr(replica_mod, "add_port_to_grpc_server", None)
    if original is None or getattr(original, "_cns_loopback", False):
        return original is not None

    def add_port_on_loopback(server, address: str):
        host, _, port = address.rpartition(":")
        if host in ("[::]", "0.0.0.0", ""):
            address = f"127.0.0.1:{port}"
        return original(server, address)

    add_port_on_loopback._cns_loopback = True  # type: ignore[attr-defined]
    replica_mod.add_port_to_grpc_server = add_port_on_loopback
    log.debug("serve replica internal gRPC bound to 127.0.0.1")
    return True
