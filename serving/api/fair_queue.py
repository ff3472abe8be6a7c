"""Who runs next when a model's replica is saturated: strict priority across classes, weighted fair queuing
across tenants within a class, and shedding that takes from the lowest class and the longest queue first.

Without it, requests past the engine's batch waited in the engine's own FIFO,
so one tenant's flood sat in front of everyone else's requests, and when the
bounded queue was full every other tenant got 503s. Here, per model and
replica:

* at most `max_running` requests are in the engine at once (the deployment's
  `max_ongoing_requests`); more wait here, at most `max_queued` of them;
* a waiting request is dispatched by class first (a higher `priority` always
  before a lower one), then, within its class, by start-time fair queuing
  (SFQ, Goyal et al. 1996): each request gets a virtual start tag
  `max(V, last finish tag of its tenant)` and a finish tag `start + cost /
  weight`; the least start tag goes first, and V becomes it. A tenant that
  sent nothing for a while starts at V, so it is served next, whatever
  another has queued: a flood delays the others by about one dispatch;
* the cost is the request's tokens: estimated on arrival (its prompt plus
  what it may generate), and corrected when it ends (`leave(used=...)`), so
  tenants share tokens, not request counts (the virtual token counter idea of
  Sheng et al., "Fairness in Serving Large Language Models", OSDI 2024);
* places are held for the tenants under their fair share (`max_running x
  its weight / the weights of the tenants active now`; active: running,
  waiting, or seen in the last `ACTIVE_S`): a tenant alone may use every
  place, but while others are active, one at or over its share takes a place
  only if as many stay free as the others are owed (each its share, no more
  than its recent demand, less what it runs) and at least `reserve` (an
  eighth of the places, at least one). A higher class is owed its whole
  recent demand (its peak over `DEMAND_S`, as long as it counts as active),
  by every tenant of a lower class, under its share or not. So a light tenant's requests start at
  once while another floods, instead of after one of the flood's ends: the
  engine cannot preempt for us, so free places are the only way to start at
  once (loadtests/PERFORMANCE.md, "Tenants", measured before and after). It
  costs the places held for a light tenant between its requests;
* when the queue is full, an arrival takes the place of the newest waiting
  request of a lower class, or else of the tenant (same class) with the most
  requests waiting if that is more than the arrival's own tenant has; if
  there is none, the arrival is refused. The request that loses its place
  gets the 503 (`OverloadedError`, with `Retry-After`).

Pure asyncio, no I/O (tests/unit/test_fair_queue.py). `OpenAIServing` holds one per model.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from serving.errors import OverloadedError

RESERVE_FRACTION = 0.125  # of max_running (at least 1 place when max_running >= 2): see the module docstring
ACTIVE_S = 30.0  # a tenant stays active this long after its last request arrived or ended
# A tenant's recent demand (places held for it) is its peak over about as long as it counts as active. Its
# spikes above its mean are what would wait (a place frees about every request's time / max_running), a next
# request may land on another replica, and a tenant back after a pause finds every place taken: with its peak
# over 2 s, a light tenant beside a flood and the high class beside a shed batch class each waited up to about
# 1 s at p99 in the tenant bench; over 10 s, still their first requests after a pause; over 30 s, the high
# class waited for none (loadtests/PERFORMANCE.md, "Where the TTFT tail comes from").
DEMAND_S = ACTIVE_S
LOOK_AGAIN_S = 1.0  # while places are held with requests waiting: how often to check the demand held ran out


@dataclass(frozen=True, slots=True)
class Flow:
    """Whose request it is, for the queue: `name` (a tenant's budget, or one key's), the `tenant` label
    of its metrics, its class and weight. Crosses to another replica as one header (`header`/`parse`)."""

    name: str = "anonymous"
    tenant: str = "anonymous"
    priority: int = 1
    weight: float = 1.0

    def header(self) -> str:
        return f"{self.name};{self.tenant};{self.priority};{self.weight:g}"

    @classmethod
    def parse(cls, value: str | None) -> Flow | None:
        """The header's flow; None if absent or malformed (the request then queues as anonymous)."""
        if not value:
            return None
        try:
            name, tenant, priority, weight = value.split(";")
            flow = cls(name, tenant, int(priority), float(weight))
        except ValueError:
            return None
        if not (0 < flow.weight <= 1000) or flow.priority not in (0, 1, 2):  # as TenantConfig allows (NaN fails too)
            return None
        return flow


