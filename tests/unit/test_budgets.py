"""Cluster-wide rate limits (serving/api/budgets.py): the `Ledger` that holds every budget and the
replicas' `Budgets` that lease quota from it.

Several `Budgets` sharing one `LocalLedger(Ledger(clock=...))` stand for
several replicas; one fake clock drives both sides (the sweeper's period is
real time, so tests of give-back and heartbeats wait a little for it). Covers
requests per minute across replicas (at one instant and over time), leasing in
batches and background top-ups, token reservations and settlement, the 400
for a request that can never fit, the concurrency cap across replicas, holder
TTL and heartbeats, idle give-back, and failing open or closed when the
ledger cannot be reached.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

import serving.api.budgets as budgets_module
from serving.api.budgets import (
    REQUESTS,
    SLOT_DENIAL_S,
    SLOTS,
    TOKENS,
    UNREACHABLE_RETRY_S,
    BudgetLimits,
    BudgetOwner,
    Budgets,
    Ledger,
    LocalLedger,
)
from serving.errors import BudgetUnavailableError, InvalidRequestError, RateLimitError


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Recording(LocalLedger):
    """An in-process ledger that counts the calls a replica makes; `gate` (if set) holds every take."""

    def __init__(self, ledger: Ledger) -> None:
        super().__init__(ledger)
        self.takes: list[tuple[str, str, dict]] = []
        self.gives: list[tuple[str, str, dict]] = []
        self.beats: list[tuple[str, dict, float]] = []
        self.gate: asyncio.Event | None = None

    async def take(self, holder, budget, limits, wants):
        self.takes.append((holder, budget, dict(wants)))
        if self.gate is not None:
            await self.gate.wait()
        return await super().take(holder, budget, limits, wants)

    async def give_back(self, holder, budget, limits, amounts):
        self.gives.append((holder, budget, dict(amounts)))
        await super().give_back(holder, budget, limits, amounts)

    async def heartbeat(self, holder, slots):
        self.beats.append((holder, dict(slots), self.ledger._clock()))
        await super().heartbeat(holder, slots)


class Unreachable(LocalLedger):
    """A ledger client whose calls raise while `down` (the actor restarting), or never answer if `hang`."""

    def __init__(self, ledger: Ledger | None = None, hang: bool = False) -> None:
        super().__init__(ledger)
        self.down = True
        self.hang = hang
        self.calls = 0

    async def _check(self) -> None:
        self.calls += 1
        if self.down:
            if self.hang:
                await asyncio.Event().wait()
            raise ConnectionError("budget holder actor is restarting")

    async def take(self, holder, budget, limits, wants):
        await self._check()
        return await super().take(holder, budget, limits, wants)

    async def give_back(self, holder, budget, limits, amounts):
        await self._check()
        await super().give_back(holder, budget, limits, amounts)

    async def heartbeat(self, holder, slots):
        await self._check()
        await super().heartbeat(holder, slots)


def owner(
    rpm: int | None = None, tpm: int | None = None, concurrent: int | None = None, fail_open: bool = False
) -> BudgetOwner:
    return BudgetOwner("tenant-1", BudgetLimits(rpm, tpm, concurrent), fail_open)


@pytest.fixture
async def replicas():
    """`make(n, clock, client=None, **kw)`: n `Budgets` over one ledger (a fresh in-process one by default)."""
    made: list[Budgets] = []

    def make(n: int, clock: Clock, client=None, **kw) -> list[Budgets]:
        client = client if client is not None else LocalLedger(Ledger(clock=clock))
        out = [Budgets(client, holder=f"r{len(made) + i}", clock=clock, **kw) for i in range(n)]
        made.extend(out)
        return out

    yield make
    for b in made:
        await b.close()


async def settle_tasks(rounds: int = 5) -> None:
    """Let the background top-ups run."""
    for _ in range(rounds):
        await asyncio.sleep(0)


async def eventually(cond: Callable[[], bool], timeout: float = 3.0) -> None:
    """Wait (real time) for the sweeper to make `cond` true."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "the sweeper did not get there in time"
        await asyncio.sleep(0.02)


