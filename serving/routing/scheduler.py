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
every `REFRESH_S`; another replica's load is its report plus what this entry
point sent there since, minus what of its own ended there since (a report
may predate them: an assumed load, as llm-d keeps), its own replica's is its
live count (`EndpointTable.load`).

Filters (each keeps what may serve; an empty result falls back to the input,
so a filter narrows but never refuses on its own):

* `same_model`: replicas of the request's model (never relaxed).
* `serving_now`: state `ready`; not `starting`, `draining` or `unhealthy`.
* `fresh`: reported within `STALE_S`; an older report is a replica that may be gone.
* `kv_room`: KV-cache use below `KV_FULL`; a full cache preempts.

Picker: where a prompt's prefix was placed before, else where it arrives.
The prefix key is a hash of the prompt's first characters
(`serving.routing.policy`). Every entry point remembers where it placed its
last `REMEMBERED_KEYS` keys and reports them with its own entry; each table
thus knows, for a key, the replicas that served it lately (its *holders*).

* A key with holders (a shared system prompt, a conversation's next turn):
  the holders first, then the rest, each group ranked by rendezvous hashing
  of the key, and the first of them that is not hot (the load gate of
  `serving.routing.policy`). Every entry point knows the same holders, so
  they all rank the same replicas the same way for the same prompt without
  asking anyone; they agree on the choice as far as their load figures and
  holder lists agree (at most a refresh or two apart).
* A shared key (one some entry point placed more than once, as its report
  says) has a *home*: the model's shared keys, spread over its replicas by
  count, each kept on a replica that holds it while that one is under its
  share (`EndpointTable.home`). The home comes first, then the key's other
  holders, then the rest, through a looser gate (`HOME_LOAD_FACTOR`) once
  every replica is home to some key: every entry point sends a shared prefix
  to its home, and the replicas hold even shares of the keys. Rendezvous
  alone put 6 or more of 8 keys on one of 2 replicas in a quarter of the
  draws, and the load gate then spilled each of that replica's keys over
  both, more copies than a cache fits (loadtests/PERFORMANCE.md, "Shared
  prefixes get a home").
* A key nobody has placed (a prompt with no prefix to share yet): no replica
  holds a cache for it, so there is nothing for a hop to win. It is served
  where it arrived unless this replica is above the model's mean load, else
  on another replica below the mean, drawn by how far below it is, with the
  prompt's key as the draw (random per prompt, so entry points reading the
  same stale table spread their overflow over every replica with room
  instead of all sending it to the one or two that looked idle). Measured before
  this rule (loadtests/PERFORMANCE.md): with every key placed by rendezvous,
  7 of 8 requests of a workload without shared prefixes were forwarded, and
  it served 0.89x round-robin's tokens/s on 2 cores.
  Two entry points that see a new prompt within one refresh of each other
  may place it on two replicas; both then hold it, and from the next refresh
  every entry point ranks those two the same way.

LoRA adapters (`<model>:<name>`): loading one costs its first request a
wait, and a replica holds only so many. So an adapter is placed like a shared
prefix: its key's holders are the replicas its requests went to lately (every
entry point reports them with its prefix keys), a request goes to a holder of
its own prompt first, then to a replica holding its adapter, through the same
load gate; a hot holder overflows to the next replica in the adapter's
rendezvous order, which then holds it too, so an adapter spreads over more
replicas as its demand grows. An adapter nobody holds is placed as a new
prompt (where it arrives unless that replica is above the mean load). The
gate is looser for adapters (`ADAPTER_IMBALANCE`, `ADAPTER_LOAD_FACTOR`): a
load costs the request that waits for it more than a short queue does, and
each spread takes a slot of a replica's bounded set of loaded adapters.
Measured (loadtests/PERFORMANCE.md, "LoRA adapters"), 8 simulated replicas,
32 adapters, 6 loaded per replica: adapter hit rate 0.745 with the prompts'
gate (2, 1.5), 0.978 with (6, 2.5), tokens/s +6%, busiest replica 1.25x its share.

