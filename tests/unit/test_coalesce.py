"""The handle path's coalescing: a lone stream goes in items a few ms apart, many streams go in 20 ms windows.

With a fixed 20 ms window, a single stream through Serve's proxy arrived in
20 ms bursts (8 arrival times for 65 events at one stream on the dev stack).
"""

from __future__ import annotations

from typing import AsyncIterator

from serving.deployments.llm_server import COALESCE_MIN_S, COALESCE_WINDOW_S, HandleStreams, coalesce


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def chunks_every(clock: Clock, step_s: float, n: int) -> AsyncIterator[bytes]:
    for i in range(n):
        if i:
            clock.now += step_s
        yield b"%d;" % i


async def collect(stream: AsyncIterator[bytes]) -> list[bytes]:
    return [item async for item in stream]


async def test_one_open_stream_goes_chunk_by_chunk_when_its_tokens_are_slower_than_the_window():
    streams = HandleStreams()
    streams.open = 1
    clock = Clock()
    out = await collect(coalesce(chunks_every(clock, 0.005, 20), streams.window_s, clock))
    assert out == [b"%d;" % i for i in range(20)]


async def test_one_open_stream_of_fast_tokens_goes_in_small_items():
    streams = HandleStreams()
    streams.open = 1
    clock = Clock()
    out = await collect(coalesce(chunks_every(clock, 0.0021, 21), streams.window_s, clock))
    assert out[0] == b"0;" and all(len(o.split(b";")) == 3 for o in out[1:]), out  # two chunks an item, 4.2 ms apart


async def test_many_open_streams_join_the_chunks_of_each_window():
    streams = HandleStreams()
    streams.open = 64
    assert streams.window_s() == COALESCE_WINDOW_S
    clock = Clock()
    out = await collect(coalesce(chunks_every(clock, 0.0021, 31), streams.window_s, clock))
    assert out[0] == b"0;", "the first chunk goes at once"
    assert b"".join(out) == b"".join(b"%d;" % i for i in range(31)), "nothing lost or reordered"
    assert len(out) == 4, out  # 0 | 1..10 (sent at 21 ms) | 11..20 (at 42 ms) | 21..30 (at 63 ms)


async def test_the_window_follows_the_streams_open_at_each_send():
    streams = HandleStreams()
    clock = Clock()
    out: list[bytes] = []
    streams.open = 64
    async for item in coalesce(chunks_every(clock, 0.0021, 40), streams.window_s, clock):
        out.append(item)
        if len(out) == 2:
            streams.open = 1  # the others ended: from the next send on, small items
    assert len(out[1].split(b";")) == 11 and all(len(o.split(b";")) <= 3 for o in out[3:]), out
    assert b"".join(out) == b"".join(b"%d;" % i for i in range(40))


def test_the_window_grows_with_the_open_streams_up_to_its_cap():
    streams = HandleStreams()
    windows = []
    for n in (0, 1, 4, 16, 40, 64, 256):
        streams.open = n
        windows.append(streams.window_s())
    assert windows == sorted(windows) and windows[-1] == COALESCE_WINDOW_S
    assert windows[1] == COALESCE_MIN_S < 0.005, "one stream: a few ms, so a slower token goes at once"
