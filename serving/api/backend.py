"""The one interface between the HTTP routes and a model, and the registry of models.

A `ModelBackend` answers for one model, with one method per endpoint; whether
the answer streams is decided by the request (`req.stream`), as in Ray Serve
LLM's `LLMServer`. There is one implementation per transport:

* `serving.api.openai_serving.OpenAIServing`: the engine in this process;
* `serving.deployments.handle_backend.HandleBackend`: a Ray Serve handle to the
  model's deployment (the proxy path, or another model's replica).

The routes see only this interface, so the same FastAPI app runs in the ingress
deployment, in an LLM-server replica, and in tests with the simulator.
"""

from __future__ import annotations

from typing import Any, AsyncIterator, Protocol, Sequence, Union

from serving.api.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    EmbeddingRequest,
    TokenizeRequest,
)
from serving.api.streaming import EncodedBody
from serving.config import ModelConfig, adapter_name
from serving.engine.adapters import AdapterCatalog
from serving.errors import ModelNotFoundError

# A whole response body (as data, or already encoded as JSON in pieces when big: with
# logprobs), or SSE bytes whose first chunk has already been produced.
Generation = Union[dict[str, Any], EncodedBody, AsyncIterator[bytes]]


class ModelBackend(Protocol):
    model_id: str

    # `request_id` becomes the engine's request id and the response's id.

    async def chat(self, req: ChatCompletionRequest, request_id: str) -> Generation: ...

    async def completions(self, req: CompletionRequest, request_id: str) -> Generation: ...

    async def embeddings(self, req: EmbeddingRequest, request_id: str) -> Generation:
        """POST /v1/embeddings' answer: a whole body (an embedding model's; others refuse with a 400)."""
        ...

    async def tokenize(self, req: TokenizeRequest) -> dict[str, Any]:
        """POST /tokenize's answer: `count`, `max_model_len`, `tokens`, `token_strs`."""
        ...

    async def detokenize(self, req: DetokenizeRequest) -> dict[str, Any]:
        """POST /detokenize's answer: `prompt`."""
        ...

    async def ready(self) -> bool:
        """True when the model's engine can serve."""
        ...

    async def context_length(self) -> int | None:
        """The model's context in tokens (None if it cannot be learned now): what an omitted max_tokens may use."""
        ...

    async def stats(self) -> dict[str, float]:
        """The engine's counters (one replica's, when reached through a handle)."""
        ...


def served_here(backend: ModelBackend) -> ModelBackend | None:
    """What serves a request in this process: for a backend that places requests on the model's
    replicas (serving/routing/forward.py), its local engine (None if the model has none here);
    any other backend serves what it is given."""
    if getattr(backend, "places_requests", False):
        local: ModelBackend | None = getattr(backend, "local", None)
        return local
    return backend


class ModelRegistry:
    """Model id -> backend, in the order the config lists the models; a LoRA adapter of a base model
    (`<base id>:<name>`, models[].lora) -> its base model's backend, which serves it."""

    def __init__(
        self,
        backends: Sequence[ModelBackend],
        created: int,
        tasks: dict[str, str] | None = None,
        adapters: dict[str, AdapterCatalog] | None = None,
    ) -> None:
        self._backends = {b.model_id: b for b in backends}
        self.created = created
        self._tasks = tasks or {}  # model id -> "generate" | "embed" (models[].task)
        self._adapters = adapters or {}  # base model id -> its adapters

    @classmethod
    def for_models(cls, backends: Sequence[ModelBackend], created: int, models: Sequence[ModelConfig]) -> ModelRegistry:
        """The registry of an app's configured models (their tasks and adapters)."""
        return cls(
            backends,
            created,
            tasks={m.id: m.task for m in models},
            adapters={m.id: AdapterCatalog(m.id, m.lora) for m in models if m.lora is not None},
        )

    def parent(self, model: str) -> str | None:
        """The base model of adapter id `model`, if it may be one (the engine says whether its store holds it)."""
        for base, catalog in self._adapters.items():
            name = adapter_name(base, model)
            if name is not None and catalog.may_serve(name):
                return base
        return None

    def get(self, model: str) -> ModelBackend:
        backend = self._backends.get(model)
        if backend is None:
            base = self.parent(model)
            backend = self._backends.get(base) if base is not None else None
            if backend is None:
                raise ModelNotFoundError(model)
        return backend

    def ids(self) -> list[str]:
        """The models, each base followed by the adapters it lists (its static ones and its store's)."""
        out = []
        for model_id in self._backends:
            out.append(model_id)
            catalog = self._adapters.get(model_id)
            if catalog is not None:
                out += [catalog.model_id(name) for name in catalog.listed()]
        return out

    def card(self, model: str) -> dict[str, Any]:
        parent = None
        if model not in self._backends:
            parent = self.parent(model)
            name = adapter_name(parent, model) if parent is not None else None
            if parent is None or name is None or not self._adapters[parent].exists(name):
                raise ModelNotFoundError(model)  # unknown, or a well-formed name its store does not hold
        return {
            "id": model,
            "object": "model",
            "created": self.created,
            "owned_by": "serving",
            # which endpoint serves it: chat/completions or embeddings
            "task": self._tasks.get(parent or model, "generate"),
            "parent": parent,  # an adapter's base model (vLLM's cards say the same); null for a base model
        }

    async def longest_context(self) -> int | None:
        """The largest context of the models, in tokens; None while one of them cannot say."""
        lengths = [await b.context_length() for b in self._backends.values()]
        known = [n for n in lengths if n is not None]
        return max(known) if known and len(known) == len(lengths) else None

    async def ready(self) -> dict[str, bool]:
        return {model_id: await b.ready() for model_id, b in self._backends.items()}

    async def stats(self) -> dict[str, dict[str, float]]:
        return {model_id: await b.stats() for model_id, b in self._backends.items()}
