"""Request placement on the fast path: which replica serves a request, decided where it arrives.

Every direct-ingress replica is an entry point (clients reach one through the
node's shared port, or a Kubernetes Service). Before, the replica a
connection landed on served every request sent down it; now each generation
request is placed by `Scheduler.pick`, as llm-d's inference scheduler places
them: filters first, then a picker.

Inputs, pure data (no Ray here): the request's model and prompt prefix, and
the `EndpointTable`, this entry point's copy of every LLM replica of the app
(its model, private address, state, requests in flight, KV-cache use, and how
old that report is). `serving/deployments/registry.py` refreshes the copy
every `REFRESH_S`; a replica's load counts at least the requests this entry
point has in flight there (a report may predate them: an assumed load, as
llm-d keeps), and its own replica's count is always live.

Filters (each keeps what may serve; an empty result falls back to the input,
so a filter narrows but never refuses on its own):

* `same_model`: replicas of the request's model (never relaxed).
* `serving_now`: state `ready`; not `starting`, `draining` or `unhealthy`.
* `fresh`: reported within `STALE_S`; an older report is a replica that may be gone.
* `kv_room`: KV-cache use below `KV_FULL`; a full cache preempts.

Picker: prefix affinity with a load gate (`serving.routing.policy`): the
replicas ranked by rendezvous hashing of the prompt prefix, the first that is
not hot. Every entry point ranks the same replicas the same way for the same
prompt without asking anyone; they agree on the choice as far as their load
figures agree (at most `REFRESH_S` apart, plus what each sent since).

Staleness chosen: a refresh every 250 ms. A draining replica leaves the
candidates within one refresh of its stop (the target is 1 s), a new one joins
within one refresh of being ready; a load figure older than 250 ms is, at the
request rates a 2-core replica serves, a few requests off, which the assumed
load covers for the requests the entry point sent itself.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from serving.routing.policy import PrefixAwarePolicy

REFRESH_S = 0.25
STALE_S = 3.0  # twelve missed refreshes: the replica (or its node) is gone, or the registry is
KV_FULL = 0.98

READY, STARTING, DRAINING, UNHEALTHY = "ready", "starting", "draining", "unhealthy"


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """One LLM replica as the registry knows it."""

    replica_id: str
    model: str
    address: str  # host:port of its private listener (its own, unlike the node's shared port)
    node: str = ""
    state: str = READY
    in_flight: int = 0
    kv_usage: float = 0.0
    age_s: float = 0.0  # how old the report was when the snapshot was taken

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Endpoint:
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in fields})


class EndpointTable:
    """An entry point's copy of the app's endpoints, with the load it added since the last refresh."""

    def __init__(
        self,
        self_id: str | None = None,
        own_load: Callable[[], int] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.self_id = self_id
        self._own_load = own_load
        self._clock = clock
        self._endpoints: list[Endpoint] = []
        self._taken_at = clock()
        self._mine: dict[str, int] = {}  # requests this entry point has in flight at each replica
        self.version = 0

    def update(self, endpoints: Iterable[Endpoint]) -> None:
        self._endpoints = list(endpoints)
        self._taken_at = self._clock()
        self.version += 1

    def endpoints(self) -> list[Endpoint]:
        return list(self._endpoints)

    def age_s(self, endpoint: Endpoint) -> float:
        return endpoint.age_s + (self._clock() - self._taken_at)

    def load(self, endpoint: Endpoint) -> int:
        """Requests in flight at the replica: live for this one; for another, what it last reported,
        or at least what this entry point has sent there and not seen end (a report may predate them)."""
        if endpoint.replica_id == self.self_id and self._own_load is not None:
            return self._own_load()
        return max(endpoint.in_flight, self._mine.get(endpoint.replica_id, 0))

    def started(self, replica_id: str) -> None:
        self._mine[replica_id] = self._mine.get(replica_id, 0) + 1

    def finished(self, replica_id: str) -> None:
        left = self._mine.get(replica_id, 0) - 1
        if left > 0:
            self._mine[replica_id] = left
        else:
            self._mine.pop(replica_id, None)


Filter = Callable[[Sequence[Endpoint], EndpointTable], list[Endpoint]]


def serving_now(endpoints: Sequence[Endpoint], _: EndpointTable) -> list[Endpoint]:
    return [e for e in endpoints if e.state == READY]


def fresh(endpoints: Sequence[Endpoint], table: EndpointTable) -> list[Endpoint]:
    return [e for e in endpoints if e.replica_id == table.self_id or table.age_s(e) <= STALE_S]


def kv_room(endpoints: Sequence[Endpoint], _: EndpointTable) -> list[Endpoint]:
    return [e for e in endpoints if e.kv_usage < KV_FULL]


DEFAULT_FILTERS: tuple[Filter, ...] = (serving_now, fresh, kv_room)


class Scheduler:
    """Filters, then prefix affinity with a load gate: the replicas in preference order."""

    def __init__(self, policy: PrefixAwarePolicy | None = None, filters: Sequence[Filter] = DEFAULT_FILTERS) -> None:
        self.policy = policy or PrefixAwarePolicy()
        self.filters = tuple(filters)

    def candidates(self, model: str, table: EndpointTable) -> list[Endpoint]:
        found = [e for e in table.endpoints() if e.model == model]
        for keep in self.filters:
            kept = keep(found, table)
            if kept:
                found = kept
        return found

    def pick(self, model: str, request: Any, table: EndpointTable) -> list[Endpoint]:
        """The model's replicas for `request`, best first (empty when the table knows none)."""
        found = self.candidates(model, table)
        if len(found) <= 1:
            return found
        by_id = {e.replica_id: e for e in found}
        loads = {e.replica_id: table.load(e) for e in found}
        key = self.policy.key(request)
        if key is None:  # no prompt to be sticky on: the least loaded, ties in a stable order
            return sorted(found, key=lambda e: (loads[e.replica_id], e.replica_id))
        order = self.policy.order(key, loads)
        return [by_id[rid] for rid in order]
