"""Routing decisions without a Ray cluster: the pure policy, and the Serve routers on fake replicas."""

from __future__ import annotations

import collections
import heapq
import random

import pytest

from serving.api.protocol import ChatCompletionRequest, CompletionRequest
from serving.config import ModelConfig
from serving.routing import ROUTER_CLASSES, request_router_config
from serving.routing.policy import (
    PrefixAwarePolicy,
    RoundRobinPolicy,
    bounded_load_choice,
    prefix_key,
    rendezvous_order,
    request_text,
)

REPLICAS = [f"replica-{i}" for i in range(8)]
SYSTEM = [f"You are assistant number {k}. " + f"Rules of team {k}: be precise. " * 40 for k in range(8)]


def chat(system: str, user: str) -> ChatCompletionRequest:
    return ChatCompletionRequest(
        model="m", messages=[{"role": "system", "content": system}, {"role": "user", "content": user}]
    )


# -- the key ----------------------------------------------------------------------------


def test_request_text_of_chat_and_completions():
    req = chat("sys prompt", "hello")
    assert request_text(req) == "system\nsys prompt\nuser\nhello\n"
    assert request_text(req, limit=8) == "system\ns"
    as_dict = {
        "messages": [
            {"role": "system", "content": [{"type": "text", "text": "sys prompt"}]},
            {"role": "user", "content": "hello"},
        ]
    }
    assert request_text(as_dict) == request_text(req)
    assert request_text(CompletionRequest(model="m", prompt="abcdef"), limit=3) == "abc"
    assert request_text(CompletionRequest(model="m", prompt=["abcdef"]), limit=4) == "abcd"
    assert request_text(CompletionRequest(model="m", prompt=[1, 2, 3, 4, 5]), limit=8) == "1 2"
    assert request_text({"foo": 1}) is None
    assert request_text(object()) is None


def test_shared_system_prompt_shares_the_key_distinct_ones_do_not():
    policy = PrefixAwarePolicy(prefix_chars=256)
    keys = {policy.key(chat(SYSTEM[0], f"question {i}")) for i in range(20)}
    assert len(keys) == 1
    assert len({policy.key(chat(s, "q")) for s in SYSTEM}) == len(SYSTEM)
    # A short system prompt: the user turn is part of the key (each conversation sticks on its own).
    assert policy.key(chat("Be brief.", "a")) != policy.key(chat("Be brief.", "b"))


# -- rendezvous hashing -------------------------------------------------------------------


def test_rendezvous_is_deterministic_and_a_permutation():
    key = prefix_key("abc")
    order = rendezvous_order(key, REPLICAS)
    assert sorted(order) == sorted(REPLICAS)
    assert rendezvous_order(key, list(reversed(REPLICAS))) == order


def test_unseen_keys_spread_evenly():
    firsts = collections.Counter(rendezvous_order(prefix_key(f"k{i}"), REPLICAS)[0] for i in range(8000))
    assert set(firsts) == set(REPLICAS)
    assert max(firsts.values()) < 1.15 * 1000 and min(firsts.values()) > 0.85 * 1000


def test_replica_changes_move_only_the_keys_they_must():
    keys = [prefix_key(f"k{i}") for i in range(2000)]
    before = {k: rendezvous_order(k, REPLICAS)[0] for k in keys}
    gone = REPLICAS[3]
    after_removal = {k: rendezvous_order(k, [r for r in REPLICAS if r != gone])[0] for k in keys}
    moved = [k for k in keys if before[k] != after_removal[k]]
    assert all(before[k] == gone for k in moved)
    assert len(moved) == sum(1 for k in keys if before[k] == gone)
    after_add = {k: rendezvous_order(k, REPLICAS + ["replica-new"])[0] for k in keys}
    moved = [k for k in keys if before[k] != after_add[k]]
    assert all(after_add[k] == "replica-new" for k in moved)
    assert 0.07 < len(moved) / len(keys) < 0.16  # about 1/9


# -- the load gate -------------------------------------------------------------------------


def test_sticky_replica_kept_while_within_threshold():
    ranked = ["a", "b", "c"]
    assert bounded_load_choice(ranked, {"a": 5, "b": 1, "c": 3}, threshold=4, load_factor=1)[0] == "a"
    assert bounded_load_choice(ranked, {"a": 4, "b": 0, "c": 3}, threshold=4, load_factor=1)[0] == "a"