async def admit_all(replicas_: list[Budgets], who: BudgetOwner, max_rounds: int = 200) -> int:
    """Round-robin admissions on every replica until a whole round is refused everywhere: how many passed."""
    admitted = 0
    for _ in range(max_rounds):
        passed = 0
        for b in replicas_:
            try:
                await b.admit(who)
            except RateLimitError:
                continue
            passed += 1
            await settle_tasks(2)
        admitted += passed
        await settle_tasks()
        if not passed:
            return admitted
    raise AssertionError("still admitting after max_rounds")


def ledger_of(b: Budgets) -> Ledger:
    return b._ledger.ledger  # type: ignore[attr-defined]


# -- requests per minute across replicas ---------------------------------------------------------


async def test_four_replicas_together_admit_no_more_than_the_budget_at_one_instant(replicas):
    clock = Clock()
    four = replicas(4, clock)
    who = owner(rpm=60)
    assert await admit_all(four, who) == 60
    assert ledger_of(four[0]).level("tenant-1", REQUESTS) == 0
    assert sum(b.held("tenant-1", REQUESTS) for b in four) == 0
    for b in four:
        with pytest.raises(RateLimitError) as err:
            await b.admit(who)
        assert err.value.status_code == 429 and err.value.code == "rate_limit_exceeded"
        assert err.value.headers["Retry-After"] == "1"


async def test_the_shared_budget_refills_at_one_request_per_second(replicas):
    clock = Clock()
    four = replicas(4, clock)
    who = owner(rpm=60)
    assert await admit_all(four, who) == 60
    clock.now += 1.0
    assert await admit_all(four, who) == 1
    clock.now += 0.5
    assert await admit_all(four, who) == 0
    clock.now += 0.5
    assert await admit_all(four, who) == 1
    clock.now += 10.0
    assert await admit_all(four, who) == 10


async def test_over_two_minutes_the_replicas_admit_at_most_the_limit_plus_the_refill(replicas):
    clock = Clock()
    four = replicas(4, clock)
    who = owner(rpm=60)
    start = clock.now
    total = 0
    for _ in range(240):
        total += await admit_all(four, who)
        elapsed = clock.now - start
        assert total <= 60 + elapsed
        clock.now += 0.5
    # and little is stranded in the replicas' balances: at most a batch or so each
    assert total >= 60 + 119.5 - 4 * 3


async def test_the_limit_does_not_grow_with_the_number_of_replicas(replicas):
    clock = Clock()
    who = owner(rpm=30)
    assert await admit_all(replicas(1, clock), who) == 30
    assert await admit_all(replicas(8, clock), who) == 30


# -- leasing -------------------------------------------------------------------------------------


async def test_a_replica_admits_from_its_local_balance_without_asking_the_ledger_each_time(replicas):
    clock = Clock()
    client = Recording(Ledger(clock=clock))
    (b,) = replicas(1, clock, client)
    who = owner(rpm=600)  # a batch: 2 s of it, 20 requests
    for _ in range(100):
        await b.admit(who)
        await settle_tasks(2)
    assert len(client.takes) <= 100 // 10 + 1
    assert ledger_of(b).level("tenant-1", REQUESTS) + b.held("tenant-1", REQUESTS) == 500


async def test_a_low_balance_is_topped_up_in_the_background(replicas):
    clock = Clock()
    client = Recording(Ledger(clock=clock))
    (b,) = replicas(1, clock, client)
    who = owner(rpm=600)  # batch 20: topped up below 10
    await b.admit(who)
    assert b.held("tenant-1", REQUESTS) == 20  # took 1 + a batch
    for _ in range(10):
        await b.admit(who)
    assert b.held("tenant-1", REQUESTS) == 10 and len(client.takes) == 1
    await b.admit(who)  # 9 left: below half a batch
    await settle_tasks()
    assert len(client.takes) == 2
    assert client.takes[1][2] == {REQUESTS: (0, 20)}
    assert b.held("tenant-1", REQUESTS) == 29


async def test_concurrent_admissions_ask_the_ledger_once(replicas):
    clock = Clock()
    client = Recording(Ledger(clock=clock))
    client.gate = asyncio.Event()
    (b,) = replicas(1, clock, client)
    who = owner(rpm=600)
    tasks = [asyncio.ensure_future(b.admit(who)) for _ in range(5)]
    await settle_tasks()
    assert len(client.takes) == 1
    client.gate.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 1)
    assert len(client.takes) == 1
    assert b.held("tenant-1", REQUESTS) == 16


