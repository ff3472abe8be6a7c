"""Rate limits that hold across the cluster: one ledger holds every budget, replicas lease quota from it.

A key's or tenant's requests per minute, tokens per minute and concurrent
requests must not grow with the number of replicas its traffic reaches (with
limits kept per replica, autoscaling multiplied every quota). So one `Ledger`
per app holds the budgets (token buckets refilling at limit / 60 per second,
as deep as one minute's limit, and counted concurrency slots), in the app's
budget-holder actor (serving/deployments/budget_holder.py), or in-process
where there is no cluster (tests, one process).

Replicas never ask it per request. Each replica's `Budgets` keeps a local
balance per budget and kind, leased in batches (the shape of CockroachDB's
distributed token bucket):

* a request is admitted from the local balance when it covers it: no round
  trip. When it does not, one call takes what is missing plus a batch (about
  `lease_s` of the limit); one waiter per budget asks, the others wait for it;
* when the balance falls low it is topped up in the background, so a steady
  stream of requests finds its quota already there;
* tokens are reserved for a request's worst case (its prompt plus n x
  max_tokens, an omitted max_tokens counting as the rest of the context) and
  settled against its usage when it ends; what the request did not use stays
  in the local balance, a prompt longer than estimated leaves a debt there
  that the next lease pays;
* what a replica has not used for `lease_s` goes back to the ledger, so an
  idle replica does not sit on quota another one needs;
* concurrency slots are leased one at a time and reused locally while the
  replica is busy; a spare one goes back after `lease_s / 4`. Each replica
  states the slots it holds every `HEARTBEAT_S`, and the ledger frees the
  slots of a replica silent for `HOLDER_TTL_S` (one that died holding them).

Staleness is bounded by the lease: a budget's limit can be exceeded by at
most what the replicas hold at once (about `lease_s` of the limit each)
within the first minute, and not over time, since every unit was granted by
the one ledger.

When the ledger cannot be reached (its actor restarting, a partitioned node),
each tenant says what happens (`on_budget_unreachable`): `closed` refuses
with 503 `budget_unavailable`, `open` serves under the same limits applied
by this replica alone (the per-replica behaviour of old). Ledger calls are
retried after `UNREACHABLE_RETRY_S`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable, Protocol

from serving.errors import BudgetUnavailableError, InvalidRequestError, RateLimitError

logger = logging.getLogger(__name__)

REQUESTS, TOKENS, SLOTS = "requests", "tokens", "slots"
HEARTBEAT_S = 5.0
HOLDER_TTL_S = 30.0
LEDGER_TIMEOUT_S = 2.0
FIRST_CALL_TIMEOUT_S = 30.0  # the first call may make the holder (a Ray actor: seconds on a busy node)
UNREACHABLE_RETRY_S = 5.0
SLOT_DENIAL_S = 0.5  # a budget refused a slot by the ledger is refused here this long without asking again


@dataclass(frozen=True, slots=True)
class BudgetLimits:
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    max_concurrent: int | None = None

    def __bool__(self) -> bool:
        return bool(self.requests_per_minute or self.tokens_per_minute or self.max_concurrent)

    def per_minute(self, kind: str) -> int | None:
        return self.requests_per_minute if kind == REQUESTS else self.tokens_per_minute


# -- the authority ---------------------------------------------------------------


@dataclass
class _Bucket:
    capacity: float
    level: float
    updated: float

    def refill(self, capacity: float, now: float) -> None:
        if capacity != self.capacity:  # the limit changed (a redeploy): keep the level, within the new depth
            self.capacity = capacity
        self.level = min(capacity, self.level + (now - self.updated) * capacity / 60.0)
        self.updated = now

    def wait_for(self, amount: float) -> float:
        missing = amount - self.level
        return 0.0 if missing <= 0 else missing / (self.capacity / 60.0)


@dataclass
class _Holder:
    seen: float
    slots: dict[str, int] = field(default_factory=dict)


class Ledger:
    """Every budget of the app, in one place: token buckets of requests and tokens, counted slots.

    `take` grants, per kind, `want` if it is there, else what is there if that
    covers `need`, else nothing with the seconds until `need` would be there.
    Callers send their limits with each call, so a redeploy's new limits apply
    from its first call (the holder outlives deploys).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic, holder_ttl_s: float = HOLDER_TTL_S) -> None:
        self._clock = clock
        self._ttl = holder_ttl_s
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        self._holders: dict[str, _Holder] = {}

    def _bucket(self, budget: str, kind: str, capacity: int, now: float) -> _Bucket:
        bucket = self._buckets.get((budget, kind))
        if bucket is None:
            bucket = self._buckets[(budget, kind)] = _Bucket(capacity, capacity, now)
        bucket.refill(capacity, now)
        return bucket

    def _slots_in_use(self, budget: str, now: float) -> int:
        for name in [h for h, v in self._holders.items() if now - v.seen > self._ttl]:
            logger.warning(
                "budget holder %s silent for %.0fs: its slots are freed", name, now - self._holders[name].seen
            )
            del self._holders[name]
        return sum(h.slots.get(budget, 0) for h in self._holders.values())

    def take(
        self, holder: str, budget: str, limits: BudgetLimits, wants: dict[str, tuple[float, float]]
    ) -> dict[str, tuple[float, float]]:
        """`wants`: kind -> (need, want). Returns kind -> (granted, seconds until `need` would be there)."""
        now = self._clock()
        out: dict[str, tuple[float, float]] = {}
        for kind, (need, want) in wants.items():
            if kind == SLOTS:
                cap = limits.max_concurrent
                h = self._holders.setdefault(holder, _Holder(now))
                h.seen = now
                if cap is None:
                    out[kind] = (want, 0.0)
                    continue
                free = cap - self._slots_in_use(budget, now)
                granted = want if free >= want else (free if free >= need else 0)
                granted = max(0, int(granted))
                if granted:
                    h.slots[budget] = h.slots.get(budget, 0) + granted
                out[kind] = (granted, 0.0 if granted else 1.0)
                continue
            per_minute = limits.per_minute(kind)
            if per_minute is None:
                out[kind] = (want, 0.0)
                continue
            bucket = self._bucket(budget, kind, per_minute, now)
            if bucket.level >= want:
                granted = want
            elif bucket.level >= need:
                granted = max(need, math.floor(bucket.level))
            else:
                out[kind] = (0.0, bucket.wait_for(need))
                continue
            bucket.level -= granted
            out[kind] = (granted, 0.0)
        return out

    def give_back(self, holder: str, budget: str, limits: BudgetLimits, amounts: dict[str, float]) -> None:
        """Return unused quota (a negative token amount is a debt: usage above what was taken)."""
        now = self._clock()
        for kind, amount in amounts.items():
            if kind == SLOTS:
                h = self._holders.get(holder)
                if h is not None:
                    h.seen = now
                    h.slots[budget] = max(0, h.slots.get(budget, 0) - int(amount))
                continue
            per_minute = limits.per_minute(kind)
            if per_minute is not None:
                bucket = self._bucket(budget, kind, per_minute, now)
                bucket.level = min(bucket.capacity, bucket.level + amount)

    def heartbeat(self, holder: str, slots: dict[str, int]) -> None:
        """The slots `holder` holds now (its word replaces the ledger's count): it is alive."""
        self._holders[holder] = _Holder(self._clock(), {b: n for b, n in slots.items() if n > 0})

    def level(self, budget: str, kind: str) -> float | None:
        """For tests and the stats: a bucket's level now (None if never used)."""
        bucket = self._buckets.get((budget, kind))
        if bucket is None:
            return None
        bucket.refill(bucket.capacity, self._clock())
        return bucket.level