Staleness chosen: a refresh every 250 ms. A draining replica leaves the
candidates within one refresh of its stop (the target is 1 s), a new one joins
within one refresh of being ready; a load figure older than 250 ms is, at the
request rates a 2-core replica serves, a few requests off, which the assumed
load covers for the requests the entry point sent itself. An entry point's
own placements count at once (before its next report).
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from serving.config import adapter_name
from serving.routing.policy import PrefixAwarePolicy, bounded_load_choice, prefix_key, rendezvous_order

REFRESH_S = 0.25
STALE_S = 3.0  # twelve missed refreshes: the replica (or its node) is gone, or the registry is
HISTORY_S = STALE_S + 1.0  # an entry point's own sends and ends, kept to add to a report as old as that
KV_FULL = 0.98
# Prefix keys an entry point remembers placing, and reports (8 bytes each: 2-8 KB of hex per report):
# the recent shared prefixes of a busy replica, with room for a burst of one-off prompts.
REMEMBERED_KEYS = 128
KEY_BYTES = 8
MAX_HOLDERS = 4  # replicas remembered per key (a hot key overflows to a few)
# Shared prefixes given a home (`EndpointTable.home`): a first assignment costs keys x replicas hashes
# (256 x 16: ~4 ms of Python; later refreshes reuse the rankings), so only the keys most entry points share.
MAX_SHARED_KEYS = 256

# The load gate's factor for a shared prefix leaving its home: looser than a new prompt's (the homes
# already even out the keys, so the gate is left with bursts), tighter than an adapter's. Chosen with
# loadtests/placement_model.py (1.5: 2 replicas keep every key on both; 2.0: 2 replicas never overflow).
HOME_LOAD_FACTOR = 1.75