async def test_idle_quota_goes_back_to_the_ledger_for_other_replicas(replicas):
    clock = Clock()
    client = Recording(Ledger(clock=clock))
    r0, r1 = replicas(2, clock, client, lease_s=0.4)  # the sweeper looks every 0.1 s
    who = owner(rpm=60)
    ledger = ledger_of(r0)
    await r0.admit(who)
    held = r0.held("tenant-1", REQUESTS)
    assert held >= 1
    ledger.take("elsewhere", "tenant-1", who.limits, {REQUESTS: (0, 60)})  # the rest is spent elsewhere
    assert ledger.level("tenant-1", REQUESTS) == 0
    with pytest.raises(RateLimitError):
        await r1.admit(who)
    clock.now += 1.0  # r0's balance is idle for longer than lease_s (the bucket refills 1 meanwhile)
    await eventually(lambda: bool(client.gives))
    assert client.gives == [("r0", "tenant-1", {REQUESTS: held})]
    assert r0.held("tenant-1", REQUESTS) == 0
    assert ledger.level("tenant-1", REQUESTS) == pytest.approx(held + 1)
    for _ in range(int(held) + 1):
        await r1.admit(who)
        await settle_tasks()
    with pytest.raises(RateLimitError):
        await r1.admit(who)


# -- tokens --------------------------------------------------------------------------------------


async def test_tokens_reserve_the_worst_case_and_settle_returns_the_unused_part(replicas):
    clock = Clock()
    (b,) = replicas(1, clock)
    who = owner(tpm=6000)
    lease = await b.reserve(who, prompt_tokens=100, completion_tokens=400)
    assert lease is not None and lease.reserved == 500
    assert b.remaining("tenant-1", TOKENS) == 6000 - 500
    assert b.in_progress("tenant-1") == 1
    held = b.held("tenant-1", TOKENS)
    lease.settle(300)
    assert b.held("tenant-1", TOKENS) == held + 200  # the unused part stays here, for the next request
    assert b.remaining("tenant-1", TOKENS) == 6000 - 300
    assert b.in_progress("tenant-1") == 0
    lease.settle(0)  # once only
    assert b.remaining("tenant-1", TOKENS) == 6000 - 300


async def test_a_lease_settled_without_usage_keeps_the_whole_reservation(replicas):
    clock = Clock()
    (b,) = replicas(1, clock)
    who = owner(tpm=6000)
    lease = await b.reserve(who, 100, 400)
    lease.settle(None)
    assert b.remaining("tenant-1", TOKENS) == 6000 - 500
    assert b.in_progress("tenant-1") == 0


async def test_usage_above_the_reservation_is_a_debt_the_next_lease_pays(replicas):
    clock = Clock()
    (b,) = replicas(1, clock)
    who = owner(tpm=6000)
    lease = await b.reserve(who, 100, 400)
    lease.settle(900)  # the prompt was longer than estimated
    assert b.remaining("tenant-1", TOKENS) == 6000 - 900
    assert b.held("tenant-1", TOKENS) < 0
    second = await b.reserve(who, 100, 100)
    assert b.held("tenant-1", TOKENS) >= 0
    second.settle(200)
    assert b.remaining("tenant-1", TOKENS) == 6000 - 900 - 200


async def test_a_request_larger_than_the_tokens_per_minute_is_a_400(replicas):
    clock = Clock()
    (b,) = replicas(1, clock)
    who = owner(tpm=1000)
    with pytest.raises(InvalidRequestError) as err:
        await b.reserve(who, prompt_tokens=200, completion_tokens=801)
    assert err.value.status_code == 400
    assert err.value.param == "max_tokens" and err.value.code == "request_too_large"
    assert "1001" in err.value.message
    with pytest.raises(InvalidRequestError) as err:
        await b.reserve(who, prompt_tokens=1001, completion_tokens=0)  # embeddings: its inputs alone
    assert err.value.status_code == 400 and err.value.param == "input"
    assert ledger_of(b).level("tenant-1", TOKENS) is None  # nothing was taken
    lease = await b.reserve(who, prompt_tokens=200, completion_tokens=800)  # exactly the limit fits
    assert lease is not None and lease.reserved == 1000