class LedgerClient(Protocol):
    """The ledger as a replica reaches it (in-process, or the app's actor): may raise when unreachable."""

    async def take(
        self, holder: str, budget: str, limits: BudgetLimits, wants: dict[str, tuple[float, float]]
    ) -> dict[str, tuple[float, float]]: ...

    async def give_back(self, holder: str, budget: str, limits: BudgetLimits, amounts: dict[str, float]) -> None: ...

    async def heartbeat(self, holder: str, slots: dict[str, int]) -> None: ...

    # Optional: `connected` (bool), False while the client still finds or makes the ledger (a longer timeout).


class LocalLedger:
    """A `LedgerClient` over a `Ledger` in this process (one process, tests, the fallback of open tenants)."""

    def __init__(self, ledger: Ledger | None = None) -> None:
        self.ledger = ledger or Ledger()

    async def take(
        self, holder: str, budget: str, limits: BudgetLimits, wants: dict[str, tuple[float, float]]
    ) -> dict[str, tuple[float, float]]:
        return self.ledger.take(holder, budget, limits, wants)

    async def give_back(self, holder: str, budget: str, limits: BudgetLimits, amounts: dict[str, float]) -> None:
        self.ledger.give_back(holder, budget, limits, amounts)

    async def heartbeat(self, holder: str, slots: dict[str, int]) -> None:
        self.ledger.heartbeat(holder, slots)


