"""LLMServer's shutdown (serving/deployments/llm_server.py), without Ray: once, and the engine stops whatever the drain does."""

from __future__ import annotations

import asyncio

import pytest

from serving.config import ModelConfig
from serving.deployments.direct.engine_loop import EngineLoop
from serving.deployments.llm_server import LLMServer


class FakeEngine:
    def __init__(self) -> None:
        self.stopped = 0

    async def shutdown(self) -> None:
        self.stopped += 1


class BrokenHTTP:
    async def stop(self) -> None:
        raise RuntimeError("the listener would not close")


class Server(LLMServer):
    def __del__(self) -> None:  # the garbage collector's call; Serve awaits LLMServer.__del__
        pass


def server_with(engine: FakeEngine, http: object = None) -> LLMServer:
    """An LLMServer as __init__ leaves it, minus the engine's start (no Ray, no vLLM)."""
    server = object.__new__(Server)
    server.cfg = ModelConfig(id="m")
    server._loop = EngineLoop("test-engine-loop")
    server._draining = None
    server._stop_watch = None
    server._http = http
    server.engine = engine
    return server


async def test_a_second_shutdown_returns_at_once():
    """A failed __init__ shuts down and Serve still calls __del__: that call waited forever on the stopped loop."""
    engine = FakeEngine()
    server = server_with(engine)
    await asyncio.wait_for(server._shutdown(), 5)
    await asyncio.wait_for(LLMServer.__del__(server), 1)
    assert engine.stopped == 1


async def test_a_failing_drain_still_stops_the_engine():
    engine = FakeEngine()
    server = server_with(engine, BrokenHTTP())
    with pytest.raises(RuntimeError, match="would not close"):
        await asyncio.wait_for(server._shutdown(), 5)
    assert engine.stopped == 1