# The load gate for a LoRA adapter's requests (see the module docstring): looser than a prompt's.
ADAPTER_IMBALANCE = 6
ADAPTER_LOAD_FACTOR = 2.5

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
    load: float | None = None  # requests in flight on average since its last report (None: use in_flight)
    kv_usage: float = 0.0
    age_s: float = 0.0  # how old the report was when the snapshot was taken
    # Where this entry point placed its last prefix keys: replica id -> the keys' hex, concatenated.
    placed: dict[str, str] = dataclasses.field(default_factory=dict, compare=False)
    # Of those, the keys it placed more than once (shared prefixes), hex, concatenated.
    shared: str = dataclasses.field(default="", compare=False)

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
        # when they started and ended (+1 / -1) over the last HISTORY_S: what changed since a report
        self._changes: dict[str, deque[tuple[float, int]]] = {}
        self._placed: OrderedDict[bytes, dict[str, None]] = OrderedDict()  # prefix key -> where this entry point put it
        self._holders: dict[bytes, set[str]] = {}  # prefix key -> replicas the entry points reported it on
        self._uses: dict[bytes, int] = {}  # prefix key -> how often this entry point placed it (remembered keys)
        # The shared keys the entry points reported, their reported holders, and their homes per candidate
        # set: one object, swapped whole by `update` (the reporter's thread) while picks read it.
        self._homes = _Homes([], {}, {})
        # Each shared key's rendezvous ranking per candidate set, kept across refreshes (keys and replicas
        # rarely change): a refresh's homes then cost lookups, not keys x replicas hashes.
        self._rankings: dict[tuple[bytes, frozenset[str]], list[str]] = {}
        self.version = 0

    def update(self, endpoints: Iterable[Endpoint]) -> None:
        self._endpoints = list(endpoints)
        self._taken_at = self._clock()
        holders: dict[bytes, set[str]] = {}
        shared: Counter[bytes] = Counter()
        for endpoint in self._endpoints:
            for replica_id, keys in endpoint.placed.items():
                for key in _keys(keys):
                    holders.setdefault(key, set()).add(replica_id)
            shared.update(set(_keys(endpoint.shared)))
        self._holders = holders
        # The keys most entry points share, if there are more than MAX_SHARED_KEYS (ties by key: the
        # same set everywhere), in one order.
        if len(self._rankings) > 4 * MAX_SHARED_KEYS:
            self._rankings = {}
        self._homes = _Homes(
            sorted(sorted(shared, key=lambda k: (-shared[k], k))[:MAX_SHARED_KEYS]), holders, self._rankings
        )
        self.version += 1

    def placed(self, key: bytes, replica_id: str, shareable: bool = True) -> None:
        """Remember that this entry point put `key` on `replica_id` (reported with its next entry). A
        `shareable` key placed more than once is reported shared (an adapter's keys are not: they are
        placed by the adapter's holders, never given a home)."""
        key = key[:KEY_BYTES]
        where = self._placed.setdefault(key, {})
        where.pop(replica_id, None)
        where[replica_id] = None  # the latest last
        while len(where) > MAX_HOLDERS:
            del where[next(iter(where))]
        self._placed.move_to_end(key)
        if shareable:
            self._uses[key] = self._uses.get(key, 0) + 1
        while len(self._placed) > REMEMBERED_KEYS:
            gone, _ = self._placed.popitem(last=False)
            self._uses.pop(gone, None)

    def holders(self, key: bytes) -> set[str]:
        """The replicas `key` was placed on lately, by any entry point (this one's at once, others' as reported)."""
        key = key[:KEY_BYTES]
        return self._holders.get(key, set()) | self._placed.get(key, {}).keys()

    def report(self) -> dict[str, str]:
        """This entry point's placements, as `Endpoint.placed` carries them."""
        by_replica: dict[str, list[str]] = {}
        # The reporter runs on another thread than the picks that add to it: iterate over copies
        # (list() and tuple() of a dict are taken in one step under the GIL).
        for key, where in list(self._placed.items()):
            for replica_id in tuple(where):
                by_replica.setdefault(replica_id, []).append(key.hex())
        return {replica_id: "".join(keys) for replica_id, keys in by_replica.items()}

    def report_shared(self) -> str:
        """The keys this entry point placed more than once, as `Endpoint.shared` carries them."""
        return "".join(key.hex() for key, uses in list(self._uses.items()) if uses > 1)

    def home(self, key: bytes, replica_ids: Iterable[str]) -> str | None:
        """The replica a shared prefix belongs on among `replica_ids` (one model's serving replicas), the
        same at every entry point with the same reports and replicas (None: `key` is not shared here).

        The shared keys the entry points reported as held by these replicas (so one model's keys, not
        another's), in one order (sorted), each take a replica with fewer than its share
        (ceil(keys / replicas)): first one of its reported holders, in its rendezvous order (a
        conversation stays where its cache is; a replica leaving moves only its own keys), else the
        first of its rendezvous ranking. Consistent hashing with bounded loads, over keys instead of
        requests. Rendezvous alone splits 8 keys over 2 replicas 6/2 or worse in a quarter of the
        draws; the load gate then spills every key of the busy one over both, and each replica's cache
        holds copies of most keys, more than it fits (loadtests/PERFORMANCE.md, "Shared prefixes get
        a home")."""
        return self._homes.of(frozenset(replica_ids))[0].get(key[:KEY_BYTES])

    def every_replica_has_a_home_key(self, replica_ids: Iterable[str]) -> bool:
        """Whether the homes among `replica_ids` gave each of them at least one shared key."""
        return self._homes.of(frozenset(replica_ids))[1]

    def endpoints(self) -> list[Endpoint]:
        return list(self._endpoints)

    def age_s(self, endpoint: Endpoint) -> float:
        return endpoint.age_s + (self._clock() - self._taken_at)

    def load(self, endpoint: Endpoint) -> float:
        """Requests in flight at the replica. This one: its live count. Another: its report (the mean
        over the period it last reported), plus what this entry point sent there since that report, minus
        what of its own ended there since (it knows no other entry point's since the report).

        Each figure is an estimate of the count now, none biased up: rated as the larger of a lagging mean
        and a live count (as other replicas were, and this one after 940aa8e), a replica looked busier
        than it was, and the entry point, rating itself the same way, sent half of a no-prefix workload's
        requests elsewhere (loadtests/PERFORMANCE.md, "Overflow drawn by deficit")."""
        if endpoint.replica_id == self.self_id and self._own_load is not None:
            return float(self._own_load())
        reported = endpoint.in_flight if endpoint.load is None else endpoint.load
        changes = self._changes.get(endpoint.replica_id)
        if not changes:
            return float(reported)
        since = self._taken_at - endpoint.age_s  # when the replica reported
        return max(0.0, reported + sum(delta for at, delta in changes if at > since))

    def started(self, replica_id: str) -> None:
        self._mine[replica_id] = self._mine.get(replica_id, 0) + 1
        self._changed(replica_id, 1)

    def finished(self, replica_id: str) -> None:
        left = self._mine.get(replica_id, 0) - 1
        if left > 0:
            self._mine[replica_id] = left
        else:
            self._mine.pop(replica_id, None)
        self._changed(replica_id, -1)

    def _changed(self, replica_id: str, delta: int) -> None:
        now = self._clock()
        changes = self._changes.setdefault(replica_id, deque())
        changes.append((now, delta))
        while changes and changes[0][0] < now - HISTORY_S:
            changes.popleft()


