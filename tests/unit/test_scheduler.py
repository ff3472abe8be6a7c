"""Request placement (serving/routing/scheduler.py) and the registry that feeds it (serving/deployments/registry.py).

Pure: endpoint tables made by hand, a registry object without Ray, a fake clock.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter

import pytest

from serving.deployments.registry import EXPIRE_S, Reporter, RoutingRegistry
from serving.routing.policy import PrefixAwarePolicy, bounded_load_choice, rendezvous_order
from serving.routing.scheduler import (
    DRAINING,
    KV_FULL,
    READY,
    STALE_S,
    STARTING,
    UNHEALTHY,
    Endpoint,
    EndpointTable,
    Scheduler,
    adapter_key,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def ep(rid: str, model: str = "m", **kw: object) -> Endpoint:
    return Endpoint(replica_id=rid, model=model, address=f"10.0.0.1:{9000 + int(rid[1:])}", **kw)  # type: ignore[arg-type]


def chat(system: str, user: str = "hi") -> dict:
    return {"messages": [{"role": "system", "content": system}, {"role": "user", "content": user}]}


def table_of(endpoints: list[Endpoint], self_id: str | None = None, clock: Clock | None = None) -> EndpointTable:
    table = EndpointTable(self_id, clock=clock or Clock())
    table.update(endpoints)
    return table


def test_only_ready_fresh_replicas_with_kv_room_of_the_model_are_candidates():
    clock = Clock()
    endpoints = [
        ep("r1"),
        ep("r2", state=DRAINING),
        ep("r3", state=STARTING),
        ep("r4", state=UNHEALTHY),
        ep("r5", age_s=STALE_S + 1),
        ep("r6", kv_usage=KV_FULL),
        ep("r7", model="other"),
        ep("r8"),
    ]
    table = table_of(endpoints, clock=clock)
    assert [e.replica_id for e in Scheduler().candidates("m", table)] == ["r1", "r8"]
    clock.now += STALE_S + 0.5  # no refresh for a while: every report is too old, so that filter is skipped
    assert [e.replica_id for e in Scheduler().candidates("m", table)] == ["r1", "r5", "r8"]


def test_a_filter_that_would_leave_nothing_is_skipped_but_the_model_is_never_relaxed():
    table = table_of([ep("r1", state=DRAINING), ep("r2", state=DRAINING), ep("r3", model="other")])
    assert {e.replica_id for e in Scheduler().candidates("m", table)} == {"r1", "r2"}
    assert Scheduler().pick("nope", chat("x"), table) == []


def exchange(tables: list[EndpointTable], endpoints: list[Endpoint]) -> None:
    """One round of the registry: each entry point reports its placements (and the keys it placed more than
    once) with its own entry, all read all."""
    by_id = {t.self_id: t for t in tables}
    reported = [
        dataclasses.replace(e, placed=t.report(), shared=t.report_shared())
        if (t := by_id.get(e.replica_id)) is not None
        else dataclasses.replace(e, placed={}, shared="")
        for e in endpoints
    ]
    for t in tables:
        t.update(reported)


def test_once_a_prompt_is_placed_and_reported_every_entry_point_places_it_on_the_same_replica():
    endpoints = [ep(f"r{i}", in_flight=i % 3) for i in range(8)]
    tables = [table_of(endpoints, self_id=e.replica_id) for e in endpoints]
    for i in range(200):
        request = chat(f"system prompt {i}")
        first = Scheduler().pick("m", request, tables[i % 8])[0].replica_id
        exchange(tables, endpoints)
        choices = {Scheduler().pick("m", request, t)[0].replica_id for t in tables}
        assert choices == {first}, (i, first, choices)


def test_a_prompt_nobody_placed_is_served_where_it_arrives_unless_this_replica_is_above_the_mean():
    loads = [2, 0, 3, 1]  # mean 1.5
    endpoints = [ep(f"r{i}", in_flight=n) for i, n in enumerate(loads)]
    for i in (1, 3):  # at or below the mean: served here
        table = table_of(endpoints, self_id=f"r{i}")
        assert Scheduler().pick("m", chat(f"a one-off prompt {i}"), table)[0].replica_id == f"r{i}"
    # Above it: a replica below the mean, drawn per prompt by how far below it is (r1: 1.5, r3: 0.5), so
    # overflow spreads (no herd on r1) and never reaches a replica at or above the mean.
    table = table_of(endpoints, self_id="r2")
    overflow = Counter(Scheduler().pick("m", chat(f"one-off {i}"), table)[0].replica_id for i in range(800))
    assert set(overflow) == {"r1", "r3"}, overflow
    assert 2.2 < overflow["r1"] / overflow["r3"] < 4.2, overflow  # 3:1
    # The draw is the prompt's own: the same new prompt overflows to the same replica from every entry point.
    again = [Scheduler().pick("m", chat(f"one-off {i}"), table_of(endpoints, self_id="r2"))[0] for i in range(50)]
    assert Counter(e.replica_id for e in again) == Counter(
        Scheduler().pick("m", chat(f"one-off {i}"), table_of(endpoints, self_id="r0"))[0].replica_id for i in range(50)
    )
    # A table with no replica of its own (a model this entry point does not serve): the same.
    table = table_of(endpoints)
    assert Scheduler().pick("m", chat("another"), table)[0].replica_id != "r2"


def test_entry_points_that_placed_a_new_prompt_on_two_replicas_agree_after_one_report():
    endpoints = [ep(f"r{i}") for i in range(4)]
    tables = [table_of(endpoints, self_id=e.replica_id) for e in endpoints]
    request = chat("the same new prompt, at two entry points within one refresh")
    assert Scheduler().pick("m", request, tables[0])[0].replica_id == "r0"
    assert Scheduler().pick("m", request, tables[1])[0].replica_id == "r1"
    exchange(tables, endpoints)
    choices = {Scheduler().pick("m", request, t)[0].replica_id for t in tables}
    assert len(choices) == 1 and choices <= {"r0", "r1"}, choices


def test_a_shared_prefix_sticks_to_one_replica_and_distinct_prompts_spread():
    table = table_of([ep(f"r{i}") for i in range(4)])
    sticky = {Scheduler().pick("m", chat("You are a helpful assistant. " * 40, f"q{i}"), table)[0] for i in range(50)}
    assert len(sticky) == 1
    spread = Counter(Scheduler().pick("m", chat(f"tenant {i}"), table)[0].replica_id for i in range(2000))
    assert len(spread) == 4 and max(spread.values()) <= 1.25 * 500, spread


def test_a_hot_holder_sends_its_key_to_the_key_s_next_rendezvous_choice():
    request = chat("a long shared system prompt")
    table = table_of([ep(f"r{i}") for i in range(4)])
    first = Scheduler().pick("m", request, table)[0].replica_id
    second = [
        r for r in rendezvous_order(PrefixAwarePolicy().key(request) or b"", [f"r{i}" for i in range(4)]) if r != first
    ][0]
    table.update([ep(f"r{i}", in_flight=20 if f"r{i}" == first else 0) for i in range(4)])
    assert Scheduler().pick("m", request, table)[0].replica_id == second
    assert table.holders(PrefixAwarePolicy().key(request) or b"") == {first, second}


def test_what_an_entry_point_has_in_flight_at_a_replica_counts_even_before_a_report_shows_it():
    request = chat("shared")
    clock = Clock()
    table = table_of([ep(f"r{i}") for i in range(2)], clock=clock)
    first = Scheduler().pick("m", request, table)[0].replica_id
    clock.now += 0.1
    for _ in range(10):
        table.started(first)
    clock.now += 0.1
    table.update([ep(f"r{i}", age_s=0.5) for i in range(2)])  # a report from before they arrived: idle
    assert table.load(next(e for e in table.endpoints() if e.replica_id == first)) == 10
    assert Scheduler().pick("m", request, table)[0].replica_id != first  # still hot
    for _ in range(10):
        table.finished(first)
    assert Scheduler().pick("m", request, table)[0].replica_id == first


def test_a_report_after_the_sends_counts_them_once_and_ends_since_then_come_off():
    clock = Clock()
    table = EndpointTable("r0", own_load=lambda: 0, clock=clock)
    for _ in range(4):
        table.started("r1")
    clock.now += 1.0
    table.update([ep("r0"), ep("r1", load=4.0, age_s=0.1)])  # reported after the four began: they are in it
    other = table.endpoints()[1]
    assert table.load(other) == 4.0
    table.finished("r1")
    table.finished("r1")  # two of them ended since the report
    assert table.load(other) == 2.0
    table.started("r1")
    assert table.load(other) == 3.0
    clock.now += 10  # long after: the history is gone, the next report says it all
    table.started("r1")
    table.update([ep("r0"), ep("r1", load=4.0)])
    assert table.load(table.endpoints()[1]) == 4.0


def test_the_entry_point_rates_itself_by_its_live_count_and_nobody_biased_up():
    """Its own replica by the live count, another by its report plus this entry point's changes since. Rated as
    the larger of a lagging mean and a live count, every replica looked busier than it was, the entry point
    rated itself so too, and half of a no-prefix workload's requests were forwarded (0.84-0.88x round-robin's
    tokens/s, loadtests/PERFORMANCE.md, "Overflow drawn by deficit")."""
    load = {"n": 0}
    table = EndpointTable("r0", own_load=lambda: load["n"], clock=Clock())
    table.update([ep("r0", in_flight=5, load=3.0), ep("r1", load=3.0)])
    assert table.load(table.endpoints()[0]) == 0  # just emptied: live, not its period's mean
    load["n"] = 7
    assert table.load(table.endpoints()[0]) == 7
    assert table.load(table.endpoints()[1]) == 3.0


def test_no_prompt_is_placed_as_a_new_one_drawn_by_deficit_at_random():
    endpoints = [ep("r0", in_flight=4), ep("r1", in_flight=0), ep("r2", in_flight=1), ep("r3", in_flight=3)]
    firsts = Counter(Scheduler().pick("m", {"model": "m"}, table_of(endpoints))[0].replica_id for _ in range(800))
    assert set(firsts) == {"r1", "r2"} and 1.4 < firsts["r1"] / firsts["r2"] < 2.8, firsts  # deficits 2 : 1
    here = table_of(endpoints, self_id="r2")  # below the mean (2): stays
    assert Scheduler().pick("m", {"model": "m"}, here)[0].replica_id == "r2"
    idle = [ep(f"r{i}") for i in range(4)]  # all alike: no deficit anywhere, spread at random
    firsts = Counter(Scheduler().pick("m", {"model": "m"}, table_of(idle))[0].replica_id for _ in range(800))
    assert len(firsts) == 4 and min(firsts.values()) > 120, firsts


def test_a_hot_entry_point_s_new_prompts_spread_over_every_replica_below_the_mean():
    """Not only the two least loaded (what the tables of every entry point agree on, so all of them sent
    their overflow there within one refresh): each replica below the mean in proportion to its room."""
    loads = [9, 1, 2, 3, 5, 6, 7, 7]  # mean 5
    endpoints = [ep(f"r{i}", in_flight=n) for i, n in enumerate(loads)]
    table = table_of(endpoints, self_id="r0")
    overflow = Counter(Scheduler().pick("m", chat(f"new {i}"), table)[0].replica_id for i in range(2000))
    assert set(overflow) == {"r1", "r2", "r3"}, overflow  # r4 at the mean gets none
    share = {r: n / 2000 for r, n in overflow.items()}
    for replica, expected in {"r1": 4 / 9, "r2": 3 / 9, "r3": 2 / 9}.items():
        assert abs(share[replica] - expected) < 0.05, share


def test_the_registry_stamps_ages_drops_what_left_and_what_went_silent():
    clock = Clock()
    registry = RoutingRegistry(clock)
    registry.exchange(ep("r1").to_dict())
    clock.now += 1
    seen = registry.exchange(ep("r2").to_dict())
    assert {e["replica_id"]: e["age_s"] for e in seen} == {"r1": 1.0, "r2": 0.0}
    assert [e["replica_id"] for e in registry.exchange(leave="r2")] == ["r1"]
    clock.now += EXPIRE_S + 0.1
    assert registry.exchange() == []


class FakeActor:
    def __init__(self, registry: RoutingRegistry, fail: list[bool]) -> None:
        self.registry = registry
        self.fail = fail

    @property
    def exchange(self) -> FakeActor:
        return self

    async def remote(self, **kwargs: object) -> list[dict]:
        if self.fail[0]:
            raise ConnectionError("the registry's node is gone")
        return self.registry.exchange(**kwargs)  # type: ignore[arg-type]


async def test_the_reporter_refreshes_the_table_and_keeps_the_last_one_while_the_registry_is_away():
    registry, fail = RoutingRegistry(), [False]
    registry.exchange(ep("r9").to_dict())
    table = EndpointTable("r1")
    made: list[str] = []

    def actor(app: str) -> FakeActor:
        made.append(app)
        return FakeActor(registry, fail)

    reporter = Reporter("app", table, lambda: ep("r1"), refresh_s=0.01, actor=actor)
    task = asyncio.ensure_future(reporter.run())
    try:
        for _ in range(100):
            await asyncio.sleep(0.01)
            if len(table.endpoints()) == 2:
                break
        assert {e.replica_id for e in table.endpoints()} == {"r1", "r9"}
        fail[0] = True
        version = table.version
        await asyncio.sleep(0.1)
        assert table.version == version and len(table.endpoints()) == 2  # routing goes on with the last table
        fail[0] = False
        await asyncio.sleep(0.1)
        assert table.version > version and len(made) >= 2  # the actor was looked up again
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    await reporter.leave("r1")
    assert [e["replica_id"] for e in registry.exchange()] == ["r9"]


def test_endpoint_round_trips_as_a_dict_and_ignores_unknown_fields():
    e = ep("r3", state=READY, in_flight=4, kv_usage=0.5)
    assert Endpoint.from_dict({**e.to_dict(), "future_field": 1}) == e


def test_placements_travel_in_the_report_and_an_entry_point_remembers_a_bounded_number():
    from serving.routing.scheduler import REMEMBERED_KEYS

    entry = table_of([ep("r0"), ep("r1")], self_id="r0")
    keys = [PrefixAwarePolicy().key(chat(f"prompt {i}")) or b"" for i in range(REMEMBERED_KEYS + 10)]
    for i, key in enumerate(keys):
        entry.placed(key, f"r{i % 2}")
    wire = Endpoint.from_dict(dataclasses.replace(entry.endpoints()[0], placed=entry.report()).to_dict())
    reader = table_of([wire, ep("r1")], self_id="r1")
    assert all(reader.holders(k) == set() for k in keys[:10])  # the oldest were forgotten
    assert all(reader.holders(k) == {f"r{i % 2}"} for i, k in enumerate(keys) if i >= 10)
    garbled = dataclasses.replace(wire, placed={"r0": "not hex at all, and longer than one key"})
    reader.update([garbled])
    assert reader.holders(keys[-1]) == set()


def test_in_flight_reports_its_mean_over_the_period_since_it_was_last_asked():
    from serving.api.openai_serving import InFlight

    clock = Clock()
    meter = InFlight(clock)
    meter.add(1)
    clock.now += 0.1
    meter.add(1)
    clock.now += 0.1
    meter.add(-2)
    clock.now += 0.2
    assert meter.now == 0 and meter.mean() == pytest.approx((1 * 0.1 + 2 * 0.1) / 0.4)
    assert meter.mean() == 0.0  # no time passed and nothing in flight
    meter.add(3)
    clock.now += 0.5
    assert meter.mean() == pytest.approx(3.0)


def test_a_replica_s_mean_load_ranks_it_and_an_older_report_without_one_still_counts():
    # Replicas idle at the instant they reported, but busy on average: a prompt nobody holds that
    # cannot stay (its entry point is above the mean) goes to those below the mean on average, by their room.
    endpoints = [ep("r0"), ep("r1", load=1.6), ep("r2", load=0.2), ep("r3", in_flight=2)]
    load = {"n": 3}
    table = EndpointTable("r0", own_load=lambda: load["n"], clock=Clock())
    table.update(endpoints)
    assert [table.load(e) for e in table.endpoints()] == [3, 1.6, 0.2, 2]
    placed = Counter(Scheduler().pick("m", chat(f"one-off {i}"), table)[0].replica_id for i in range(600))
    # mean 1.7: r2's room 1.5, r1's 0.1 (15:1); never r3 (2), above the mean
    assert set(placed) == {"r1", "r2"} and 8 < placed["r2"] / placed["r1"] < 40, placed


def lora_chat(adapter: str | None, user: str) -> dict:
    return {"model": "m" if adapter is None else f"m:{adapter}", "messages": [{"role": "user", "content": user}]}


def test_an_adapter_s_requests_go_where_it_is_loaded_whatever_their_prompts():
    """Different prompts of one adapter, arriving at every entry point: after one report, all go to the
    replica the adapter went to first (it is loaded there), not where each prompt would land."""
    endpoints = [ep(f"r{i}") for i in range(8)]
    tables = [table_of(endpoints, self_id=e.replica_id) for e in endpoints]
    first = Scheduler().pick("m", lora_chat("sql", "first question"), tables[3])[0].replica_id
    assert first == "r3"  # nobody held it: served where it arrived
    exchange(tables, endpoints)
    where = Counter(
        Scheduler().pick("m", lora_chat("sql", f"question {i}"), tables[i % 8])[0].replica_id for i in range(80)
    )
    assert where == Counter({first: 80}), where
    # The base model's and other adapters' prompts are placed as before (served where they arrive).
    assert Scheduler().pick("m", lora_chat(None, "question 5"), tables[5])[0].replica_id == "r5"
    assert Scheduler().pick("m", lora_chat("chat", "question 5"), tables[5])[0].replica_id == "r5"


def test_a_hot_adapter_spreads_to_more_replicas_and_they_keep_it():
    endpoints = [ep(f"r{i}") for i in range(4)]
    table = table_of(endpoints, self_id="r0")
    assert Scheduler().pick("m", lora_chat("sql", "q"), table)[0].replica_id == "r0"
    hot = [ep(f"r{i}", in_flight=20 if i == 0 else 0) for i in range(4)]
    table.update(hot)
    second = Scheduler().pick("m", lora_chat("sql", "another q"), table)[0].replica_id
    adapter_order = rendezvous_order(adapter_key("m", lora_chat("sql", "")) or b"", [f"r{i}" for i in range(4)])
    assert second == [r for r in adapter_order if r != "r0"][0]  # the adapter's next choice, whatever the prompt
    # Both now hold it: with r0 still hot, the adapter's next prompts go to the second, not a third.
    nexts = {Scheduler().pick("m", lora_chat("sql", f"q{i}"), table)[0].replica_id for i in range(20)}
    assert nexts == {second}
    # Once r0 cools down, it is the adapter's again as often as the load gate allows: both hold it.
    table.update([ep(f"r{i}") for i in range(4)])
    cool = Counter(Scheduler().pick("m", lora_chat("sql", f"z{i}"), table)[0].replica_id for i in range(40))
    assert set(cool) <= {"r0", second}, cool


def test_an_adapter_s_prompt_is_cached_apart_from_the_base_model_s():
    """vLLM keys its prefix cache by adapter: the same prompt of the base model and of an adapter are two keys."""
    endpoints = [ep(f"r{i}") for i in range(4)]
    table = table_of(endpoints, self_id="r1")
    Scheduler().pick("m", lora_chat(None, "a shared system prompt"), table)
    key = PrefixAwarePolicy().key(lora_chat(None, "a shared system prompt")) or b""
    assert table.holders(key) == {"r1"}
    elsewhere = table_of(endpoints, self_id="r2")
    exchange([table, elsewhere], endpoints)
    assert Scheduler().pick("m", lora_chat(None, "a shared system prompt"), elsewhere)[0].replica_id == "r1"
    assert Scheduler().pick("m", lora_chat("sql", "a shared system prompt"), elsewhere)[0].replica_id == "r2"


def test_shared_prefixes_held_on_every_replica_are_served_by_even_shares_of_replicas():
    # 8 shared system prompts, all placed on both replicas (as a warm-up leaves them), 6 of which
    # rank r0 first by rendezvous (a split that a quarter of random draws give, or worse).
    ids = ["r0", "r1"]
    candidates = [chat(f"system prompt {i}") for i in range(40)]
    first = {id(p): rendezvous_order(PrefixAwarePolicy().key(p) or b"", ids)[0] for p in candidates}
    prompts = [p for p in candidates if first[id(p)] == "r0"][:6] + [p for p in candidates if first[id(p)] == "r1"][:2]
    keys = [PrefixAwarePolicy().key(p) or b"" for p in prompts]
    endpoints = [ep(r) for r in ids]
    tables = [table_of(endpoints, self_id=r) for r in ids]
    for t in tables:
        for k in keys:
            for r in ids:
                t.placed(k, r)
    exchange(tables, endpoints)
    homes = [{Scheduler().pick("m", p, t)[0].replica_id for t in tables} for p in prompts]
    assert all(len(h) == 1 for h in homes), homes  # every entry point agrees
    assert Counter(h.pop() for h in homes) == {"r0": 4, "r1": 4}


def reported(ids: list[str], keys: list[bytes], holder: dict[bytes, str] | None = None, **kw: object) -> list[Endpoint]:
    """Endpoints of model m whose reports share `keys`, each held where `holder` says (else on every replica)."""
    shared = "".join(k[:8].hex() for k in keys)
    placed: dict[str, str] = {}
    for k in keys:
        for r in [holder[k]] if holder and k in holder else ids:
            placed[r] = placed.get(r, "") + k[:8].hex()
    return [ep(r, shared=shared, placed=placed, **kw) for r in ids]


def test_a_shared_prefix_held_on_one_replica_stays_there_from_every_entry_point():
    # A conversation: its key is placed where it arrived, then its later turns from any entry point. Shared
    # once an entry point placed it twice: its home is the replica that holds it (no move, no re-prefill).
    ids = [f"r{i}" for i in range(4)]
    endpoints = [ep(r) for r in ids]
    tables = [table_of(endpoints, self_id=r) for r in ids]
    # One whose rendezvous ranking puts another replica first (there it would move).
    request = next(
        r
        for r in (chat(f"one conversation's first turns {i}") for i in range(20))
        if rendezvous_order((PrefixAwarePolicy().key(r) or b"")[:8], ids)[0] != "r2"
    )
    key = PrefixAwarePolicy().key(request) or b""
    assert Scheduler().pick("m", request, tables[2])[0].replica_id == "r2"
    exchange(tables, endpoints)
    assert tables[0].home(key, ids) is None  # placed once: not shared
    for _ in range(2):
        assert {Scheduler().pick("m", request, t)[0].replica_id for t in tables} == {"r2"}
        exchange(tables, endpoints)
    assert {t.home(key, ids) for t in tables} == {"r2"}


def test_a_shared_prefix_leaves_its_home_only_past_the_home_gate_and_then_for_a_holder():
    ids = [f"r{i}" for i in range(3)]
    request = chat("a shared prompt whose home will be busy")
    key = PrefixAwarePolicy().key(request) or b""
    # As many shared keys as replicas (every replica is home to one): the home's gate applies.
    others = [PrefixAwarePolicy().key(chat(f"another shared prompt {i}")) or b"" for i in range(2)]
    keys = [key, *others]
    home = table_of(reported(ids, keys)).home(key, ids)
    other = next(r for r in rendezvous_order(key, ids) if r != home)  # rendezvous's choice after the home
    holder = next(r for r in ids if r not in (home, other))  # served it before, besides its home
    tables = [table_of([ep(r) for r in ids], self_id=r) for r in ids]

    def loads(**in_flight: int) -> None:
        endpoints = [
            dataclasses.replace(e, in_flight=in_flight.get(e.replica_id, 0), placed={**e.placed, holder: key[:8].hex()})
            for e in reported(ids, keys, {key: home})
        ]
        for t in tables:
            t.update(endpoints)

    # 5 of 10 in flight at the home (3 more than the least): past the prompts' gate (its 6th above
    # 1.5 x the mean of 11 / 3), not past the home's (1.75 x).
    loads(**{home: 5, other: 3, holder: 2})
    assert tables[0].every_replica_has_a_home_key(ids)
    assert {t.home(key, ids) for t in tables} == {home}
    assert {Scheduler().pick("m", request, t)[0].replica_id for t in tables if t.self_id != home} == {home}
    plain = bounded_load_choice([home, holder, other], {home: 5, other: 3, holder: 2}, 2, 1.5)
    assert plain[0] != home  # a key without a home would have left
    # Far past it: to the key's other holder (its cache), not rendezvous's next choice.
    loads(**{home: 12})
    assert {Scheduler().pick("m", request, t)[0].replica_id for t in tables if t.self_id != home} == {holder}


def test_with_a_replica_home_to_no_key_a_hot_one_spreads_at_the_prompts_gate():
    # One shared prompt on 3 replicas: two are home to nothing (cache room), so the prompt leaves its
    # home where any prompt would (1.5 x the mean), not only past the home's gate.
    ids = [f"r{i}" for i in range(3)]
    request = chat("the one system prompt of an app")
    key = PrefixAwarePolicy().key(request) or b""
    home = table_of(reported(ids, [key], {key: "r1"})).home(key, ids)
    assert home == "r1"
    loads = {"r1": 5, "r0": 3, "r2": 2}  # at the home's gate, not past it (see the test above)
    endpoints = [dataclasses.replace(e, in_flight=loads[e.replica_id]) for e in reported(ids, [key], {key: "r1"})]
    tables = [table_of(endpoints, self_id=r) for r in ids]
    assert not tables[0].every_replica_has_a_home_key(ids)
    assert {Scheduler().pick("m", request, t)[0].replica_id for t in tables if t.self_id != home} != {home}


def test_homes_follow_the_replicas_and_only_a_leaving_replica_s_keys_move():
    ids = [f"r{i}" for i in range(16)]
    keys = [PrefixAwarePolicy().key(chat(f"prompt {i}")) or b"" for i in range(64)]
    first = table_of(reported(ids, keys))  # every replica holds every key: placed by rendezvous under the cap
    homes = {k: first.home(k, ids) for k in keys}
    assert Counter(homes.values()) == dict.fromkeys(ids, 4)
    # Each key held at its home from now on (as it would be, served there): one replica drains.
    table = table_of(reported(ids, keys, homes))
    assert {k: table.home(k, ids) for k in keys} == homes
    table.update([dataclasses.replace(e, state=DRAINING if e.replica_id == "r0" else READY) for e in table.endpoints()])
    left = [e.replica_id for e in Scheduler().candidates("m", table)]
    after = {k: table.home(k, left) for k in keys}
    moved = [k for k in keys if after[k] != homes[k]]
    assert {homes[k] for k in moved} == {"r0"} and len(moved) == 4  # only the leaving replica's keys
    assert max(Counter(after.values()).values()) <= 5
    # A new replica: no key moves while its holder is within its share (ceil(64 / 17) = 4: the caches
    # stay warm), and with a replica home to no key, a busy home spills at the prompts' gate, to it too.
    more = [*ids, "r16"]
    table = table_of([*reported(ids, keys, homes), ep("r16")])
    assert {k: table.home(k, more) for k in keys} == homes
    assert not table.every_replica_has_a_home_key(more) and table.every_replica_has_a_home_key(ids)


def test_another_model_s_or_an_adapter_s_keys_take_no_share_of_a_model_s_replicas():
    ids, others = ["r0", "r1"], [f"r{i}" for i in range(2, 6)]
    mine = [PrefixAwarePolicy().key(chat(f"mine {i}")) or b"" for i in range(8)]
    theirs = [PrefixAwarePolicy().key(chat(f"theirs {i}")) or b"" for i in range(120)]
    endpoints = reported(ids, mine) + [dataclasses.replace(e, model="b") for e in reported(others, theirs)]
    shared = "".join(k[:8].hex() for k in mine + theirs)
    table = table_of([dataclasses.replace(e, shared=shared) for e in endpoints])
    assert Counter(table.home(k, ids) for k in mine) == {"r0": 4, "r1": 4}
    # An adapter's placements are never reported shared.
    entry = EndpointTable("r0")
    entry.update([ep("r0"), ep("r1")])
    for _ in range(3):
        Scheduler().pick("m", {"model": "m:a1", **chat("an adapter's prompt")}, entry)
    assert entry.report_shared() == ""


def test_a_garbled_shared_report_is_ignored():
    table = table_of([ep("r0", shared="zz" * 40, placed={"r0": "zz" * 40}), ep("r1", shared="0011")])
    assert table.home(b"\x00" * 8, ["r0", "r1"]) is None and not table.every_replica_has_a_home_key(["r0", "r1"])
    assert Endpoint.from_dict(ep("r0", shared="ab" * 8).to_dict()).shared == "ab" * 8
