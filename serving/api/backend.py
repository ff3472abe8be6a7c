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

    @abc.abstractmethod
    async def chat(self, req: ChatCompletionRequest) -> dict[str, Any]: ...

    @abc.abstractmethod
    async def chat_stream(self, req: ChatCompletionRequest) -> AsyncIterator[bytes]:
        """Return an iterator of SSE bytes whose first item has already been produced."""

    @abc.abstractmethod
    async def completions(self, req: CompletionRequest) -> dict[str, Any]: ...

    @abc.abstractmethod
    async def completions_stream(self, req: CompletionRequest) -> AsyncIterator[bytes]: ...

    @abc.abstractmethod
    async def ready(self) -> bool: ...


class LocalBackend(ModelBackend):
    def __init__(self, serving: OpenAIServing) -> None:
        self.serving = serving
        self.model_id = serving.model_id

    async def chat(self, req):
        return await self.serving.chat(req)

    async def chat_stream(self, req):
        return await self.serving.chat_stream(req)

    async def completions(self, req):
        return await self.serving.completions(req)

    async def completions_stream(self, req):
        return await self.serving.completions_stream(req)

    async def ready(self) -> bool:
        try:
            await self.serving.engine.check_health()
            return True
        except Exception:
            return False


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
