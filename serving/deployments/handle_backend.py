"""`HandleBackend`: the `ModelBackend` interface over a Ray Serve handle to a model's deployment.

Used by the proxy path's ingress and by a replica's direct ingress for the
other models of its app. Every call is a streaming handle call to the
LLM-server method of the same name (`LLMServer.chat`, `LLMServer.completions`):
a streaming request yields SSE bytes, a non-streaming one yields its one body.

A stream whose replica goes away mid-way (Serve kills a stopping replica at the
end of its graceful timeout while the handle call still runs; a crash) ends with
an SSE error event (503, code `replica_unavailable`) and `[DONE]`, as the direct path's
streams do, instead of a body cut without either: the client knows to retry.

The process relaying streams stops too (the ingress replica on a drained node,
a direct ingress relaying another model): `RELAYS.drain` lets the streams it
relays run for the drain time, then ends each at its next chunk with an SSE
error event (503 `server_shutting_down`) and `[DONE]`, and cancels its handle
call (serving/api/relay.py, shared with the streams forwarded over HTTP).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, NoReturn

from serving.api.backend import Generation
from serving.api.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    EmbeddingRequest,
    TokenizeRequest,
)
from serving.api.relay import RELAYS, RelayDrain, ended_cleanly
from serving.api.streaming import EncodedBody, first_then_rest
from serving.errors import EngineUnavailableError, OverloadedError, unwrap

logger = logging.getLogger(__name__)


def _reraise(exc: BaseException) -> NoReturn:
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


class HandleBackend:
    def __init__(
        self,
        model_id: str,
        deployment_name: str,
        app_name: str | None = None,
        handle: Any = None,
        relays: RelayDrain | None = None,
    ) -> None:
        self.model_id = model_id
        self._relays = relays if relays is not None else RELAYS
        self._deployment_name = deployment_name
        self._app_name = app_name
        self._handle = handle
        self._context_length: int | None = None

    @property
    def handle(self) -> Any:
        if self._handle is None:
            from ray import serve

            self._handle = serve.get_deployment_handle(self._deployment_name, self._app_name)
        return self._handle

    async def _open(self, gen: Any, stream: bool) -> Generation:
        try:
            if stream:
                # a disconnect cancels it in the replica
                return ended_cleanly(await first_then_rest(gen, on_close=gen.cancel), self.model_id, self._relays)
            body: dict[str, Any] | EncodedBody = await gen.__anext__()
        except StopAsyncIteration:
            raise EngineUnavailableError("the model's replica ended the stream before any output") from None
        except Exception as exc:
            _reraise(exc)
        return body

    async def chat(self, req: ChatCompletionRequest, request_id: str) -> Generation:
        req._raw = None  # the parsed request crosses the handle; its body bytes need not go twice
        return await self._open(self.handle.options(stream=True).chat.remote(req, request_id), req.stream)

    async def completions(self, req: CompletionRequest, request_id: str) -> Generation:
        req._raw = None
        return await self._open(self.handle.options(stream=True).completions.remote(req, request_id), req.stream)

    async def embeddings(self, req: EmbeddingRequest, request_id: str) -> Generation:
        req._raw = None
        return await self._open(self.handle.options(stream=True).embeddings.remote(req, request_id), False)

    async def tokenize(self, req: TokenizeRequest) -> dict[str, Any]:
        return await self._unary("tokenize", req)

    async def detokenize(self, req: DetokenizeRequest) -> dict[str, Any]:
        return await self._unary("detokenize", req)

    async def _unary(self, method: str, req: Any) -> dict[str, Any]:
        try:
            result: dict[str, Any] = await getattr(self.handle, method).remote(req)
        except Exception as exc:
            _reraise(exc)
        return result

    async def stats(self) -> dict[str, float]:
        try:
            result: dict[str, float] = await asyncio.wait_for(self.handle.engine_stats.remote(), timeout=5)
            return result
        except Exception:
            return {}

    async def context_length(self) -> int | None:
        """Asked of the model's deployment once, then kept (a model's context does not change while it serves)."""
        if self._context_length is None:
            try:
                self._context_length = int(await asyncio.wait_for(self.handle.context_length.remote(), timeout=5))
            except Exception:
                return None
        return self._context_length

    async def ready(self) -> bool:
        try:
            return bool(await asyncio.wait_for(self.handle.ready.remote(), timeout=5))
        except Exception:
            return False
