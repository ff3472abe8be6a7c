"""The engine contract: everything above it is engine-agnostic.

An engine turns one `EngineRequest` into a stream of `EngineOutput`s:

* `generate()` is an async generator. It validates and tokenizes the prompt
  *before* its first yield, so prompt errors (`PromptTooLongError`, other
  `InvalidRequestError`s) surface when the caller pulls the first item and the
  HTTP layer can still answer 4xx instead of a 200 stream.
* Each yielded `EngineOutput` carries *deltas*: the new text and token count of
  every choice that advanced since the previous yield (one engine step, or
  several merged when the consumer was slower than the engine). A choice's last
  delta has `finish_reason` set; the stream ends after every choice finished.
* Cancellation: cancelling the consuming task or closing the generator aborts
  the request inside the engine (frees its KV cache) before it returns.
* Failures after the first yield raise `EngineError`/`EngineUnavailableError`.
* Prompt-cache hits: `EngineOutput.cached_tokens` is how many of the prompt's
  tokens the engine found in its prefix cache (not computed again; 0: none).
  An engine that knows it sets it on every output from the first on (it is
  known once the request is scheduled, before its first token), the same
  value each time; None: the engine does not say, and chat and completions
  usage leave the count out rather than invent a 0. Responses report it as
  OpenAI's `usage.prompt_tokens_details.cached_tokens`, where platform engineers read a
  request's cache affinity: it counts only what was reused (with vLLM's
  prefix caching, whole blocks; the last prompt token is always computed).
* Tools: a chat request's `tools` (OpenAI function definitions) are rendered
  by the model's chat template, and its messages may carry `tool_calls` (with
  `arguments` as JSON data) and `tool` results. With `parse_tool_calls`, the
  engine finds the model's own tool-call syntax in its output (a parser chosen
  per model): a choice's `text` is then only its content, and its calls come as
  `ToolCallDelta`s (a call's first delta has its id and name, later ones add
  pieces of its arguments' JSON). Without it, text is text, whatever it holds.

LoRA: a request's `adapter` names one of the base model's adapters
(serving/engine/adapters.py); the engine loads it on first use, before the
first yield, so an unknown adapter (`ModelNotFoundError`, 404) or one that
cannot load (`InvalidAdapterError`, 400) is refused like a bad prompt, and the
engine serves on. `adapters()` names those loaded now.

Embeddings: an engine whose `EngineInfo.task` is `embed` (vLLM's pooling
runner) answers `embed()` instead of `generate()`: every input of one
`EmbedRequest` (texts or token ids) validated and tokenized first (an
`InvalidRequestError` naming `input`, `context_length_exceeded` for an input
longer than the context), then one vector per input, in order, all at once.
A generating engine refuses `embed()`, an embedding one `generate()`.

Tracing: a request's `trace_headers` (W3C `traceparent`, `tracestate`) name
the span its engine work belongs to; with tracing on, the engine's own spans
(its queue, prefill and decode; vLLM's `llm_request`) are its children. None:
the request is not traced, and the engine makes no span for it.

`check_health()` raises when the engine cannot serve; `stats()` returns the
engine's own counters for metrics and tests. `tokenize()` gives the token ids
`generate()` would see for the same request's prompt (a chat templated, with
its tools), and `detokenize()` their text: vLLM's /tokenize and /detokenize.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable

from serving.errors import InputTooLongError, InvalidRequestError, too_many_input_tokens


@dataclass(slots=True)
class GenerationParams:
    max_tokens: int | None = None  # None: whatever the context leaves
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int | None = None
    n: int = 1
    stop: list[str] | None = None
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: int | None = None  # number of top alternatives; None: no logprobs
    ignore_eos: bool = False
    min_tokens: int = 0
    json_schema: dict[str, Any] | None = None
    json_object: bool = False


@dataclass(slots=True)
class ToolCallDelta:
    index: int  # the call's position among its choice's calls
    id: str | None = None  # set on a call's first delta, with its name
    name: str | None = None
    arguments: str = ""  # the next piece of the arguments' JSON


@dataclass(slots=True)
class EngineRequest:
    request_id: str
    params: GenerationParams
    prompt: str | None = None  # completions
    prompt_token_ids: list[int] | None = None  # completions with a tokenized prompt
    messages: list[dict[str, Any]] | None = None  # chat: rendered by the model's template
    tools: list[dict[str, Any]] | None = None  # chat: OpenAI tool definitions, for the template
    parse_tool_calls: bool = False  # chat: find the model's tool calls in its output (see above)
    adapter: str | None = None  # a LoRA adapter's name (models[].lora); None: the base model
    trace_headers: dict[str, str] | None = None  # W3C trace context of the request's span (see above)


@dataclass(slots=True)
class EmbedRequest:
    request_id: str
    inputs: list[str | list[int]]  # texts, or token ids
    dimensions: int | None = None  # the leading dimensions to keep (Matryoshka models); None: all
    max_total_tokens: int | None = None  # over all inputs, checked after tokenizing: more is an InvalidRequestError


def embedding_inputs(
    request: EmbedRequest, tokenize: Callable[[int, str], list[Any]], vocab_size: int, max_model_len: int
) -> list[list[Any]]:
    """Each input's tokens, checked as the contract says, for any engine: `tokenize(index, text)` is the
    engine's; token ids are checked against `vocab_size` (after their length, a cheap bound)."""
    out = []
    for i, item in enumerate(request.inputs):
        if isinstance(item, str):
            tokens = tokenize(i, item)
        else:
            if len(item) > max_model_len:
                raise InputTooLongError(i, len(item), max_model_len)
            if any(t < 0 or t >= vocab_size for t in item):
                raise InvalidRequestError(f"input {i} has token ids outside [0, {vocab_size})", param="input")
            tokens = list(item)
        if not tokens:
            raise InvalidRequestError(f"input {i} is empty", param="input")
        if len(tokens) > max_model_len:
            raise InputTooLongError(i, len(tokens), max_model_len)
        out.append(tokens)
    total = sum(len(t) for t in out)
    if request.max_total_tokens is not None and total > request.max_total_tokens:
        raise too_many_input_tokens(total, request.max_total_tokens)
    return out


