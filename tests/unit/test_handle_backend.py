"""`HandleBackend` over a stand-in Serve handle: what a caller sees when the model's replica goes away.

Regression: a replica killed mid-stream (Serve's force-kill at the end of a
stopping replica's graceful timeout, or a crash) cut the proxy path's stream
with neither an error event nor `[DONE]`; now it ends with both, 503
`replica_unavailable`, as the direct path's streams do.
"""

from __future__ import annotations

import json

import pytest

from serving.api.streaming import DONE, sse
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
    assert not isinstance(result, (dict, bytes))
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
