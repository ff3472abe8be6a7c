"""The LLM-server deployment: one replica owns one engine for one model.

It answers Ray Serve handle calls (the proxy path and cross-model forwarding)
and, in `direct` ingress mode, serves the whole OpenAI API over HTTP itself
(`direct_http.py`). Serve's health check probes the engine, so a dead engine
process gets the replica replaced; `__del__` drains HTTP and stops the engine
processes so nothing is left running.
"""

from __future__ import annotations

import logging
import time
from typing import AsyncIterator

from serving.api.app import build_api
from serving.api.backend import LocalBackend, ModelRegistry
from serving.api.openai_serving import OpenAIServing
from serving.config import IngressConfig, ModelConfig
from serving.deployments.handle_backend import HandleBackend
from serving.engine import make_engine

logger = logging.getLogger(__name__)

# A handle hop costs per item: batch the SSE chunks that pile up within this window.
COALESCE_WINDOW_S = 0.02


async def coalesce(stream: AsyncIterator[bytes], window_s: float = COALESCE_WINDOW_S) -> AsyncIterator[bytes]:
    """Yield the first chunk at once, then join the chunks of each `window_s` window."""
    buf: list[bytes] = []
    deadline = None
    async for chunk in stream:
        now = time.monotonic()
        if deadline is None:
            deadline = now + window_s
            yield chunk
            continue
        buf.append(chunk)
        if now >= deadline:
            yield b"".join(buf)
            buf = []
            deadline = now + window_s
    if buf:
        yield b"".join(buf)


class LLMServer:
    async def __init__(self, model: dict, ingress: dict, peers: dict[str, str], app_name: str | None = None):
        self._http = None
        self.engine = None
        self.cfg = ModelConfig.model_validate(model)
        ingress_cfg = IngressConfig.model_validate(ingress)
        self.engine = make_engine(self.cfg)
        try:
            info = await self.engine.start()
        except BaseException:
            await self.engine.shutdown()
            raise
        self.serving = OpenAIServing(self.engine, self.cfg.id, info.max_model_len)
        if ingress_cfg.mode == "direct":
            from ray import serve

            app_name = app_name or serve.get_replica_context().app_name
            backends = []
            for model_id, deployment_name in peers.items():
                if model_id == self.cfg.id:
                    backends.append(LocalBackend(self.serving))
                else:
                    backends.append(HandleBackend(model_id, deployment_name, app_name))
            api = build_api(ModelRegistry(backends, created=int(time.time())))
            from serving.deployments.direct_http import DirectHTTPServer

            self._http = await DirectHTTPServer.start(
                api, ingress_cfg.host, ingress_cfg.port, self.cfg.deployment.graceful_shutdown_timeout_s
            )

    async def chat(self, req):
        return await self.serving.chat(req)

    async def chat_stream(self, req) -> AsyncIterator[bytes]:
        async for chunk in coalesce(await self.serving.chat_stream(req)):
            yield chunk

    async def completions(self, req):
        return await self.serving.completions(req)

    async def completions_stream(self, req) -> AsyncIterator[bytes]:
        async for chunk in coalesce(await self.serving.completions_stream(req)):
            yield chunk

    async def ready(self) -> bool:
        await self.engine.check_health()
        return True

    async def engine_stats(self) -> dict[str, float]:
        return await self.engine.stats()

    async def check_health(self) -> None:
        await self.engine.check_health()

    async def __del__(self):
        # Also runs after a failed __init__: only stop what was started.
        http = getattr(self, "_http", None)
        if http is not None:
            self._http = None
            await http.stop()
        engine = getattr(self, "engine", None)
        if engine is not None:
            await engine.shutdown()