# -- a replica's side ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BudgetOwner:
    """Whose budget a request spends: `budget` (a tenant's, or one key's), its limits, and its policy."""

    budget: str
    limits: BudgetLimits
    fail_open: bool = False


class _Local:
    """One budget's quota held by this replica."""

    __slots__ = ("owner", "held", "active", "pending", "used_at", "denied", "lock", "topping")

    def __init__(self, owner: BudgetOwner, now: float) -> None:
        self.owner = owner
        self.held = {REQUESTS: 0.0, TOKENS: 0.0, SLOTS: 0.0}
        self.active = 0  # requests holding one of its slots here
        self.pending = 0  # slots taken for requests still leasing their tokens
        self.used_at = {REQUESTS: now, TOKENS: now, SLOTS: now}
        self.denied: dict[str, float] = {}  # kind -> monotonic time until which the ledger said no
        self.lock = asyncio.Lock()
        self.topping: set[str] = set()


class Lease:
    """What an admitted request holds until it ends: a concurrency slot and the tokens it reserved.

    `settle(used)` once, when the request ends: the slot is returned, and the
    reservation is replaced by the tokens used (prompt plus completion, from the
    response's usage). `used=None` (a stream cut before its usage arrived)
    keeps the whole reservation charged: what it generated is not known here,
    and charging less would let a client that hangs up early go over its budget.
    """

    __slots__ = ("_budgets", "_local", "reserved", "_open")

    def __init__(self, budgets: Budgets, local: _Local, reserved: int) -> None:
        self._budgets, self._local, self.reserved, self._open = budgets, local, reserved, True

    def settle(self, used: int | None) -> None:
        if self._open:
            self._open = False
            self._budgets._settle(self._local, self.reserved, used)


