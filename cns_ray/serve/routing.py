"""Tenant affinity for mixed batches: route a tenant's request to a replica that already holds its state.

In ``batch_mode="mixed"`` requests carry no multiplexed model id (Ray Serve's batcher splits every batch by it: one
tenant per pipeline call), so Serve's own multiplexed routing does not apply. The replicas still load tenants through
``serve.multiplexed`` and report the tenants they hold; this router reads the request's ``tenant`` argument and
ranks first the replicas that hold it, then Serve's usual power-of-two choice over all replicas, so a busy holder
(at ``max_ongoing_requests``) overflows to another replica, which then loads the tenant.
"""

from __future__ import annotations

from typing import List, Optional

from ray.serve._private.request_router.pow_2_router import PowerOfTwoChoicesRequestRouter
from ray.serve.request_router import PendingRequest, RunningReplica

ROUTER_PATH = "cns_ray.serve.routing:TenantAffinityRouter"


class TenantAffinityRouter(PowerOfTwoChoicesRequestRouter):
    """Replicas holding the request's ``tenant`` keyword first; then power-of-two choices over all replicas."""

    async def choose_replicas(
        self, candidate_replicas: List[RunningReplica], pending_request: Optional[PendingRequest] = None
    ) -> List[List[RunningReplica]]:
        fallback = await super().choose_replicas(candidate_replicas, pending_request)
        tenant = (pending_request.kwargs or {}).get("tenant") if pending_request is not None else None
        if not tenant or pending_request.metadata.multiplexed_model_id:
            return fallback  # swap mode / model-id calls: Serve's multiplexed routing already applies
        holding = [r for r in candidate_replicas if tenant in r.multiplexed_model_ids]
        return ([holding] if holding else []) + fallback
