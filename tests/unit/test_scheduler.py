"""Request placement (serving/routing/scheduler.py) and the registry that feeds it (serving/deployments/registry.py).

Pure: endpoint tables made by hand, a registry object without Ray, a fake clock.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from serving.deployments.registry import EXPIRE_S, Reporter, RoutingRegistry
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


def test_every_entry_point_places_the_same_request_on_the_same_replica():
    endpoints = [ep(f"r{i}", in_flight=i % 3) for i in range(8)]
    tables = [table_of(endpoints, self_id=e.replica_id) for e in endpoints]
    for i in range(200):
        request = chat(f"system prompt {i}")
        choices = {Scheduler().pick("m", request, t)[0].replica_id for t in tables}
        assert len(choices) == 1, (i, choices)


def test_a_shared_prefix_sticks_to_one_replica_and_distinct_prompts_spread():
    table = table_of([ep(f"r{i}") for i in range(4)])
    sticky = {Scheduler().pick("m", chat("You are a helpful assistant. " * 40, f"q{i}"), table)[0] for i in range(50)}
    assert len(sticky) == 1
    spread = Counter(Scheduler().pick("m", chat(f"tenant {i}"), table)[0].replica_id for i in range(2000))
    assert len(spread) == 4 and max(spread.values()) <= 1.25 * 500, spread


def test_a_hot_replica_sends_its_key_to_the_key_s_second_choice():
    request = chat("a long shared system prompt")
    idle = table_of([ep(f"r{i}") for i in range(4)])
    first, second = [e.replica_id for e in Scheduler().pick("m", request, idle)[:2]]
    hot = table_of([ep(f"r{i}", in_flight=20 if f"r{i}" == first else 0) for i in range(4)])
    assert Scheduler().pick("m", request, hot)[0].replica_id == second


def test_what_an_entry_point_has_in_flight_at_a_replica_counts_even_before_a_report_shows_it():
    request = chat("shared")
    table = table_of([ep(f"r{i}") for i in range(2)])
    first = Scheduler().pick("m", request, table)[0].replica_id
    for _ in range(10):
        table.started(first)
    table.update([ep(f"r{i}") for i in range(2)])  # a report from before they arrived: idle
    assert Scheduler().pick("m", request, table)[0].replica_id != first  # still hot
    for _ in range(10):
        table.finished(first)
    assert Scheduler().pick("m", request, table)[0].replica_id == first


def test_the_entry_point_s_own_load_is_live():
    load = {"n": 0}
    table = EndpointTable("r0", own_load=lambda: load["n"], clock=Clock())
    table.update([ep("r0", in_flight=50), ep("r1")])
    assert table.load(table.endpoints()[0]) == 0
    load["n"] = 7
    assert table.load(table.endpoints()[0]) == 7


def test_no_prompt_goes_to_the_least_loaded():
    table = table_of([ep("r0", in_flight=3), ep("r1", in_flight=1), ep("r2", in_flight=2)])
    assert [e.replica_id for e in Scheduler().pick("m", {"model": "m"}, table)] == ["r1", "r2", "r0"]


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