async def test_tokens_that_do_not_fit_now_are_a_429_with_the_seconds_until_they_do(replicas):
    clock = Clock()
    client = Recording(Ledger(clock=clock))
    (b,) = replicas(1, clock, client)
    who = owner(tpm=600)  # 10 tokens a second
    first = await b.reserve(who, 300, 300)
    assert first is not None
    assert b.held("tenant-1", TOKENS) == 0 and ledger_of(b).level("tenant-1", TOKENS) == 0
    with pytest.raises(RateLimitError) as err:
        await b.reserve(who, 10, 90)
    assert err.value.status_code == 429
    assert err.value.headers["Retry-After"] == "10"
    assert b.in_progress("tenant-1") == 1
    # Until then the request is refused before its body is read, without asking the ledger again.
    takes = len(client.takes)
    with pytest.raises(RateLimitError) as err:
        await b.admit(who)
    assert len(client.takes) == takes
    assert err.value.headers["Retry-After"] == "10"
    clock.now += 4
    with pytest.raises(RateLimitError) as err:
        await b.admit(who)
    assert err.value.headers["Retry-After"] == "6"
    clock.now += 6
    await b.admit(who)
    lease = await b.reserve(who, 10, 90)
    assert lease is not None and lease.reserved == 100


async def test_a_request_refused_for_tokens_keeps_no_concurrency_slot(replicas):
    clock = Clock()
    (r0,) = replicas(1, clock)
    who = owner(tpm=600, concurrent=1)
    big = await r0.reserve(who, 300, 300)
    big.settle(None)
    with pytest.raises(RateLimitError):
        await r0.reserve(who, 10, 10)
    assert r0.in_progress("tenant-1") == 0
    assert r0.held("tenant-1", SLOTS) == 1  # the slot stayed here, unused
    clock.now += 60
    lease = await r0.reserve(who, 10, 10)
    assert lease is not None and r0.in_progress("tenant-1") == 1


# -- concurrency ---------------------------------------------------------------------------------


async def test_two_replicas_share_a_concurrency_cap_of_two(replicas):
    clock = Clock()
    client = Recording(Ledger(clock=clock))
    r0, r1 = replicas(2, clock, client, lease_s=0.4)  # a spare slot goes back after 0.1 s
    who = owner(concurrent=2)
    first = await r0.reserve(who, 10, 10)
    second = await r1.reserve(who, 10, 10)
    assert first is not None and second is not None
    for b in (r0, r1):
        with pytest.raises(RateLimitError) as err:
            await b.reserve(who, 10, 10)
        assert err.value.status_code == 429 and err.value.headers["Retry-After"] == "1"
    first.settle(20)
    assert r0.in_progress("tenant-1") == 0
    third = await r0.reserve(who, 10, 10)  # the slot is reused here at once
    assert r0.in_progress("tenant-1") == 1
    with pytest.raises(RateLimitError):
        await r1.reserve(who, 10, 10)
    third.settle(20)
    clock.now += 0.2  # spare on r0 for longer than lease_s / 4: it goes back to the ledger
    await eventually(lambda: ("r0", "tenant-1", {SLOTS: 1}) in client.gives)
    assert r0.held("tenant-1", SLOTS) == 0
    with pytest.raises(RateLimitError):  # r1 was refused a slot 0.2 s ago: not asked again for SLOT_DENIAL_S
        await r1.reserve(who, 10, 10)
    clock.now += SLOT_DENIAL_S
    fourth = await r1.reserve(who, 10, 10)
    assert fourth is not None and r1.in_progress("tenant-1") == 2


def test_the_ledger_frees_the_slots_of_a_holder_silent_longer_than_its_ttl():
    clock = Clock()
    ledger = Ledger(clock=clock, holder_ttl_s=30)
    limits = BudgetLimits(max_concurrent=1)
    assert ledger.take("r1", "b", limits, {SLOTS: (1, 1)}) == {SLOTS: (1, 0.0)}
    assert ledger.take("r2", "b", limits, {SLOTS: (1, 1)}) == {SLOTS: (0, 1.0)}
    clock.now += 20
    ledger.heartbeat("r1", {"b": 1})  # r1 is alive, holding its slot
    clock.now += 30  # 30 s since r1's heartbeat: not longer than the TTL
    assert ledger.take("r2", "b", limits, {SLOTS: (1, 1)})[SLOTS][0] == 0
    clock.now += 1  # r1 silent for 31 s: it died holding the slot
    assert ledger.take("r2", "b", limits, {SLOTS: (1, 1)}) == {SLOTS: (1, 0.0)}
    assert ledger.take("r1", "b", limits, {SLOTS: (1, 1)})[SLOTS][0] == 0  # r1 back: r2 has it now


