"""Where the routes send a request once they know its model.

A `ModelBackend` answers for one model. `LocalBackend` calls the engine in this
process; `serving.deployments.handle_backend.HandleBackend` goes through a Ray
Serve handle to that model's deployment. The routes see only this interface, so
the same FastAPI app runs in the ingress deployment, in an LLM-server replica,
and in tests with the simulator.
"""

from __future__ import annotations

import abc
from typing import Any, AsyncIterator

from serving.api.errors import ModelNotFoundError
from serving.api.openai_serving import OpenAIServing
from serving.api.protocol import ChatCompletionRequest, CompletionRequest


class ModelBackend(abc.ABC):
    model_id: str

    # `request_id` becomes the engine's request id and the response's id.

    @abc.abstractmethod
    async def chat(self, req: ChatCompletionRequest, request_id: str | None = None) -> dict[str, Any]: ...

    @abc.abstractmethod
    async def chat_stream(self, req: ChatCompletionRequest, request_id: str | None = None) -> AsyncIterator[bytes]:
        """Return an iterator of SSE bytes whose first item has already been produced."""

    @abc.abstractmethod
    async def completions(self, req: CompletionRequest, request_id: str | None = None) -> dict[str, Any]: ...

    @abc.abstractmethod
    async def completions_stream(self, req: CompletionRequest, request_id: str | None = None) -> AsyncIterator[bytes]: ...

    @abc.abstractmethod
    async def ready(self) -> bool: ...

    async def stats(self) -> dict[str, float]:
        """The engine's counters (one replica's, when reached through a handle)."""
        return {}


class LocalBackend(ModelBackend):
    def __init__(self, serving: OpenAIServing) -> None:
        self.serving = serving
        self.model_id = serving.model_id

    async def chat(self, req, request_id=None):
        return await self.serving.chat(req, request_id)

    async def chat_stream(self, req, request_id=None):
        return await self.serving.chat_stream(req, request_id)

    async def completions(self, req, request_id=None):
        return await self.serving.completions(req, request_id)

    async def completions_stream(self, req, request_id=None):
        return await self.serving.completions_stream(req, request_id)

    async def ready(self) -> bool:
        try:
            await self.serving.engine.check_health()
            return True
        except Exception:
            return False

    async def stats(self) -> dict[str, float]:
        return {**await self.serving.engine.stats(), "in_flight": float(self.serving.in_flight)}


class ModelRegistry:
    """Model id -> backend, in the order the config lists the models."""

    def __init__(self, backends: list[ModelBackend], created: int) -> None:
        self._backends = {b.model_id: b for b in backends}
        self.created = created

    def get(self, model: str) -> ModelBackend:
        backend = self._backends.get(model)
        if backend is None:
            raise ModelNotFoundError(model)
        return backend

    def ids(self) -> list[str]:
        return list(self._backends)

    def card(self, model: str) -> dict[str, Any]:
        self.get(model)
        return {"id": model, "object": "model", "created": self.created, "owned_by": "serving"}

    async def ready(self) -> dict[str, bool]:
        return {model_id: await b.ready() for model_id, b in self._backends.items()}

    async def stats(self) -> dict[str, dict[str, float]]:
        return {model_id: await b.stats() for model_id, b in self._backends.items()}