ANONYMOUS = Flow()


@dataclass(slots=True)
class Ticket:
    """One request's place: waiting, then running until `FairQueue.leave`."""

    flow: str
    priority: int
    weight: float
    cost: float
    start: float = 0.0
    seq: int = 0
    waiter: asyncio.Future[None] | None = None
    running: bool = False
    done: bool = False


@dataclass(slots=True)
class _Peak:
    """The most of a count over about the last `window` seconds (at least half of it, at most all of it): the
    larger of two half-window buckets' maxima. A peak seen earlier in the window is kept until it is that old
    (a single "peak since it was set" fell to the count of the moment when it expired, and an early spike then
    hid the smaller demand that followed it)."""

    high: int = 0  # this bucket's maximum
    start: float = -math.inf  # when this bucket began
    before: int = 0  # the previous bucket's maximum

    def observe(self, value: int, now: float, window: float) -> int:
        """Count `value` now; the peak over about the last `window` seconds."""
        half = window / 2
        if now - self.start >= half:
            self.before = self.high if now - self.start < window else 0
            self.high, self.start = 0, now
        self.high = max(self.high, value)
        return max(self.before, self.high)


@dataclass(slots=True)
class _Flow:
    finish: float = 0.0  # the finish tag of its last request
    waiting: deque[Ticket] = field(default_factory=deque)
    running: int = 0
    weight: float = 1.0
    priority: int = 1
    seen: float = 0.0  # when a request of it last arrived or ended
    # its recent demand: the most requests running and waiting here at once over DEMAND_S (`_demand`)
    recent: _Peak = field(default_factory=lambda: _Peak())