def test_a_heartbeat_replaces_the_ledgers_count_of_a_holders_slots():
    clock = Clock()
    ledger = Ledger(clock=clock)
    limits = BudgetLimits(max_concurrent=2)
    assert ledger.take("r1", "b", limits, {SLOTS: (1, 2)}) == {SLOTS: (2, 0.0)}
    assert ledger.take("r2", "b", limits, {SLOTS: (1, 1)})[SLOTS][0] == 0
    ledger.heartbeat("r1", {"b": 1})
    assert ledger.take("r2", "b", limits, {SLOTS: (1, 1)})[SLOTS][0] == 1
    assert ledger.take("r3", "b", limits, {SLOTS: (1, 1)})[SLOTS][0] == 0


def test_the_ledger_grants_what_is_there_when_it_covers_the_need():
    clock = Clock()
    ledger = Ledger(clock=clock)
    limits = BudgetLimits(tokens_per_minute=600)
    assert ledger.take("r1", "b", limits, {TOKENS: (100, 450)}) == {TOKENS: (450, 0.0)}
    assert ledger.take("r1", "b", limits, {TOKENS: (100, 450)}) == {TOKENS: (150, 0.0)}
    granted, wait = ledger.take("r1", "b", limits, {TOKENS: (50, 100)})[TOKENS]
    assert granted == 0 and wait == pytest.approx(5.0)
    ledger.give_back("r1", "b", limits, {TOKENS: 30})
    assert ledger.level("b", TOKENS) == 30
    clock.now += 120  # never deeper than one minute's limit
    assert ledger.level("b", TOKENS) == 600
    ledger.give_back("r1", "b", limits, {TOKENS: 100})  # nor by what comes back
    assert ledger.level("b", TOKENS) == 600


async def test_a_live_replica_keeps_its_slots_by_heartbeat_and_a_dead_ones_are_freed(replicas):
    clock = Clock()
    client = Recording(Ledger(clock=clock))
    r0, r1 = replicas(2, clock, client, lease_s=0.4)
    who = owner(concurrent=1)
    lease = await r0.reserve(who, 10, 10)  # a long request in progress on r0
    with pytest.raises(RateLimitError):
        await r1.reserve(who, 10, 10)
    clock.now += budgets_module.HOLDER_TTL_S + 1
    await eventually(lambda: any(h == "r0" and t == clock.now for h, _, t in client.beats))
    assert [s for h, s, t in client.beats if h == "r0"][-1] == {"tenant-1": 1}
    with pytest.raises(RateLimitError):
        await r1.reserve(who, 10, 10)
    await r0.close()  # r0 dies with its slot
    await asyncio.sleep(0)
    clock.now += budgets_module.HOLDER_TTL_S + 1
    second = await r1.reserve(who, 10, 10)
    assert second is not None
    lease.settle(None)


# -- when the ledger cannot be reached -----------------------------------------------------------


async def test_an_unreachable_ledger_refuses_a_fail_closed_budget_with_503(replicas):
    clock = Clock()
    client = Unreachable(Ledger(clock=clock))
    (b,) = replicas(1, clock, client)
    who = owner(rpm=60, tpm=6000, concurrent=2, fail_open=False)
    with pytest.raises(BudgetUnavailableError) as err:
        await b.admit(who)
    assert err.value.status_code == 503
    assert err.value.code == "budget_unavailable"
    assert err.value.headers["Retry-After"] == str(int(UNREACHABLE_RETRY_S))
    assert b.unreachable == 1 and client.calls == 1
    with pytest.raises(BudgetUnavailableError):
        await b.reserve(who, 10, 10)
    assert client.calls == 1  # not asked again before UNREACHABLE_RETRY_S
    assert b.in_progress("tenant-1") == 0
    client.down = False
    clock.now += UNREACHABLE_RETRY_S
    await b.admit(who)
    lease = await b.reserve(who, 10, 10)
    assert lease is not None and client.calls > 1


async def test_an_unreachable_ledger_serves_a_fail_open_budget_under_each_replicas_own_limits(replicas):
    clock = Clock()
    client = Unreachable(Ledger(clock=clock))
    r0, r1 = replicas(2, clock, client)
    who = owner(rpm=6, fail_open=True)
    for b in (r0, r1):
        for _ in range(6):
            await b.admit(who)
            await settle_tasks()
        with pytest.raises(RateLimitError) as err:
            await b.admit(who)
        assert err.value.status_code == 429 and err.value.headers["Retry-After"] == "10"
    assert r0.unreachable == 1 and r1.unreachable == 1


