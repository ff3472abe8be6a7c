"""`HandleBackend` over a stand-in Serve handle: what a caller sees when the model's replica goes away.

Regression: a replica killed mid-stream (Serve's force-kill at the end of a
stopping replica's graceful timeout, or a crash) cut the proxy path's stream
with neither an error event nor `[DONE]`; now it ends with both, 503
`replica_unavailable`, as the direct path's streams do.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from serving.api.streaming import DONE, EncodedBody, sse
from serving.deployments.handle_backend import HandleBackend
from serving.errors import EngineUnavailableError
from tests.unit.request_factories import chat


class ActorDied(Exception):
    """Stands in for ray.exceptions.ActorDiedError (what a killed replica's stream raises)."""


class FakeStream:
    def __init__(self, items: list[object]) -> None:
        self._items = list(items)
        self.cancelled = False

    def __aiter__(self):
        return self

    async def __anext__(self):
        if not self._items:
            raise StopAsyncIteration
        item = self._items.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item

    def cancel(self) -> None:
        self.cancelled = True


class FakeHandle:
    def __init__(self, stream: FakeStream) -> None:
        self.stream = stream

    def options(self, **_: object) -> FakeHandle:
        return self

    @property
    def chat(self) -> FakeHandle:
        return self

    def remote(self, *_: object) -> FakeStream:
        return self.stream


CHUNK = sse({"choices": [{"index": 0, "delta": {"content": "hi"}}]})


async def read_all(backend: HandleBackend) -> list[bytes]:
    result = await backend.chat(chat(stream=True), "rid")
    assert not isinstance(result, (dict, EncodedBody))
    return [chunk async for chunk in result]


async def test_a_stream_cut_by_its_replica_ends_with_an_error_event_and_done():
    stream = FakeStream([CHUNK, CHUNK, ActorDied("the actor died unexpectedly")])
    chunks = await read_all(HandleBackend("m", "d", handle=FakeHandle(stream)))
    assert chunks[:2] == [CHUNK, CHUNK] and chunks[-1] == DONE, chunks
    error = json.loads(chunks[2].removeprefix(b"data: "))["error"]
    assert error["code"] == "replica_unavailable" and error["type"] == "service_unavailable", error
    assert "ActorDied" in error["message"], error
    assert stream.cancelled  # the handle call is cancelled however the stream ends


async def test_an_api_error_mid_stream_keeps_its_own_code():
    stream = FakeStream([CHUNK, EngineUnavailableError("the engine is not running")])
    chunks = await read_all(HandleBackend("m", "d", handle=FakeHandle(stream)))
    assert json.loads(chunks[1].removeprefix(b"data: "))["error"]["message"] == "the engine is not running"
    assert chunks[-1] == DONE


async def test_a_clean_stream_is_passed_through_unchanged():
    stream = FakeStream([CHUNK, DONE])
    assert await read_all(HandleBackend("m", "d", handle=FakeHandle(stream))) == [CHUNK, DONE]
    assert stream.cancelled


async def test_a_failure_before_the_first_chunk_still_raises():
    stream = FakeStream([ActorDied("gone")])
    with pytest.raises(ActorDied):
        await HandleBackend("m", "d", handle=FakeHandle(stream)).chat(chat(stream=True), "rid")


async def reading(backend: HandleBackend, chunks: list[bytes]) -> asyncio.Task[None]:
    """A stream of `backend` being read into `chunks` by a task of its own, under way."""
    result = await backend.chat(chat(stream=True), "rid")
    assert not isinstance(result, (dict, EncodedBody))

    async def read() -> None:
        async for chunk in result:
            chunks.append(chunk)

    reader = asyncio.create_task(read())
    await asyncio.sleep(0.05)
    return reader


class EndlessStream(FakeStream):
    """A long generation: a chunk every 10 ms until cancelled."""

    def __init__(self) -> None:
        super().__init__([])

    async def __anext__(self):
        if self.cancelled:
            raise StopAsyncIteration
        await asyncio.sleep(0.01)
        return CHUNK


async def test_a_stopping_relay_ends_its_streams_with_an_error_event_and_done():
    """The relaying process stops (a drained node's ingress): before, Serve killed it and the body was cut."""
    from serving.api.relay import RelayDrain

    relays = RelayDrain()
    stream = EndlessStream()
    backend = HandleBackend("m", "d", handle=FakeHandle(stream), relays=relays)
    chunks: list[bytes] = []
    reader = await reading(backend, chunks)
    assert relays.active == 1
    ended = await asyncio.wait_for(relays.drain(0.1), 5)  # the drain time runs out with the stream running
    await asyncio.wait_for(reader, 5)
    assert ended == 1 and relays.active == 0
    assert chunks[0] == CHUNK and chunks[-1] == DONE
    error = json.loads(chunks[-2].removeprefix(b"data: "))["error"]
    assert error["code"] == "server_shutting_down", error
    assert stream.cancelled  # the model's replica stops generating for it


async def test_an_idle_relay_drains_at_once():
    from serving.api.relay import RelayDrain

    relays = RelayDrain()
    assert await asyncio.wait_for(relays.drain(30), 1) == 0 and not relays.ending


def _ingress_like_class() -> type:
    """A class made in a function, as `ingress_deployment` makes the ingress: pickled by value, globals and all."""
    from serving.api.relay import RELAYS

    class Ingress:
        def relays(self) -> object:
            return RELAYS

    return Ingress


async def test_pickled_as_serve_ships_them_the_drain_and_the_relayed_streams_share_the_process_relay_drain():
    """Regression: each pickled reference to `RELAYS` became a copy of the build process's.

    The ingress's drain then set `ending` on one copy while its relayed streams read another:
    a drained node's ingress kept relaying until Serve force-killed it, and the stream was cut
    (tests/e2e/test_cluster.py::test_node_drain_as_kuberay_does, 1 run in 2 here).
    """
    import ray.cloudpickle as cloudpickle

    from serving.api.relay import RELAYS

    ingress = cloudpickle.loads(cloudpickle.dumps(_ingress_like_class()))()
    assert ingress.relays() is RELAYS
    stream = EndlessStream()
    backend = cloudpickle.loads(cloudpickle.dumps(HandleBackend("m", "d")))
    backend._handle = FakeHandle(stream)
    chunks: list[bytes] = []
    reader = await reading(backend, chunks)
    try:
        assert await asyncio.wait_for(RELAYS.drain(0.1), 5) == 1
        await asyncio.wait_for(reader, 5)
    finally:
        RELAYS.ending = False  # the process's own: leave it as other tests find it
    error = json.loads(chunks[-2].removeprefix(b"data: "))["error"]
    assert error["code"] == "server_shutting_down" and chunks[-1] == DONE, chunks[-2:]
