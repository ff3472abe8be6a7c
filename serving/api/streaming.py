"""SSE framing and the one "produce the first item before answering" helper.

A stream is answered with HTTP 200 only once its first chunk exists: errors
before it (a bad prompt, a full queue, a dead engine) become an HTTP error
instead of a 200 with an error event. Every transport (the engine in this
process, a Ray handle to another replica) opens its streams through
`first_then_rest`.
"""

from __future__ import annotations

from typing import Any, AsyncIterator, Callable, TypeVar

import msgspec

from serving.errors import EngineUnavailableError

T = TypeVar("T")

encode_json = msgspec.json.Encoder().encode
DONE = b"data: [DONE]\n\n"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse(payload: Any) -> bytes:
    """One SSE `data:` event with a JSON payload."""
    return b"data: " + encode_json(payload) + b"\n\n"


async def first_then_rest(stream: AsyncIterator[T], on_close: Callable[[], object] | None = None) -> AsyncIterator[T]:
    """Pull the first item now (its errors raise here), then return an iterator of it and the rest.

    `on_close` runs when the returned iterator ends or is closed early (a client
    disconnect), e.g. to cancel the request behind a Ray handle.
    """
    try:
        first = await stream.__anext__()
    except StopAsyncIteration:
        raise EngineUnavailableError("the stream ended before any output") from None

    async def chained() -> AsyncIterator[T]:
        try:
            yield first
            async for item in stream:
                yield item
        finally:
            if on_close is not None:
                on_close()

    return chained()
