"""The one in-process app of the tests: the real FastAPI app over in-process backends.

`build_api` is the app every transport serves (direct ingress and Serve's
ingress deployment alike); here it runs in the test's own event loop, with no
server, no Ray and no engine process. Its backends are `OpenAIServing` on the
simulated engine (`simulated_app`) or any `ModelBackend` a test writes
(`InProcessApp(backends)`). Clients: the official `openai` SDK and httpx over
httpx's ASGI transport (which buffers whole responses), or Starlette's
`TestClient` for synchronous tests. The fixtures in tests/conftest.py build on
this.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any

import httpx
from fastapi.testclient import TestClient
from openai import AsyncOpenAI

from serving.api.app import build_api
from serving.api.backend import ModelBackend, ModelRegistry
from serving.api.openai_serving import OpenAIServing
from serving.config import AuthConfig, LimitsConfig, LoraConfig
from serving.engine.adapters import AdapterCatalog
from serving.engine.simulator import SimulatedEngine
from serving.observability.metrics import Metrics

MODEL = "sim-model"
CREATED = 1700000000
# A simulated engine with no prefill cost and 0.5 ms per token: fast tests, streams still in steps.
FAST = {"ttft_base_s": 0.0, "prefill_s_per_token": 0.0, "decode_s_per_token": 0.0005}


class InProcessApp:
    """`build_api` over `backends`, with clients that talk to it in-process."""

    def __init__(
        self,
        backends: Sequence[ModelBackend],
        *,
        auth: AuthConfig | None = None,
        limits: LimitsConfig | None = None,
        metrics: Metrics | None = None,
        api_key: str = "unused",
        engine: SimulatedEngine | None = None,
        serving: OpenAIServing | None = None,
        tasks: dict[str, str] | None = None,
        adapters: dict[str, AdapterCatalog] | None = None,
    ) -> None:
        # Open unless a test asks for keys (build_api itself defaults to keys from SERVING_API_KEYS).
        auth = auth if auth is not None else AuthConfig(mode="open")
        registry = ModelRegistry(list(backends), created=CREATED, tasks=tasks, adapters=adapters)
        self.app = build_api(registry, auth, limits, metrics=metrics)
        self.engine, self.serving = engine, serving
        self.http = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://test", timeout=30)
        self.client = AsyncOpenAI(base_url="http://test/v1", api_key=api_key, http_client=self.http, max_retries=0)

    @contextlib.contextmanager
    def test_client(self) -> Iterator[TestClient]:
        """A synchronous client; unhandled exceptions show as the 500 the client gets, not re-raised."""
        with TestClient(self.app, raise_server_exceptions=False) as client:
            yield client

    async def stats(self) -> dict[str, float]:
        assert self.engine is not None, "stats are the simulated engine's"
        return await self.engine.stats()

    async def running(self) -> float:
        return (await self.stats())["running"]

    async def aclose(self) -> None:
        await self.http.aclose()


def simulated_engine(
    engine_args: dict[str, Any] | None = None, adapters: AdapterCatalog | None = None
) -> SimulatedEngine:
    return SimulatedEngine.from_engine_args({**FAST, **(engine_args or {})}, adapters=adapters)


async def simulated_app(
    engine_args: dict[str, Any] | None = None,
    *,
    model: str = MODEL,
    max_in_flight: int | None = None,
    auth: AuthConfig | None = None,
    limits: LimitsConfig | None = None,
    metrics: Metrics | None = None,
    api_key: str = "unused",
    lora: LoraConfig | None = None,
    max_running: int | None = None,
) -> InProcessApp:
    """The API on one simulated model, as a replica serves it (the limits applied to the model too);
    with `lora`, its adapters too; with `max_running`, its fair queue (serving/api/fair_queue.py)."""
    catalog = AdapterCatalog(model, lora) if lora is not None else None
    engine = simulated_engine(engine_args, catalog)
    info = await engine.start()
    limits = limits or LimitsConfig()
    serving = OpenAIServing(
        engine,
        model,
        info.max_model_len,
        max_in_flight=max_in_flight,
        timeout_s=limits.request_timeout_s,
        metrics=metrics,
        limits=limits,
        max_token_chars=info.max_token_chars,
        tool_parser=info.tool_parser,
        max_running=max_running,
    )
    return InProcessApp(
        [serving],
        auth=auth,
        limits=limits,
        metrics=metrics,
        api_key=api_key,
        engine=engine,
        serving=serving,
        adapters={model: catalog} if catalog is not None else None,
    )


async def seconds_until(predicate: Callable[[], Awaitable[bool]], timeout_s: float) -> float | None:
    """How long until `await predicate()` is true, polled every 20 ms; None if not within `timeout_s`."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if await predicate():
            return time.monotonic() - t0
        await asyncio.sleep(0.02)
    return None