async def test_fail_open_limits_refill_by_the_replicas_clock(replicas):
    clock = Clock()
    client = Unreachable(Ledger(clock=clock))
    (b,) = replicas(1, clock, client)
    who = owner(rpm=6, fail_open=True)
    for _ in range(6):
        await b.admit(who)
        await settle_tasks()
    with pytest.raises(RateLimitError):
        await b.admit(who)
    clock.now += 10  # one request's worth at 6 a minute
    await b.admit(who)


async def test_fail_open_concurrency_does_not_leak_slots_while_the_ledger_is_unreachable(replicas):
    clock = Clock()
    client = Unreachable(Ledger(clock=clock))
    (b,) = replicas(1, clock, client, lease_s=0.4)
    who = owner(concurrent=1, fail_open=True)
    lease = await b.reserve(who, 10, 10)
    assert lease is not None and b.unreachable == 1
    lease.settle(None)
    clock.now += 0.2  # the spare slot is idle for longer than lease_s / 4: the sweeper takes it
    await eventually(lambda: b.held("tenant-1", SLOTS) == 0)
    assert b.in_progress("tenant-1") == 0
    again = await b.reserve(who, 10, 10)  # nothing is in progress: the one slot is free
    assert again is not None


async def test_a_ledger_that_does_not_answer_counts_as_unreachable(replicas, monkeypatch):
    monkeypatch.setattr(budgets_module, "LEDGER_TIMEOUT_S", 0.05)
    monkeypatch.setattr(budgets_module, "FIRST_CALL_TIMEOUT_S", 0.05)
    clock = Clock()
    client = Unreachable(Ledger(clock=clock), hang=True)
    (b,) = replicas(1, clock, client)
    with pytest.raises(BudgetUnavailableError):
        await asyncio.wait_for(b.admit(owner(rpm=60)), 2)
    assert b.unreachable == 1
    await asyncio.wait_for(b.admit(owner(rpm=60, fail_open=True)), 2)  # the same outage, an open budget


async def test_a_budget_without_limits_never_asks_the_ledger(replicas):
    clock = Clock()
    client = Unreachable(Ledger(clock=clock))
    (b,) = replicas(1, clock, client)
    who = owner()
    await b.admit(who)
    assert await b.reserve(who, 10_000, 10_000) is None
    assert client.calls == 0 and b.unreachable == 0


async def test_a_hung_ledger_costs_each_retry_the_short_timeout_not_the_first_calls(replicas, monkeypatch):
    """Only a client still finding its ledger (`connected` False) gets the long first-call timeout. Before, every
    retry after a failure waited it (30 s in production), holding the budget's lock."""
    monkeypatch.setattr(budgets_module, "LEDGER_TIMEOUT_S", 0.05)
    monkeypatch.setattr(budgets_module, "FIRST_CALL_TIMEOUT_S", 3.0)
    clock = Clock()
    client = Unreachable(Ledger(clock=clock), hang=True)
    (b,) = replicas(1, clock, client)
    who = owner(rpm=60)
    for _ in range(2):
        t0 = time.monotonic()
        with pytest.raises(BudgetUnavailableError):
            await b.admit(who)
        assert time.monotonic() - t0 < 1.0
        clock.now += budgets_module.UNREACHABLE_RETRY_S + 1  # the next try reaches for the ledger again
    assert client.calls == 2


async def test_a_refused_budget_is_not_asked_again_until_the_refusal_runs_out(replicas):
    """Before, each request against an exhausted requests-per-minute budget called the one holder actor:
    one key could queue the actor's calls for every tenant."""
    clock = Clock()
    client = Recording(Ledger(clock=clock))
    (b,) = replicas(1, clock, client)
    who = owner(rpm=2)
    await b.admit(who)
    await b.admit(who)
    for _ in range(50):
        with pytest.raises(RateLimitError):
            await b.admit(who)
    asked = len(client.takes)
    assert asked <= 3, client.takes
    clock.now += 31  # one request's worth refilled (2 a minute)
    await b.admit(who)
    assert len(client.takes) > asked