class Budgets:
    """This replica's side of the app's budgets: local balances leased from the ledger (module docstring)."""

    def __init__(
        self,
        ledger: LedgerClient | None = None,
        lease_s: float = 2.0,
        holder: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ledger: LedgerClient = ledger or LocalLedger()
        # Open tenants when the ledger cannot be reached: this replica's own limits (a new one each outage).
        self._fallback = LocalLedger(Ledger(clock))
        self._lease_s = lease_s
        self._holder_name = holder
        self._clock = clock
        self._locals: dict[str, _Local] = {}
        self._down_until = 0.0
        self._reached = False  # the ledger answered since its last failure (or ever)
        self._sweeper: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()  # top-ups under way (a reference, or the GC may drop them)
        self.unreachable = 0  # calls that failed (a metric and the tests)

    @property
    def _holder(self) -> str:
        """This process's name at the ledger (its slots are freed if it goes silent): made where it runs, not
        where the app was built (an app object is built once and copied into every replica)."""
        if self._holder_name is None:
            self._holder_name = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        return self._holder_name

    # -- admission -------------------------------------------------------------

    def _local(self, owner: BudgetOwner) -> _Local:
        local = self._locals.get(owner.budget)
        if local is None:
            local = self._locals[owner.budget] = _Local(owner, self._clock())
        elif local.owner != owner:
            local.owner = owner  # its limits changed (keys read again)
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep())
        return local

    async def admit(self, owner: BudgetOwner) -> None:
        """Before the body is read: one request of the budget's requests per minute, or 429 at once.

        A budget whose tokens the ledger last refused is refused here until then, and a budget with all
        its slots in use here and none to lease is too: neither is worth reading a body for."""
        limits = owner.limits
        if not limits:
            return
        local = self._local(owner)
        if limits.tokens_per_minute and local.held[TOKENS] <= 0:
            until = local.denied.get(TOKENS, 0.0)
            if until > self._clock():
                self._refuse(f"tokens per minute (limit {limits.tokens_per_minute})", until - self._clock())
        if limits.requests_per_minute:
            await self._acquire(local, REQUESTS, 1, f"requests per minute (limit {limits.requests_per_minute})")

    async def reserve(self, owner: BudgetOwner, prompt_tokens: int, completion_tokens: int) -> Lease | None:
        """A request's worst case (estimated prompt tokens plus its completion limit) and a slot, or a refusal.

        A request that could never fit the tokens-per-minute budget is a 400 (waiting would
        not help); one that does not fit now is a 429 whose `Retry-After` says when it will.
        None when the budget has neither a token nor a concurrency limit (nothing to settle).
        """
        limits = owner.limits
        if not (limits.tokens_per_minute or limits.max_concurrent):
            return None
        worst = prompt_tokens + completion_tokens
        tpm = limits.tokens_per_minute
        if tpm and worst > tpm:
            if not completion_tokens:  # nothing generated: its inputs alone (embeddings)
                raise InvalidRequestError(
                    f"This request's inputs are about {prompt_tokens} tokens, more than your limit of {tpm} "
                    "tokens per minute. Send fewer or shorter inputs per request.",
                    param="input",
                    code="request_too_large",
                )
            raise InvalidRequestError(
                f"This request may use {worst} tokens (about {prompt_tokens} of prompt and up to "
                f"{completion_tokens} of completion: n x max_tokens, an omitted max_tokens counting as the rest "
                f"of the context), more than your limit of {tpm} tokens per minute. Set max_tokens lower.",
                param="max_tokens",
                code="request_too_large",
            )
        local = self._local(owner)
        if limits.max_concurrent:
            await self._acquire(local, SLOTS, 1, None)
            local.pending += 1  # in hand, not yet active: the heartbeat counts it
        if tpm:
            try:
                await self._acquire(
                    local, TOKENS, worst, f"tokens per minute (limit {tpm}; this request reserves {worst})"
                )
            except BaseException:
                if limits.max_concurrent:
                    local.pending -= 1
                    local.held[SLOTS] += 1
                raise
        if limits.max_concurrent:
            local.pending -= 1
        local.active += 1
        return Lease(self, local, worst if tpm else 0)

    def _settle(self, local: _Local, reserved: int, used: int | None) -> None:
        local.active -= 1
        now = self._clock()
        if local.owner.limits.max_concurrent:
            local.held[SLOTS] += 1
            local.used_at[SLOTS] = now
        if local.owner.limits.tokens_per_minute and used is not None:
            local.held[TOKENS] += reserved - used  # below zero: a debt the next lease pays
            local.used_at[TOKENS] = now

    def in_progress(self, budget: str) -> int:
        local = self._locals.get(budget)
        return local.active if local is not None else 0

    def remaining(self, budget: str, kind: str) -> float | None:
        """What is left of a budget: held here plus the ledger's level (an in-process ledger only; tests)."""
        assert isinstance(self._ledger, LocalLedger)
        level = self._ledger.ledger.level(budget, kind)
        return None if level is None else level + self.held(budget, kind)

    def use_clock(self, clock: Callable[[], float]) -> None:
        """Tests: a fake clock for the balances here and an in-process ledger."""
        self._clock = clock
        self._fallback.ledger._clock = clock
        if isinstance(self._ledger, LocalLedger):
            self._ledger.ledger._clock = clock

    def held(self, budget: str, kind: str) -> float:
        local = self._locals.get(budget)
        return local.held[kind] if local is not None else 0.0

    # -- leasing -----------------------------------------------------------------

    def _batch(self, owner: BudgetOwner, kind: str) -> float:
        if kind == SLOTS:
            return 1
        per_minute = owner.limits.per_minute(kind) or 0
        return max(1.0, math.floor(per_minute * self._lease_s / 60.0))

    async def _acquire(self, local: _Local, kind: str, amount: float, what: str | None) -> None:
        now = self._clock()
        local.used_at[kind] = now
        if local.held[kind] >= amount:
            local.held[kind] -= amount
            if kind != SLOTS and local.held[kind] < self._batch(local.owner, kind) / 2:
                self._top_up(local, kind)
            return
        until = local.denied.get(kind, 0.0)
        # The ledger said no to one request or slot: not asked again till then. (Tokens are asked again: a
        # smaller reservation may fit what the ledger has; `admit` refuses an empty token balance early.)
        if kind != TOKENS and until > now:
            if kind == SLOTS:
                self._refuse_slot(local.owner.limits.max_concurrent)
            assert what is not None
            self._refuse(what, until - now)
        async with local.lock:  # one waiter asks the ledger; the others find its batch here
            if local.held[kind] >= amount:
                local.held[kind] -= amount
                return
            need = amount - local.held[kind]
            granted, wait = await self._take(
                local, kind, need, need + (0 if kind == SLOTS else self._batch(local.owner, kind))
            )
            local.held[kind] += granted
            if local.held[kind] >= amount:
                local.held[kind] -= amount
                local.denied.pop(kind, None)
                return
        if kind == SLOTS:
            cap = local.owner.limits.max_concurrent
            local.denied[SLOTS] = self._clock() + SLOT_DENIAL_S
            self._refuse_slot(cap)
        local.denied[kind] = self._clock() + wait
        assert what is not None
        self._refuse(what, wait)

    async def _take(self, local: _Local, kind: str, need: float, want: float) -> tuple[float, float]:
        owner = local.owner
        wants = {kind: (need, want)}
        ledger = self._ledger
        if self._clock() < self._down_until:
            ledger = self._unreachable(owner)
        # A client still finding (or making) the holder gets longer: a Ray actor takes seconds to start.
        timeout = LEDGER_TIMEOUT_S if getattr(ledger, "connected", True) else FIRST_CALL_TIMEOUT_S
        try:
            got = await asyncio.wait_for(ledger.take(self._holder, owner.budget, owner.limits, wants), timeout)
            if ledger is self._ledger and self.unreachable and not self._reached:
                self._fallback = LocalLedger(Ledger(self._clock))  # what the outage's fallback granted is forgotten
            self._reached = self._reached or ledger is self._ledger
        except (BudgetUnavailableError, RateLimitError):
            raise
        except Exception as exc:
            if ledger is self._fallback:
                raise
            self.unreachable += 1
            self._reached = False
            self._down_until = self._clock() + UNREACHABLE_RETRY_S
            logger.warning("budget ledger unreachable (%s): %s", type(exc).__name__, exc)
            got = await self._unreachable(owner).take(self._holder, owner.budget, owner.limits, wants)
        return got[kind]

    def _unreachable(self, owner: BudgetOwner) -> LedgerClient:
        if owner.fail_open:
            return self._fallback
        raise BudgetUnavailableError(
            "The rate-limit budget holder cannot be reached; retry shortly.",
            code="budget_unavailable",
            headers={"Retry-After": str(math.ceil(UNREACHABLE_RETRY_S))},
        )

    def _top_up(self, local: _Local, kind: str) -> None:
        if kind in local.topping or self._clock() < self._down_until:
            return
        local.topping.add(kind)

        async def top_up() -> None:
            try:
                async with local.lock:
                    batch = self._batch(local.owner, kind)
                    if local.held[kind] < batch / 2:
                        granted, _ = await self._take(local, kind, 0, batch)
                        local.held[kind] += granted
            except Exception:  # refused or unreachable: the next request that needs it will say so
                logger.debug("top-up of %s failed", kind, exc_info=True)
            finally:
                local.topping.discard(kind)

        task = asyncio.get_running_loop().create_task(top_up())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _sweep(self) -> None:
        """Give back what has sat unused for lease_s (spare slots: lease_s / 4); state the slots held.
        While the ledger is unreachable, an open budget gives back to the fallback that granted it, and a
        closed one keeps what it holds (its debt too) until the ledger answers again."""
        beat = 0.0
        period = min(1.0, self._lease_s / 4)
        while True:
            await asyncio.sleep(period)
            now = self._clock()
            try:
                down = now < self._down_until
                for local in list(self._locals.values()):
                    if down and not local.owner.fail_open:
                        continue
                    target = self._fallback if down else self._ledger
                    back: dict[str, float] = {}
                    for kind in (REQUESTS, TOKENS):
                        idle = now - local.used_at[kind] >= self._lease_s
                        if local.held[kind] != 0 and idle and kind not in local.topping:
                            back[kind], local.held[kind] = local.held[kind], 0.0
                    if local.held[SLOTS] > 0 and now - local.used_at[SLOTS] >= self._lease_s / 4:
                        back[SLOTS], local.held[SLOTS] = local.held[SLOTS], 0.0
                    if back:
                        owner = local.owner
                        await asyncio.wait_for(
                            target.give_back(self._holder, owner.budget, owner.limits, back), LEDGER_TIMEOUT_S
                        )
                if now - beat >= HEARTBEAT_S and now >= self._down_until:
                    beat = now
                    slots = {
                        b: int(v.active + v.pending + v.held[SLOTS])
                        for b, v in self._locals.items()
                        if v.owner.limits.max_concurrent
                    }
                    await asyncio.wait_for(self._ledger.heartbeat(self._holder, slots), LEDGER_TIMEOUT_S)
            except Exception as exc:  # what could not go back is lost to the ledger until it refills
                logger.warning("budget ledger unreachable while giving back quota (%s)", type(exc).__name__)

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()

    @staticmethod
    def _refuse_slot(cap: int | None) -> None:
        raise RateLimitError(
            f"Rate limit reached for concurrent requests: {cap} of yours are in progress. Retry when one ends.",
            code="rate_limit_exceeded",
            headers={"Retry-After": "1"},
        )

    @staticmethod
    def _refuse(what: str, wait_s: float) -> None:
        retry = max(1, math.ceil(wait_s))
        raise RateLimitError(
            f"Rate limit reached for {what}. Retry after {retry}s.",
            code="rate_limit_exceeded",
            headers={"Retry-After": str(retry)},
        )
