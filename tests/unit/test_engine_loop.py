"""`EngineLoop.stream`: items cross from the engine loop's thread in order, errors re-raise, and the producer waits for its consumer.

Regression: before the window a consumer that stopped pulling let the producer
run its whole answer ahead into an unbounded queue (20k chunks measured).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from serving.deployments.direct.engine_loop import STREAM_WINDOW, EngineLoop


@pytest.fixture
def engine_loop():
    loop = EngineLoop("test-engine-loop")
    yield loop
    loop.stop()


def counting_source(n: int, produced: list[int]):
    async def open_stream() -> AsyncIterator[int]:
        async def gen() -> AsyncIterator[int]:
            for i in range(n):
                produced.append(i)
                yield i
                if i % 100 == 0:
                    await asyncio.sleep(0)

        return gen()

    return open_stream


async def test_items_arrive_in_order_and_complete(engine_loop):
    produced: list[int] = []
    got = [i async for i in engine_loop.stream(counting_source(5000, produced))]
    assert got == list(range(5000))


async def test_a_paused_consumer_stops_the_producer(engine_loop):
    produced: list[int] = []
    stream = engine_loop.stream(counting_source(20_000, produced))
    assert await stream.__anext__() == 0
    await asyncio.sleep(0.5)  # the consumer pauses; the producer must not run on
    ahead = len(produced) - 1
    assert ahead <= STREAM_WINDOW + 1, f"the producer ran {ahead} items ahead of a paused consumer"
    # and it resumes when the consumer does
    rest = [i async for i in stream]
    assert rest == list(range(1, 20_000))


async def test_a_small_window_still_delivers_everything(engine_loop):
    produced: list[int] = []
    got = [i async for i in engine_loop.stream(counting_source(1000, produced), window=1)]
    assert got == list(range(1000))


async def test_errors_re_raise_in_the_consumer(engine_loop):
    async def open_stream() -> AsyncIterator[int]:
        async def gen() -> AsyncIterator[int]:
            yield 1
            raise ValueError("boom")

        return gen()

    got = []
    with pytest.raises(ValueError, match="boom"):
        async for i in engine_loop.stream(open_stream):
            got.append(i)
    assert got == [1]


async def test_closing_the_consumer_cancels_the_producer(engine_loop):
    cancelled = asyncio.Event()
    consumer_loop = asyncio.get_running_loop()

    async def open_stream() -> AsyncIterator[int]:
        async def gen() -> AsyncIterator[int]:
            try:
                yield 1
                await asyncio.sleep(60)
                yield 2
            except asyncio.CancelledError:
                consumer_loop.call_soon_threadsafe(cancelled.set)
                raise

        return gen()

    stream = engine_loop.stream(open_stream)
    assert await stream.__anext__() == 1
    await stream.aclose()
    await asyncio.wait_for(cancelled.wait(), timeout=5)
