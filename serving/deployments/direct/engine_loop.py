"""A uvloop event loop on a thread of its own: the engine client and the direct HTTP server run here.

Why not Serve's user-code loop: it is a plain asyncio loop with Serve's
instrumentation on it. Profiling the direct path (loadtests/PERFORMANCE.md,
"Own uvloop thread for the engine client and HTTP server") showed the event
loop itself is the hot spot per token (socket writes, engine output dispatch);
plain vLLM's server runs on uvloop. Handle calls from Serve
(proxy path, other models) reach this loop through `run()` and `stream()`.

`stream()` is bounded: the producer on the engine loop runs at most
`STREAM_WINDOW` items ahead of its consumer, so a consumer that stops pulling
stops the producer instead of piling the whole answer up in a queue (measured
before the window: a paused consumer let the producer run 20k chunks ahead).
Credits go back in batches of half the window, one cross-thread call per
batch rather than per item.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, AsyncIterator, Awaitable, Callable, Coroutine, TypeVar

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop ships with uvicorn[standard]
    uvloop = None

T = TypeVar("T")
_END = object()
STREAM_WINDOW = 64


class _Credits:
    """How many more items the producer may send; used on the producer's loop only."""

    def __init__(self, n: int) -> None:
        self.n = n
        self._more = asyncio.Event()

    async def take(self) -> None:
        while self.n <= 0:
            self._more.clear()
            await self._more.wait()
        self.n -= 1

    def give(self, k: int) -> None:
        self.n += k
        self._more.set()


class EngineLoop:
    def __init__(self, name: str = "engine-loop") -> None:
        self.loop = uvloop.new_event_loop() if uvloop else asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    async def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        """Await `coro` on the engine loop from any other loop; cancelling cancels it there."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    async def stream(
        self, open_stream: Callable[[], Awaitable[AsyncIterator[T]]], window: int = STREAM_WINDOW
    ) -> AsyncIterator[T]:
        """Iterate, from the calling loop, an async iterator that lives on the engine loop.

        `open_stream` runs on the engine loop; its errors (before or during the
        stream) re-raise here. At most `window` items wait between the two loops.
        Closing or cancelling the consumer cancels the producer.
        """
        consumer = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        put = queue.put_nowait
        credits = _Credits(window)
        batch = max(1, window // 2)

        async def produce() -> None:
            try:
                async for item in await open_stream():
                    await credits.take()
                    consumer.call_soon_threadsafe(put, item)
            except BaseException as exc:
                consumer.call_soon_threadsafe(put, exc if isinstance(exc, Exception) else asyncio.CancelledError())
                return
            consumer.call_soon_threadsafe(put, _END)

        future = asyncio.run_coroutine_threadsafe(produce(), self.loop)
        taken = 0
        try:
            while True:
                item = await queue.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                taken += 1
                if taken >= batch:
                    self.loop.call_soon_threadsafe(credits.give, taken)
                    taken = 0
                yield item
        finally:
            future.cancel()

    def stop(self) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
