"""A model reached through a Ray Serve handle (the proxy path, or another model's replica)."""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator

from serving.api.backend import ModelBackend
from serving.api.errors import EngineUnavailableError, OverloadedError, unwrap


def _reraise(exc: BaseException):
    from ray.serve.exceptions import BackPressureError

    if isinstance(exc, BackPressureError):
        # Serve's max_queued_requests is full: same answer as the direct path's gate.
        raise OverloadedError(
            f"The model is at capacity: {exc}. Retry shortly.", headers={"Retry-After": "1"}
        ) from None
    err = unwrap(exc)
    if err is exc:
        raise exc
    raise err from None


class HandleBackend(ModelBackend):
    def __init__(self, model_id: str, deployment_name: str, app_name: str | None = None, handle=None) -> None:
        self.model_id = model_id
        self._deployment_name = deployment_name
        self._app_name = app_name
        self._handle = handle

    @property
    def handle(self):
        if self._handle is None:
            from ray import serve

            self._handle = serve.get_deployment_handle(self._deployment_name, self._app_name)
        return self._handle

    async def _call(self, method: str, req, request_id) -> dict[str, Any]:
        try:
            return await getattr(self.handle, method).remote(req, request_id)
        except Exception as exc:
            _reraise(exc)

    async def _stream(self, method: str, req, request_id) -> AsyncIterator[bytes]:
        gen = getattr(self.handle.options(stream=True), method).remote(req, request_id)
        try:
            first = await gen.__anext__()
        except StopAsyncIteration:
            raise EngineUnavailableError("the model's replica ended the stream before any output")
        except Exception as exc:
            _reraise(exc)

        async def chained() -> AsyncIterator[bytes]:
            yield first
            try:
                async for chunk in gen:
                    yield chunk
            finally:
                gen.cancel()  # a client disconnect here cancels the request in the replica

        return chained()

    async def chat(self, req, request_id=None):
        return await self._call("chat", req, request_id)

    async def chat_stream(self, req, request_id=None):
        return await self._stream("chat_stream", req, request_id)

    async def completions(self, req, request_id=None):
        return await self._call("completions", req, request_id)

    async def completions_stream(self, req, request_id=None):
        return await self._stream("completions_stream", req, request_id)

    async def stats(self) -> dict[str, float]:
        try:
            return await asyncio.wait_for(self.handle.engine_stats.remote(), timeout=5)
        except Exception:
            return {}

    async def ready(self) -> bool:
        try:
            return bool(await asyncio.wait_for(self.handle.ready.remote(), timeout=5))
        except Exception:
            return False