class _Homes:
    """One table version's shared keys and their reported holders, and the homes computed from them per
    candidate set (at most one per model, computed on the first pick that needs it)."""

    def __init__(
        self,
        shared: list[bytes],
        holders: dict[bytes, set[str]],
        rankings: dict[tuple[bytes, frozenset[str]], list[str]],
    ) -> None:
        self.shared = shared
        self.holders = holders
        self.rankings = rankings  # the table's, across versions (written by picks only: one thread)
        self.by_candidates: dict[frozenset[str], tuple[dict[bytes, str], bool]] = {}

    def of(self, candidates: frozenset[str]) -> tuple[dict[bytes, str], bool]:
        found = self.by_candidates.get(candidates)
        if found is None:
            found = self.by_candidates[candidates] = self._assign(candidates)
        return found

    def _assign(self, candidates: frozenset[str]) -> tuple[dict[bytes, str], bool]:
        if not candidates:
            return {}, False
        none: set[str] = set()
        keys = [k for k in self.shared if self.holders.get(k, none) & candidates]
        share = -(-len(keys) // len(candidates))
        count = dict.fromkeys(candidates, 0)
        homes = {}
        for k in keys:
            ranked = self.rankings.get((k, candidates))
            if ranked is None:
                ranked = self.rankings[(k, candidates)] = rendezvous_order(k, candidates)
            held = self.holders[k]
            home = next((r for r in ranked if r in held and count[r] < share), None)
            if home is None:
                home = next(r for r in ranked if count[r] < share)
            count[home] += 1
            homes[k] = home
        return homes, all(count.values())


def _keys(concatenated: str) -> Iterator[bytes]:
    """The keys of a report's hex string (a string not of ours, from a newer or older format: none)."""
    width = 2 * KEY_BYTES
    for i in range(0, len(concatenated) - width + 1, width):
        try:
            yield bytes.fromhex(concatenated[i : i + width])
        except ValueError:
            return


def adapter_key(model: str, request: Any) -> bytes | None:
    """The placement key of the LoRA adapter `request` names (its `model` is `<model>:<name>`), or None."""
    requested = request.get("model") if isinstance(request, dict) else getattr(request, "model", None)
    if not isinstance(requested, str) or adapter_name(model, requested) is None:
        return None
    return prefix_key("\0adapter\0" + requested)


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
        adapter = adapter_key(model, request)
        if key is None:  # no prompt to be sticky on (embeddings): placed as a prompt nobody holds, ranked at random
            ranked = rendezvous_order(random.getrandbits(64).to_bytes(8, "big"), loads)
            return [by_id[rid] for rid in self._unplaced(ranked, loads, table.self_id, random.random())]
        if adapter is not None:  # an adapter's prompts are cached apart (vLLM keys its prefix cache by adapter)
            key = prefix_key(adapter.hex() + key.hex())
        # An adapter's requests overflow along the adapter's own ranking, the same for all its prompts.
        ranked = rendezvous_order(adapter if adapter is not None else key, loads)
        held = table.holders(key) & loads.keys()
        # An adapter's replicas: where its requests went lately, so it is loaded there already.
        loaded = (table.holders(adapter) & loads.keys()) - held if adapter is not None else set()
        # A shared prefix's home (an adapter's prompts are placed by the adapter's holders instead), among
        # the model's serving replicas: not narrowed by the fresher filters, whose view differs from one
        # entry point to another, so all of them agree; a home filtered out here is skipped.
        serving = frozenset(
            e.replica_id for e in serving_now([e for e in table.endpoints() if e.model == model], table)
        )
        home = table.home(key, serving) if adapter is None else None
        if home not in loads:
            home = None
        if home is not None or held or loaded:
            ranked = (
                ([home] if home is not None else [])
                + [r for r in ranked if r in held and r != home]
                + [r for r in ranked if r in loaded]
                + [r for r in ranked if r not in held and r not in loaded and r != home]
            )
            threshold, factor = self.policy.imbalance_threshold, self.policy.load_factor
            if adapter is not None:  # a load costs more than a short queue: an adapter's holder is hot later
                threshold, factor = max(threshold, ADAPTER_IMBALANCE), max(factor, ADAPTER_LOAD_FACTOR)
            elif home is not None and table.every_replica_has_a_home_key(serving):
                # Every replica is home to some key: leaving home costs a whole prefill, and evicts another
                # key's prefix where it lands. (Fewer keys than replicas: some hold none, and a hot key
                # spreads to them at the prompts' gate; at the home's, one prompt on 8 replicas left
                # the busiest at 1.7x its share in the placement model, against 1.4x.)
                factor = max(factor, HOME_LOAD_FACTOR)
            order = bounded_load_choice(ranked, loads, threshold, factor)
        else:
            order = self._unplaced(ranked, loads, table.self_id, int.from_bytes(key[:8], "big") / 2.0**64)
        table.placed(key, order[0], shareable=adapter is None)
        if adapter is not None:
            table.placed(adapter, order[0], shareable=False)
        return [by_id[rid] for rid in order]

    @staticmethod
    def _unplaced(ranked: list[str], loads: dict[str, float], self_id: str | None, draw: float) -> list[str]:
        """A key no replica holds: here unless this replica is above the mean load, else another replica
        below the mean, drawn (`draw`, uniform in [0, 1), the key's own) with a weight of how far below the
        mean it is.

        Why drawn, not the least loaded: every entry point reads a table up to a refresh old, so all of them
        sent their overflow to the replica that looked idle (forwarded TTFT p50 640-656 ms against 334 ms
        local); one of the two least loaded halved the herd but still sent every overflow to two replicas
        (forwarded TTFT p50 653-680 ms against 370-382 ms local on the no-prefix bench, 2026-12-07). Drawn by
        deficit, overflow goes to every replica below the mean, most to the emptiest, so the entry points'
        overflows spread as the room does (loadtests/PERFORMANCE.md, "Overflow drawn by deficit")."""
        position = {r: i for i, r in enumerate(ranked)}
        by_load = sorted(ranked, key=lambda r: (loads[r], position[r]))
        mean = sum(loads.values()) / len(loads)
        others = [r for r in by_load if r != self_id]
        if self_id in loads and loads[self_id] <= mean or not others:
            first = self_id or by_load[0]
        else:
            room = [(r, mean - loads[r]) for r in sorted(others) if loads[r] < mean]
            first = others[0]
            total = sum(weight for _, weight in room)
            acc = 0.0
            for replica, weight in room:
                acc += weight
                if draw * total < acc:
                    first = replica
                    break
        return [first, *(r for r in by_load if r != first)]