@dataclass(slots=True)
class EmbedOutput:
    embeddings: list[list[float]]  # one per input, in the inputs' order
    prompt_tokens: int  # over all inputs


@dataclass(slots=True)
class TokenLogprob:
    token: str
    logprob: float
    top: list[tuple[str, float]] = field(default_factory=list)


@dataclass(slots=True)
class ChoiceDelta:
    index: int
    text: str
    num_tokens: int
    finish_reason: str | None = None  # "stop" | "length" | None while running
    logprobs: list[TokenLogprob] | None = None
    tool_calls: list[ToolCallDelta] | None = None  # only with `parse_tool_calls`


@dataclass(slots=True)
class EngineOutput:
    prompt_tokens: int
    choices: list[ChoiceDelta]
    queue_wait_s: float | None = None  # on the last output, where the engine measures it
    cached_tokens: int | None = None  # prompt tokens found in the prefix cache (see above); None: not known


@dataclass(slots=True)
class EngineInfo:
    max_model_len: int
    # The longest token of the vocabulary, in characters: prompt characters / this is a
    # lower bound on its tokens, so an over-long prompt is refused without tokenizing it.
    max_token_chars: int | None = None
    # The tool-call parser the engine applies with `parse_tool_calls` (None: it has none,
    # and `tool_choice: auto` is answered as text).
    tool_parser: str | None = None
    task: str = "generate"  # "generate", or "embed": the model answers `embed()` (vLLM's pooling runner)
    embedding_size: int | None = None  # an embedding model's vector length


class Engine(abc.ABC):
    """One model's engine in one replica. See the module docstring for the streaming rules."""

    @abc.abstractmethod
    async def start(self) -> EngineInfo: ...

    @abc.abstractmethod
    def generate(self, request: EngineRequest) -> AsyncIterator[EngineOutput]: ...

    @abc.abstractmethod
    async def check_health(self) -> None: ...

    async def tokenize(self, request: EngineRequest, add_special_tokens: bool = True) -> list[int]:
        """The prompt's token ids as `generate` sees them; `add_special_tokens` for a plain prompt (BOS)."""
        raise NotImplementedError

    async def detokenize(self, token_ids: list[int]) -> str:
        """The text of `token_ids` (an `InvalidRequestError` for an id outside the vocabulary)."""
        raise NotImplementedError

    async def embed(self, request: EmbedRequest) -> EmbedOutput:
        """One vector per input (an embedding model's; see the module docstring)."""
        raise InvalidRequestError("This model does not serve embeddings.", param="model", code="model_not_embedding")

    async def stats(self) -> dict[str, float]:
        """Counters for metrics and tests. Keys, where the engine has them: running,
        waiting, unfinished_requests, kv_cache_usage, prefix_cache_queries,
        prefix_cache_hits, prompt_tokens, generation_tokens; with adapters,
        lora_loaded, lora_loads, lora_hits, lora_evictions, lora_failures."""
        return {}

    def adapters(self) -> list[str]:
        """The LoRA adapters loaded now, least recently used first."""
        return []

    @abc.abstractmethod
    async def shutdown(self) -> None: ...
