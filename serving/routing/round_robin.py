"""Round-robin request routing for Ray Serve (`router: round_robin`): the baseline for comparisons.

Each request goes to the next replica in a stable order, whatever its queue or
prompt; a replica that turns the request away (full) passes it on to the others.
"""

from __future__ import annotations

from typing import List

from ray.serve.request_router import PendingRequest, RequestRouter, RunningReplica

from serving.routing.policy import RoundRobinPolicy


class RoundRobinRouter(RequestRouter):
    def initialize_state(self, **_: object) -> None:
        self._policy = RoundRobinPolicy()

    async def choose_replicas(
        self,
        candidate_replicas: List[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> List[List[RunningReplica]]:
        if not candidate_replicas:
            return []
        if not hasattr(self, "_policy"):
            self._policy = RoundRobinPolicy()
        by_id = {r.replica_id.unique_id: r for r in candidate_replicas}
        order = self._policy.order(by_id)
        return [[by_id[order[0]]], [by_id[rid] for rid in order[1:]]]