def test_overloaded_sticky_replica_falls_to_next_ranked_within_threshold():
    ranked = ["a", "b", "c"]
    # a is 6 above the floor (c): b, the key's second choice, is within 4 of it: b, not c.
    assert bounded_load_choice(ranked, {"a": 6, "b": 3, "c": 0}, threshold=4, load_factor=1) == ["b", "c", "a"]
    # b also too loaded: the least-loaded replica.
    assert bounded_load_choice(ranked, {"a": 6, "b": 5, "c": 0}, threshold=4, load_factor=1)[0] == "c"
    # threshold 0: always a least-loaded replica (ties go to the best-ranked).
    assert bounded_load_choice(ranked, {"a": 1, "b": 0, "c": 0}, threshold=0, load_factor=1)[0] == "b"


def test_load_factor_lets_the_sticky_replica_exceed_the_threshold_up_to_its_bound():
    ranked = ["a", "b", "c", "d"]
    loads = {"a": 6, "b": 6, "c": 6, "d": 0}  # mean after this request: 19/4 = 4.75
    # a is 6 above the floor but 6 + 1 <= 1.5 * 4.75: still a.
    assert bounded_load_choice(ranked, loads, threshold=2, load_factor=1.5)[0] == "a"
    # With a tighter bound (7 > 1.25 * 4.75) the threshold decides: d.
    assert bounded_load_choice(ranked, loads, threshold=2, load_factor=1.25)[0] == "d"


def test_unknown_loads_count_as_idle():
    assert bounded_load_choice(["a", "b"], {"a": None, "b": 3}, threshold=1)[0] == "a"
    assert bounded_load_choice(["a", "b"], {"b": 3}, threshold=1)[0] == "a"


def test_policy_order_is_a_full_preference_list():
    policy = PrefixAwarePolicy(imbalance_threshold=2)
    key = policy.key(chat(SYSTEM[1], "hi"))
    loads = dict.fromkeys(REPLICAS, 0)
    order = policy.order(key, loads)
    assert sorted(order) == sorted(REPLICAS)
    assert order[0] == rendezvous_order(key, REPLICAS)[0]


def test_invalid_policy_settings():
    with pytest.raises(ValueError):
        PrefixAwarePolicy(prefix_chars=0)
    with pytest.raises(ValueError):
        PrefixAwarePolicy(imbalance_threshold=-1)
    with pytest.raises(ValueError):
        PrefixAwarePolicy(load_factor=0.9)


def simulate(route, *, concurrency=32, requests=4000, keys=8, cache_keys=3, seed=0):
    """A closed loop of `concurrency` clients; each request holds its replica for a random time.

    `route(key_index, loads) -> replica`. Each replica caches the prompts of
    its last `cache_keys` keys (LRU). Returns requests per replica and the
    fraction of requests whose key was cached on the replica they went to.
    """
    rng = random.Random(seed)
    loads = dict.fromkeys(REPLICAS, 0)
    served = collections.Counter()
    caches = {r: collections.OrderedDict() for r in REPLICAS}
    hits = 0
    events: list[tuple[float, int, str]] = []
    now = 0.0
    for n in range(requests):
        if len(events) >= concurrency:
            now, _, done = heapq.heappop(events)
            loads[done] -= 1
        k = rng.randrange(keys)
        replica = route(k, loads)
        loads[replica] += 1
        served[replica] += 1
        cache = caches[replica]
        if k in cache:
            hits += 1
            cache.move_to_end(k)
        else:
            cache[k] = None
            if len(cache) > cache_keys:
                cache.popitem(last=False)
        heapq.heappush(events, (now + rng.uniform(0.5, 1.5), n, replica))
    return served, hits / requests


@pytest.mark.parametrize("concurrency", [16, 32, 64])
@pytest.mark.parametrize("keyset", range(4))
def test_prefix_policy_on_a_closed_loop_keeps_keys_sticky_and_load_fair(concurrency, keyset):
    policy = PrefixAwarePolicy()
    keys = [policy.key(chat(f"set {keyset}: " + s, "q")) for s in SYSTEM]
    served, hit_rate = simulate(lambda k, loads: policy.order(keys[k], loads)[0], concurrency=concurrency)
    fair = sum(served.values()) / len(REPLICAS)
    # At 2 requests per replica the absolute threshold (2) dominates the load factor.
    assert max(served.values()) <= (1.5 if concurrency >= 32 else 1.6) * fair
    assert hit_rate > 0.75


def test_round_robin_spreads_but_every_key_reaches_every_replica():
    rr = RoundRobinPolicy()
    served, hit_rate = simulate(lambda k, loads: rr.order(loads)[0])
    assert max(served.values()) - min(served.values()) <= 1
    assert hit_rate < 0.5