class FairQueue:
    def __init__(
        self,
        max_running: int,
        max_queued: int | None,
        model_id: str = "",
        clock: Callable[[], float] = time.monotonic,
        reserve: int | None = None,
    ) -> None:
        """`reserve`: the fewest places kept for tenants under their share while others are active (None:
        RESERVE_FRACTION of max_running; 0: none are held, plain fair queuing)."""
        self.max_running = max_running
        if reserve is None:
            reserve = max(1, int(max_running * RESERVE_FRACTION)) if max_running >= 2 else 0
        self.reserve = reserve
        self._clock = clock
        self.max_queued = max_queued
        self.model_id = model_id
        self.running = 0
        self.queued = 0
        self._virtual = 0.0
        self._flows: dict[str, _Flow] = {}
        self._seq = itertools.count()
        self._arrivals = 0
        self._later: asyncio.TimerHandle | None = None
        self.shed = 0  # requests refused or displaced for lack of room (metrics, tests)

    # -- entering ------------------------------------------------------------------

    def _tag(self, ticket: Ticket) -> None:
        flow = self._flows.get(ticket.flow)
        if flow is None:
            flow = self._flows[ticket.flow] = _Flow()
        flow.weight, flow.priority, flow.seen = ticket.weight, ticket.priority, self._clock()
        demand = flow.running + len(flow.waiting) + 1  # with this one
        flow.recent.observe(demand, flow.seen, DEMAND_S)
        self._arrivals += 1
        if self._arrivals % 256 == 0:  # flows of tenants gone quiet (keys of no tenant may be many)
            for name in list(self._flows):
                self._prune(name)
        ticket.start = max(self._virtual, flow.finish)
        flow.finish = ticket.start + ticket.cost / ticket.weight
        ticket.seq = next(self._seq)

    def arrive(self, flow: Flow, cost: float = 1.0) -> Ticket:
        """A request's place: running at once if it may run now (room, or the reserve and its tenant under
        its share) and no waiting request may, else waiting (`wait`). Raises `OverloadedError` if the queue
        is full and the request has no better claim than any waiting."""
        ticket = Ticket(flow.name, flow.priority, flow.weight, max(cost, 1.0))
        self._tag(ticket)
        self._dispatch()  # whoever the passing time lets run goes first
        if self._may_run(ticket.flow):
            self._run(ticket)
            return ticket
        if self.max_queued is not None and self.queued >= self.max_queued:
            victim = self._victim(ticket)
            if victim is None:
                self._forget(ticket)
                self.shed += 1
                raise self._overloaded()
            self._remove(victim)
            self._forget(victim)
            assert victim.waiter is not None
            victim.waiter.set_exception(self._overloaded())
            self.shed += 1
        ticket.waiter = asyncio.get_running_loop().create_future()
        self._flows[ticket.flow].waiting.append(ticket)
        self.queued += 1
        return ticket

    def _may_run(self, name: str) -> bool:
        """Whether a request of flow `name` may go into the engine now (module docstring: places held).

        Places are kept free for what the other active flows are owed: a higher class its whole recent
        demand, one of the same or a lower class its share (no more than its recent demand), less what
        each runs. A flow under its share needs only the higher classes' owed places free; one at or
        over it needs all of them, and at least `reserve` while any other flow is active."""
        free = self.max_running - self.running
        if free <= 0:
            return False
        if len(self._flows) == 1 or not self.reserve:  # reserve 0: no places held (plain fair queuing)
            return True
        now = self._clock()
        flow = self._flows[name]
        others = [
            f for f in self._flows.values() if f is not flow and (f.running or f.waiting or now - f.seen < ACTIVE_S)
        ]
        if not others:
            return True
        total = flow.weight + sum(f.weight for f in others)
        higher = peers = 0
        for f in others:
            demand = self._demand(f, now)
            if f.priority > flow.priority:
                higher += max(0, demand - f.running)
            else:
                peers += max(0, min(math.ceil(self.max_running * f.weight / total), demand) - f.running)
        cap = self.max_running // 2  # never more than half the places held idle for others
        if flow.running < self.max_running * flow.weight / total:
            return free - 1 >= min(higher, cap)
        return free - 1 >= max(self.reserve, min(higher + peers, cap))

    @staticmethod
    def _demand(flow: _Flow, now: float) -> int:
        """The most requests the flow had here at once (running and waiting) over about the last DEMAND_S."""
        return flow.recent.observe(flow.running + len(flow.waiting), now, DEMAND_S)

    async def wait(self, ticket: Ticket) -> None:
        """Returns once a waiting request may run; raises `OverloadedError` if another took its place.
        Cancelled (its client left, its time ran out), it leaves the queue."""
        if ticket.running:
            return
        assert ticket.waiter is not None
        try:
            await ticket.waiter
        except asyncio.CancelledError:
            if ticket.running:  # dispatched as it was cancelled: give the place to the next
                self.leave(ticket)
            elif not ticket.done:
                self._remove(ticket)
                self._forget(ticket)
            raise

    async def enter(self, flow: Flow, cost: float = 1.0) -> Ticket:
        """`arrive`, then `wait`."""
        ticket = self.arrive(flow, cost)
        await self.wait(ticket)
        return ticket

    def leave(self, ticket: Ticket, used: float | None = None) -> None:
        """The request ended (once; later calls do nothing). `used`: its real cost, to correct its tenant's tags.
        A request that never ran leaves the queue."""
        if ticket.done:
            return
        if not ticket.running:
            self._remove(ticket)
            self._forget(ticket)
            return
        ticket.done = True
        flow = self._flows.get(ticket.flow)
        if flow is not None:
            flow.running -= 1
            flow.seen = self._clock()
            if used is not None and used != ticket.cost:
                flow.finish = max(self._virtual, flow.finish + (max(used, 1.0) - ticket.cost) / ticket.weight)
        ticket.running = False
        self.running -= 1
        self._dispatch()
        self._prune(ticket.flow)

    # -- inside ------------------------------------------------------------------

    def _run(self, ticket: Ticket) -> None:
        ticket.running = True
        self.running += 1
        self._flows[ticket.flow].running += 1
        self._virtual = max(self._virtual, ticket.start)

    def _dispatch(self) -> None:
        while self.running < self.max_running and self.queued:
            heads = [(-f.waiting[0].priority, f.waiting[0].start, f.waiting[0].seq, name)
                     for name, f in self._flows.items() if f.waiting and self._may_run(name)]  # fmt: skip
            if not heads:
                # The places left are held for others. Held demand runs out with time, which no arrival or
                # end may come to notice (a quiet replica): look again then.
                if self._later is None:
                    self._later = asyncio.get_running_loop().call_later(LOOK_AGAIN_S, self._look_again)
                return
            _, _, _, name = min(heads)  # few: one per tenant with requests waiting
            ticket = self._flows[name].waiting.popleft()
            self.queued -= 1
            self._run(ticket)
            assert ticket.waiter is not None
            if not ticket.waiter.done():
                ticket.waiter.set_result(None)

    def _look_again(self) -> None:
        self._later = None
        self._dispatch()

    def _victim(self, arrival: Ticket) -> Ticket | None:
        """The waiting request an arrival may displace (module docstring), or None. A waiter whose client
        just left (its future cancelled, its cleanup not run yet) is not one: it leaves by itself."""
        waiting = [t for f in self._flows.values() for t in f.waiting if t.waiter is not None and not t.waiter.done()]
        lower = [t for t in waiting if t.priority < arrival.priority]
        if lower:
            lowest = min(t.priority for t in lower)
            return max((t for t in lower if t.priority == lowest), key=lambda t: t.seq)
        same = [f for f in self._flows.values() if f.waiting and f.waiting[-1].priority == arrival.priority]
        if not same:
            return None
        own = self._flows.get(arrival.flow)
        own_count = sum(1 for t in own.waiting if t.priority == arrival.priority) if own else 0
        longest = max(same, key=lambda f: sum(1 for t in f.waiting if t.priority == arrival.priority))
        count = sum(1 for t in longest.waiting if t.priority == arrival.priority)
        live = [t for t in longest.waiting if t.priority == arrival.priority and t in waiting]
        if count <= own_count + 1 or not live:
            return None
        return max(live, key=lambda t: t.seq)

    def _remove(self, ticket: Ticket) -> None:
        flow = self._flows.get(ticket.flow)
        if flow is not None and ticket in flow.waiting:
            flow.waiting.remove(ticket)
            self.queued -= 1
        ticket.done = True

    def _forget(self, ticket: Ticket) -> None:
        """A request that never ran: its cost no longer counts against its tenant."""
        flow = self._flows.get(ticket.flow)
        if flow is not None:
            flow.finish = max(self._virtual, flow.finish - ticket.cost / ticket.weight)
        self._prune(ticket.flow)

    def _prune(self, name: str) -> None:
        # A flow with nothing waiting or running, no longer active, and a finish tag behind V carries
        # no history that matters.
        flow = self._flows.get(name)
        if (
            flow is not None
            and not flow.waiting
            and not flow.running
            and flow.finish <= self._virtual
            and self._clock() - flow.seen >= ACTIVE_S
        ):
            del self._flows[name]

    def _overloaded(self) -> OverloadedError:
        return OverloadedError(
            f"The model '{self.model_id}' is at capacity ({self.running} requests running, {self.queued} waiting). "
            "Retry shortly.",
            headers={"Retry-After": "1"},
        )

    def reject_waiting(self, error: Exception) -> int:
        """Every waiting request gets `error` (a replica that stops): returns how many."""
        waiting = [t for f in self._flows.values() for t in f.waiting]
        for ticket in waiting:
            self._remove(ticket)
            self._forget(ticket)
            assert ticket.waiter is not None
            if not ticket.waiter.done():
                ticket.waiter.set_exception(error)
        return len(waiting)

    def waiting_by_flow(self) -> dict[str, int]:
        return {name: len(f.waiting) for name, f in self._flows.items() if f.waiting}
