"""serving/api/responses/store.py: stored responses are bounded in time and size, and scoped to their owner."""

from __future__ import annotations

from serving.api.responses.store import BoundedStore


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_expire_after_ttl():
    clock = Clock()
    store = BoundedStore(ttl_s=10, max_bytes=1000, max_record_bytes=100, clock=clock)
    assert store.put("a", "r1", b"x" * 10)
    clock.now = 9.9
    assert store.get("a", "r1") == b"x" * 10
    clock.now = 10.1
    assert store.get("a", "r1") is None and len(store) == 0 and store.bytes == 0


def test_oldest_dropped_past_max_bytes_and_big_records_not_kept():
    store = BoundedStore(ttl_s=100, max_bytes=25, max_record_bytes=12, clock=Clock())
    for i in range(3):
        assert store.put("a", f"r{i}", b"y" * 10)
    assert store.get("a", "r0") is None and store.get("a", "r2") is not None and store.bytes == 20
    assert not store.put("a", "big", b"z" * 13)
    assert store.get("a", "big") is None


def test_owner_scoped():
    store = BoundedStore(ttl_s=100, max_bytes=100, max_record_bytes=100, clock=Clock())
    store.put("a", "r", b"1")
    assert store.get("b", "r") is None and not store.delete("b", "r")
    assert store.delete("a", "r") and store.get("a", "r") is None and store.bytes == 0


def test_a_record_over_the_whole_store_is_refused_and_keeps_the_others():
    store = BoundedStore(ttl_s=100, max_bytes=20, max_record_bytes=100, clock=Clock())
    store.put("a", "kept", b"k" * 10)
    assert not store.put("a", "big", b"b" * 21)
    assert store.get("a", "kept") == b"k" * 10


def test_deleting_an_expired_record_says_it_is_gone():
    clock = Clock()
    store = BoundedStore(ttl_s=1, max_bytes=100, max_record_bytes=100, clock=clock)
    store.put("a", "r", b"x")
    clock.now = 2
    assert not store.delete("a", "r")


def test_the_config_keeps_a_record_within_the_store():
    import pytest
    from pydantic import ValidationError

    from serving.config import ResponsesConfig

    with pytest.raises(ValidationError, match="max_record_bytes"):
        ResponsesConfig(max_bytes=1 << 20, max_record_bytes=2 << 20)


def test_the_shared_store_takes_the_bounds_of_each_write():
    """The actor outlives deploys: a redeploy's new bounds apply from its first write."""
    from serving.deployments.response_store import ResponseStoreActor

    actor = ResponseStoreActor(ttl_s=100, max_bytes=1000, max_record_bytes=1000)
    assert actor.put("a", "r1", b"x" * 500)
    assert not actor.put("a", "r2", b"x" * 500, bounds=(100.0, 1000, 100))
    assert actor.store.max_record_bytes == 100