def test_round_robin_cycles_in_a_stable_order():
    rr = RoundRobinPolicy()
    assert [rr.order(["b", "a", "c"])[0] for _ in range(6)] == ["a", "b", "c", "a", "b", "c"]
    assert rr.order(["b", "a", "c"]) == ["a", "b", "c"]


# -- config -> Serve options ---------------------------------------------------------------


def test_router_config_per_model():
    assert request_router_config(ModelConfig(id="m")) is None
    rr = request_router_config(ModelConfig(id="m", router="round_robin"))
    assert rr.request_router_class == ROUTER_CLASSES["round_robin"]
    pa = request_router_config(ModelConfig(id="m", router="prefix_aware", router_imbalance_threshold=3))
    assert pa.request_router_class == ROUTER_CLASSES["prefix_aware"]
    assert pa.request_router_kwargs == {"imbalance_threshold": 3, "prefix_chars": 512, "load_factor": 1.5}
    with pytest.raises(ValueError):
        ModelConfig(id="m", router="random")


def test_deployment_options_carry_the_router():
    from serving.deployments.app import llm_deployment_options

    assert "request_router_config" not in llm_deployment_options(ModelConfig(id="m"))
    opts = llm_deployment_options(ModelConfig(id="m", router="prefix_aware"))
    assert opts["request_router_config"].request_router_class.endswith("PrefixAwareRouter")


# -- the Serve routers on fake replicas ------------------------------------------------------


class FakeReplica:
    def __init__(self, uid: str, queue_len: int = 0):
        from ray.serve._private.common import DeploymentID, ReplicaID

        self.replica_id = ReplicaID(unique_id=uid, deployment_id=DeploymentID(name="d", app_name="a"))
        self.max_ongoing_requests = 100
        self.queue_len = queue_len
        self.probes = 0

    async def get_queue_len(self, *, deadline_s: float) -> int:
        self.probes += 1
        return self.queue_len


def make_router(cls, **state):
    from ray.serve._private.common import DeploymentHandleSource, DeploymentID

    router = cls(
        deployment_id=DeploymentID(name="d", app_name="a"),
        handle_source=DeploymentHandleSource.UNKNOWN,
        use_replica_queue_len_cache=True,
    )
    router.initialize_state(**state)
    return router


def pending(arg):
    from ray.serve._private.common import RequestMetadata
    from ray.serve._private.request_router.common import PendingRequest

    return PendingRequest(args=[arg], kwargs={}, metadata=RequestMetadata(request_id="x", internal_request_id="x"))


async def test_prefix_aware_router_follows_the_policy():
    from serving.routing.prefix_router import PrefixAwareRouter

    router = make_router(PrefixAwareRouter, imbalance_threshold=2, prefix_chars=256)
    replicas = [FakeReplica(r) for r in REPLICAS]
    req = chat(SYSTEM[2], "hello")
    key = PrefixAwarePolicy(prefix_chars=256).key(req)
    sticky = rendezvous_order(key, REPLICAS)[0]

    ranks = await router.choose_replicas(replicas, pending(req))
    assert [r.replica_id.unique_id for r in ranks[0]] == [sticky]
    assert len(ranks[1]) == 7
    assert all(r.probes == 1 for r in replicas)  # not in the cache yet: probed once

    # Queue lengths now come from the cache: make the sticky replica hot.
    for r in replicas:
        router.replica_queue_len_cache.update(r.replica_id, 10 if r.replica_id.unique_id == sticky else 0)
    ranks = await router.choose_replicas(replicas, pending(chat(SYSTEM[2], "another turn")))
    second = rendezvous_order(key, REPLICAS)[1]
    assert [r.replica_id.unique_id for r in ranks[0]] == [second]
    assert all(r.probes == 1 for r in replicas)


async def test_prefix_aware_router_without_a_prompt_picks_two():
    from serving.routing.prefix_router import PrefixAwareRouter

    router = make_router(PrefixAwareRouter)
    replicas = [FakeReplica(r) for r in REPLICAS]
    ranks = await router.choose_replicas(replicas, None)
    assert len(ranks) == 1 and len(ranks[0]) == 2
    ranks = await router.choose_replicas(replicas, pending({"not": "a request"}))
    assert len(ranks[0]) == 2
    assert await router.choose_replicas([], None) == []


async def test_round_robin_router_cycles():
    from serving.routing.round_robin import RoundRobinRouter

    router = make_router(RoundRobinRouter)
    replicas = [FakeReplica(r) for r in REPLICAS[:3]]
    firsts = [(await router.choose_replicas(replicas, None))[0][0].replica_id.unique_id for _ in range(6)]
    assert firsts == REPLICAS[:3] * 2
