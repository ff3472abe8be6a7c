"""SSE framing, the one "produce the first item before answering" helper, and the responses written in pieces.

A stream is answered with HTTP 200 only once its first chunk exists: errors
before it (a bad prompt, a full queue, a dead engine) become an HTTP error
instead of a 200 with an error event. Every transport (the engine in this
process, a Ray handle to another replica) opens its streams through
`first_then_rest`.

A stream that ends early is closed at once, down to the engine: Starlette's
`StreamingResponse` leaves its iterator suspended when the client leaves, the
writer stalls or the request times out, and an async generator left suspended
holds its engine request until the garbage collector finalizes it. So
`ClosingStreamingResponse` closes the iterator, and every layer closes the one
below it (`first_then_rest`, `closing` around the engine's stream).

A whole body can be big too: with logprobs, n x tokens x (top_logprobs + 1)
entries, 11.7 MB at the default limits. Joined and encoded as one bytes object
and written at once, it held the event loop, and every stream on it, for 30-80
ms on the real engine. So such a body is an `EncodedBody`, encoded piece by
piece as the engine produces it, and `EncodedBodyResponse` writes it in
`PIECE_BYTES` slices with the loop free between them.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable, TypeVar

import anyio
import msgspec
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from serving.errors import EngineUnavailableError

T = TypeVar("T")

encode_json = msgspec.json.Encoder().encode
DONE = b"data: [DONE]\n\n"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
PIECE_BYTES = 65_536  # what an EncodedBody's pieces hold, and what its response writes at a time


async def drain(in_flight: Callable[[], int], end: Callable[[], int], timeout_s: float) -> int:
    """A stopping server's drain: wait up to `timeout_s` for `in_flight()` to reach 0, then `end()` the rest.

    `end()` makes the requests still running end (a stream with an error event and
    `[DONE]`) and says how many; they get 2 s more to write their last events.
    Returns how many were ended (0 when none was left).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while in_flight() and loop.time() < deadline:
        await asyncio.sleep(0.05)
    if not in_flight():
        return 0
    ended = end()
    deadline = loop.time() + 2.0  # time to write their last events
    while in_flight() and loop.time() < deadline:
        await asyncio.sleep(0.02)
    return ended


def sse(payload: Any) -> bytes:
    """One SSE `data:` event with a JSON payload."""
    return b"data: " + encode_json(payload) + b"\n\n"


async def aclose(stream: object) -> None:
    """Close an async iterator that can be closed (an async generator); others have nothing to close."""
    close = getattr(stream, "aclose", None)
    if close is not None:
        await close()


@contextlib.asynccontextmanager
async def closing(stream: AsyncIterator[T]) -> AsyncIterator[AsyncIterator[T]]:
    """`async with closing(it) as it:` closes `it` however the block ends (contextlib.aclosing, for any iterator)."""
    try:
        yield stream
    finally:
        await aclose(stream)


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
            await aclose(stream)  # a Ray handle's stream has no aclose: on_close cancels it
            if on_close is not None:
                on_close()

    return chained()


class ClosingStreamingResponse(StreamingResponse):
    """A `StreamingResponse` that closes its iterator however the response ends (see the module docstring)."""

    async def stream_response(self, send: Send) -> None:
        try:
            await super().stream_response(send)
        finally:
            with anyio.CancelScope(shield=True):  # the response may be ending by cancellation
                await aclose(self.body_iterator)


@dataclass(slots=True)
class EncodedBody:
    """A whole JSON body, already encoded, as pieces whose concatenation is the body.

    `total_tokens` is its usage (what settles the caller's token budget), so
    nobody has to parse the body for it. Crosses a Ray handle as it is.
    """

    parts: list[bytes]
    total_tokens: int

    def __len__(self) -> int:
        return sum(len(p) for p in self.parts)

    def join(self) -> bytes:
        return b"".join(self.parts)


class EncodedBodyResponse(Response):
    """An `EncodedBody`, written `PIECE_BYTES` at a time with the event loop free between writes (with Content-Length)."""

    media_type = "application/json"

    def __init__(self, body: EncodedBody, status_code: int = 200) -> None:
        self.encoded = body
        self.status_code = status_code
        self.background = None
        self.body = b""
        self.init_headers({"content-length": str(len(body))})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        batch: list[bytes] = []
        size = 0
        for part in self.encoded.parts:
            batch.append(part)
            size += len(part)
            if size >= PIECE_BYTES:
                await send({"type": "http.response.body", "body": b"".join(batch), "more_body": True})
                batch, size = [], 0
                await asyncio.sleep(0)  # a send that does not block does not yield: let the other streams run
        await send({"type": "http.response.body", "body": b"".join(batch), "more_body": False})
