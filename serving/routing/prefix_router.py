"""Prefix-cache-aware request routing for Ray Serve (`router: prefix_aware` in a config).

`PrefixAwareRouter` is a Ray Serve `RequestRouter`: it runs inside every
process that holds a handle to the LLM deployment (the ingress deployment in
proxy mode, another model's replica when requests are forwarded). For each
request it reads the prompt from the handle call's first argument (our
protocol request), the replicas' queue lengths from Serve's queue-length
cache (probing replicas missing from it), and lets
`serving.routing.policy.PrefixAwarePolicy` decide: the key's sticky
rendezvous replica unless it is hot (its queue exceeds the least-loaded
one's by more than the threshold and `load_factor` x the mean), then the
key's next rendezvous choice. Calls without a prompt (health, stats) fall back to
Serve's power-of-two choices.
"""

from __future__ import annotations

import random
from typing import List

from ray.serve.request_router import PendingRequest, RequestRouter, RunningReplica

from serving.routing.policy import (
    DEFAULT_IMBALANCE_THRESHOLD,
    DEFAULT_LOAD_FACTOR,
    DEFAULT_PREFIX_CHARS,
    PrefixAwarePolicy,
)


class PrefixAwareRouter(RequestRouter):
    def initialize_state(
        self,
        imbalance_threshold: int = DEFAULT_IMBALANCE_THRESHOLD,
        prefix_chars: int = DEFAULT_PREFIX_CHARS,
        load_factor: float = DEFAULT_LOAD_FACTOR,
        **_: object,
    ) -> None:
        self._policy = PrefixAwarePolicy(prefix_chars, imbalance_threshold, load_factor)

    @property
    def policy(self) -> PrefixAwarePolicy:
        if not hasattr(self, "_policy"):  # initialize_state not called (defaults)
            self._policy = PrefixAwarePolicy()
        return self._policy

    async def _queue_lens(self, replicas: List[RunningReplica]) -> dict[str, int | None]:
        loads: dict[str, int | None] = {}
        missing = []
        for r in replicas:
            q = self._replica_queue_len_cache.get(r.replica_id) if self._use_replica_queue_len_cache else None
            if q is None:
                missing.append(r)
            loads[r.replica_id.unique_id] = q
        if missing:
            for r, q in await self._probe_queue_lens(missing, 0):
                # No answer in time: treat it as full, so it is picked only if nothing else is.
                loads[r.replica_id.unique_id] = r.max_ongoing_requests if q is None else q
        return loads

    async def choose_replicas(
        self,
        candidate_replicas: List[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> List[List[RunningReplica]]:
        if not candidate_replicas:
            return []
        key = None
        if pending_request is not None and pending_request.args:
            key = self.policy.key(pending_request.args[0])
        if key is None or len(candidate_replicas) == 1:
            return [random.sample(candidate_replicas, min(2, len(candidate_replicas)))]
        by_id = {r.replica_id.unique_id: r for r in candidate_replicas}
        order = self.policy.order(key, await self._queue_lens(candidate_replicas))
        # Rank 1: the chosen replica; if it turns the request away (full), the rest by load.
        return [[by_id[order[0]]], [by_id[rid] for rid in order[1:]]]
