"""OpenAI semantics on top of the engine contract: requests in, responses and SSE out.

`OpenAIServing` runs where the engine runs. It turns a validated protocol request
into an `EngineRequest`, and the engine's delta stream into either one response
dict or SSE bytes. Streams are framed here, once, so whatever carries them
further (the HTTP server in the same process, or a Ray handle) moves opaque bytes.

With tracing on, a request gets two spans here, children of the span it came
with (`req._trace`, set where it entered, or this task's current one): its
wait for a place in the fair queue (`fair_queue.wait`) and its generation
(`generate`), whose W3C headers the engine request carries, so the engine's
own spans (vLLM's `llm_request`, the engine's queue, prefill and decode)
join the trace.
"""

from __future__ import annotations

import asyncio
import base64
import struct
import threading
import time
import uuid
from contextvars import ContextVar
from typing import Any, AsyncIterator, Callable

from serving.api.backend import Generation
from serving.api.cost import (
    SCHEMA_PARAM,
    check_cost,
    check_schema,
    estimated_input_tokens,
    request_schema,
    validate_schema,
)
from serving.api.fair_queue import ANONYMOUS, FairQueue, Flow, Ticket
from serving.api.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    EmbeddingRequest,
    TokenizeRequest,
)
from serving.api.streaming import DONE, PIECE_BYTES, EncodedBody, closing, drain, first_then_rest, sse
from serving.api.streaming import encode_json as _encode
from serving.api.tools import (
    CONSTRAINED,
    CallsCollected,
    ToolCallStream,
    check_tools,
    constrained_schema,
    engine_messages,
    engine_tools,
    function_call_json,
    legacy_param,
    template_tools,
    tool_call_json,
    tool_schemas,
)
from serving.config import LimitsConfig, adapter_name
from serving.engine.base import EmbedRequest, Engine, EngineOutput, EngineRequest, GenerationParams, TokenLogprob
from serving.errors import (
    APIError,
    EngineError,
    InvalidRequestError,
    OverloadedError,
    RequestTimeoutError,
    ShuttingDownError,
    unwrap,
)
from serving.observability import tracing
from serving.observability.logging import access_log
from serving.observability.metrics import GenerationDone, Metrics, NullMetrics

# A generation's wait for its place in the engine (`OpenAIServing._admit`), in milliseconds with one decimal
# (0.0: at once), for the response header: set in the request's task when the place is granted, read when
# the response is made. A stream's response is made after its first chunk, so after admission too.
ADMISSION_HEADER = "x-serving-admission-ms"
_admission_ms: ContextVar[str | None] = ContextVar("admission_ms", default=None)


def set_admission_ms(value: str) -> None:
    """The header's value for the request of this task (or a peer's header, relayed where the request entered)."""
    _admission_ms.set(value)


def take_admission_ms() -> str | None:
    """The header's value of the request admitted last in this task (None: none was), cleared as it is read."""
    found = _admission_ms.get()
    if found is not None:
        _admission_ms.set(None)
    return found


def generation_params(req: ChatCompletionRequest | CompletionRequest) -> GenerationParams:
    if isinstance(req, ChatCompletionRequest):
        logprobs = (req.top_logprobs or 0) if req.logprobs else None
        fmt = req.response_format
        json_schema = fmt.json_schema.schema_ if fmt and fmt.type == "json_schema" and fmt.json_schema else None
        json_object = bool(fmt and fmt.type == "json_object")
        if req.tools and req.tool_mode in CONSTRAINED:  # the call(s) it must make (serving/api/tools.py)
            json_schema, json_object = constrained_schema(req), False
    else:
        logprobs, json_schema, json_object = req.logprobs, None, False
    return GenerationParams(
        max_tokens=req.requested_max_tokens,
        temperature=1.0 if req.temperature is None else req.temperature,
        top_p=1.0 if req.top_p is None else req.top_p,
        top_k=req.top_k,
        n=req.n,
        stop=req.stop_sequences,
        seed=req.seed,
        presence_penalty=req.presence_penalty or 0.0,
        frequency_penalty=req.frequency_penalty or 0.0,
        logprobs=logprobs,
        ignore_eos=req.ignore_eos,
        min_tokens=req.min_tokens,
        json_schema=json_schema,
        json_object=json_object,
    )


def _cost(request: EngineRequest) -> float:
    """A request's tokens as estimated on arrival (its fair-queue cost, corrected by its usage when it ends)."""
    chars = len(request.prompt or "") + sum(len(str(m.get("content") or "")) for m in request.messages or ())
    prompt = len(request.prompt_token_ids) if request.prompt_token_ids else chars // 4
    return prompt + (request.params.max_tokens or 256) * request.params.n


def _usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int | None = None) -> dict[str, Any]:
    """OpenAI's usage object; `prompt_tokens_details.cached_tokens` (the prompt's prefix-cache hits) whenever the
    engine states them (serving/engine/base.py), always (vLLM's server needs --enable-prompt-tokens-details),
    and left out, not 0, when it does not."""
    usage: dict[str, Any] = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    if cached_tokens is not None:
        usage["prompt_tokens_details"] = {"cached_tokens": cached_tokens}
    return usage


def _chat_logprobs(items: list[TokenLogprob]) -> dict[str, Any]:
    return {
        "content": [
            {
                "token": t.token,
                "logprob": t.logprob,
                "bytes": list(t.token.encode("utf-8", "replace")),
                "top_logprobs": [
                    {"token": tok, "logprob": lp, "bytes": list(tok.encode("utf-8", "replace"))} for tok, lp in t.top
                ],
            }
            for t in items
        ]
    }


def _completion_logprobs(items: list[TokenLogprob], offset: int) -> dict[str, Any]:
    offsets = []
    for t in items:
        offsets.append(offset)
        offset += len(t.token)
    return {
        "tokens": [t.token for t in items],
        "token_logprobs": [t.logprob for t in items],
        "top_logprobs": [dict(t.top) for t in items],
        "text_offset": offsets,
    }


class _ArrayPieces:
    """A JSON array built element by element into `PIECE_BYTES` pieces of bytes."""

    __slots__ = ("pieces", "current")

    def __init__(self) -> None:
        self.pieces: list[bytes] = []
        self.current = bytearray(b"[")

    def extend(self, elements: bytes) -> None:
        """`elements`: one or more encoded elements, comma-separated (an encoded list without its brackets)."""
        if len(self.current) > 1 or self.pieces:
            self.current += b","
        self.current += elements
        if len(self.current) >= PIECE_BYTES:
            self.pieces.append(bytes(self.current))
            self.current = bytearray()

    def close(self) -> list[bytes]:
        return [*self.pieces, bytes(self.current) + b"]"]


class LogprobsParts:
    """One choice's logprobs for a whole (non-streaming) body, encoded step by step into pieces.

    A body with logprobs holds n x tokens x (top_logprobs + 1) entries. Kept as
    objects, 198k of them made the cyclic GC's passes (and the final build)
    stall every stream of the replica for up to 1 s; encoded step by step into
    bytes (which the GC does not track), the body is its pieces, never joined
    into one object here (see `EncodedBody`).
    """

    __slots__ = ("chat", "arrays", "offset")

    KEYS = (b"tokens", b"token_logprobs", b"top_logprobs", b"text_offset")  # completions' four arrays

    def __init__(self, chat: bool) -> None:
        self.chat = chat
        self.arrays = [_ArrayPieces()] if chat else [_ArrayPieces() for _ in self.KEYS]
        self.offset = 0  # completions: text offset of the next token

    def add(self, items: list[TokenLogprob]) -> None:
        if not items:
            return
        if self.chat:
            self.arrays[0].extend(_encode(_chat_logprobs(items)["content"])[1:-1])
            return
        block = _completion_logprobs(items, self.offset)
        self.offset += sum(len(t.token) for t in items)
        for array, key in zip(self.arrays, ("tokens", "token_logprobs", "top_logprobs", "text_offset"), strict=True):
            array.extend(_encode(block[key])[1:-1])

    def pieces(self) -> list[bytes]:
        """The encoded logprobs object, in pieces."""
        if self.chat:
            return [b'{"content":', *self.arrays[0].close(), b"}"]
        out: list[bytes] = []
        for i, (key, array) in enumerate(zip(self.KEYS, self.arrays, strict=True)):
            out.append((b"{" if i == 0 else b",") + b'"' + key + b'":')
            out.extend(array.close())
        out.append(b"}")
        return out


def encoded_body(head: dict[str, Any], choices: list[dict[str, Any]], logprobs: list[LogprobsParts],
                 finish: list[str | None], usage: dict[str, Any]) -> EncodedBody:  # fmt: skip
    """head + choices (each with its logprobs pieces, then its finish_reason) + usage, as an `EncodedBody`."""
    parts = [_encode(head)[:-1] + b',"choices":[']
    for i, choice in enumerate(choices):
        parts.append((b"," if i else b"") + _encode(choice)[:-1] + b',"logprobs":')
        parts.extend(logprobs[i].pieces())
        parts.append(b',"finish_reason":' + _encode(finish[i]) + b"}")
    parts.append(b'],"usage":' + _encode(usage) + b"}")
    return EncodedBody(parts, usage["total_tokens"])


# A whole generation: texts, finish reasons and logprobs per choice, prompt and completion tokens,
# each choice's tool calls when the request has tools, and the prompt's cached tokens (None: not stated).
Collected = tuple[
    list[str], list[str | None], list[LogprobsParts] | None, int, int, list[CallsCollected] | None, int | None
]


def _validate_schemas(schemas: list[tuple[dict[str, Any], str]]) -> None:
    for schema, param in schemas:
        validate_schema(schema, param)


class _Puller:
    """The task pulling one request's engine outputs now, and why it was interrupted (if it was)."""

    __slots__ = ("task", "error")

    def __init__(self, task: asyncio.Task[Any] | None) -> None:
        self.task = task
        self.error: APIError | None = None

    def interrupt(self, error: APIError) -> bool:
        if self.error is not None or self.task is None or self.task.done():
            return False
        self.error = error
        self.task.cancel()
        return True


class InFlight:
    """A model's requests in flight in this process: now, and their mean over the time since it was last asked.

    Request routing reports the mean (serving/routing/scheduler.py): a request
    of a small model lasts tens of milliseconds, a report is up to 250 ms old,
    and a sample taken at report time says little about the 250 ms before it.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.now = 0
        self._lock = threading.Lock()  # requests end on the engine loop, the reporter asks from Serve's
        self._clock = clock
        self._changed = self._from = clock()
        self._area = 0.0

    def add(self, delta: int) -> None:
        with self._lock:
            t = self._clock()
            self._area += self.now * (t - self._changed)
            self._changed = t
            self.now += delta

    def mean(self) -> float:
        """The mean since the last call (the count now if no time passed), and start a new period."""
        with self._lock:
            t = self._clock()
            area = self._area + self.now * (t - self._changed)
            span = t - self._from
            self._area, self._changed, self._from = 0.0, t, t
            return area / span if span > 0 else float(self.now)


class OpenAIServing:
    """One model's OpenAI endpoints in this process, with its admission gate and timeouts.

    `max_in_flight` bounds the requests this process holds for the model (running
    in the engine plus waiting in its queue); one more gets 503 + Retry-After at
    once instead of waiting. A request past `timeout_s` is cancelled in the engine
    and answered 504 (or, mid-stream, with an error event). `drain` lets the
    requests in progress finish for a while, then ends the rest the same way,
    with a 503 `server_shutting_down`.
    """

    def __init__(
        self,
        engine: Engine,
        model_id: str,
        max_model_len: int,
        max_in_flight: int | None = None,
        timeout_s: float = 600.0,
        log_prompts: bool = False,
        metrics: Metrics | None = None,
        limits: LimitsConfig | None = None,
        max_token_chars: int | None = None,
        tool_parser: str | None = None,
        max_running: int | None = None,
    ) -> None:
        """`max_running`: requests in the engine at once; more wait in a `FairQueue`, up to `max_in_flight` in
        all (None: no queue here, the engine queues them in arrival order)."""
        self.engine = engine
        self.tool_parser = tool_parser  # EngineInfo.tool_parser: who finds calls for `tool_choice: auto`
        self.model_id = model_id
        self.max_model_len = max_model_len
        self.max_in_flight = max_in_flight
        self.timeout_s = timeout_s
        self.log_prompts = log_prompts
        self.load = InFlight()
        self.metrics: Metrics = metrics or NullMetrics()
        self.limits = limits or LimitsConfig()
        self.max_token_chars = max_token_chars
        self._active: set[_Puller] = set()
        self._draining = False
        self.queue: FairQueue | None = None
        if max_running is not None:
            queued = None if max_in_flight is None else max(1, max_in_flight - max_running)
            self.queue = FairQueue(max_running, queued, model_id)

    def _record(
        self,
        flow: Flow | None,
        request: EngineRequest,
        status: str,
        start: float,
        first: float | None,
        last: float | None,
        queue_wait: float | None,
        prompt_tokens: int,
        completion_tokens: int,
        admission_wait: float = 0.0,
        cached_tokens: int | None = None,
    ) -> None:
        """One metrics observation set and one log line per request (never per token). `queue_wait`: the engine's
        own queue (its scheduler); `admission_wait`: ours, the fair queue's (`_admit`), before the engine;
        `cached_tokens`: the prompt's tokens found in the engine's prefix cache (None: the engine does not say)."""
        end = time.perf_counter()
        ttft = first - start if first is not None else None
        itl = (
            (last - first) / (completion_tokens - 1)
            if first is not None and last is not None and completion_tokens > 1
            else None
        )
        if status == "ok":
            self.metrics.generation_done(
                GenerationDone(
                    self.model_id,
                    ttft,
                    itl,
                    end - start,
                    queue_wait,
                    prompt_tokens,
                    completion_tokens,
                    flow.tenant if flow is not None else ANONYMOUS.tenant,
                    cached_tokens,
                )
            )
        fields: dict[str, Any] = {
            "request_id": request.request_id,
            "tenant": flow.tenant if flow is not None else None,
            "model": self.model_id,
            "adapter": request.adapter,
            "status": status,
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "cached_tokens": cached_tokens,
            "ttft_ms": None if ttft is None else round(ttft * 1000, 2),
            "itl_ms": None if itl is None else round(itl * 1000, 3),
            "e2e_ms": round((end - start) * 1000, 2),
            "queue_wait_ms": None if queue_wait is None else round(queue_wait * 1000, 2),
            "admission_wait_ms": round(admission_wait * 1000, 2),
        }
        if request.trace_headers is not None:
            fields["trace_id"] = tracing.sampled_trace_id(request.trace_headers)  # the line's trace, in a viewer
        if self.log_prompts:
            fields["prompt"] = request.prompt if request.messages is None else request.messages
        access_log("generation", **fields)

    @property
    def in_flight(self) -> int:
        return self.load.now

    def adapter_of(self, model: str) -> str | None:
        """The LoRA adapter a request's `model` names (`<base id>:<name>`, the registry checked it), or None."""
        return adapter_name(self.model_id, model)

    def served_as(self, model: str) -> str:
        """The `model` a response states: the adapter's id for an adapter, else this model's."""
        return model if self.adapter_of(model) is not None else self.model_id

    async def _admit(
        self, flow: Flow | None, cost: float, trace: dict[str, str] | None = None
    ) -> tuple[Ticket | None, float]:
        """`_place`, within a `fair_queue.wait` span (tracing on) under the W3C headers `trace` (None: the
        current span)."""
        if not tracing.active():
            return await self._place(flow, cost)
        who = flow or ANONYMOUS
        attributes = {"serving.model": self.model_id, "serving.tenant": who.tenant, "serving.priority": who.priority}
        span = tracing.start("fair_queue.wait", trace, attributes=attributes)
        try:
            ticket, waited = await self._place(flow, cost)
        except BaseException as exc:
            tracing.end(span, exc)
            raise
        tracing.end(span, attributes={"serving.queued": waited > 0, "serving.queue_wait_ms": round(waited * 1000, 2)})
        return ticket, waited

    async def _place(self, flow: Flow | None, cost: float) -> tuple[Ticket | None, float]:
        """A place in the engine: at once while it has room, else after waiting in the fair queue (by class,
        then by tenant: serving/api/fair_queue.py), within the request's time. Returns the ticket (None without
        a queue) and the seconds waited for it (0.0 at once), which the response header states (`ADMISSION_HEADER`).

        Every request that asks the queue for a place is observed once in `Metrics.admission_waited`, by
        tenant: admitted (its wait), shed at arrival (0), or refused while waiting (displaced, timed out,
        drained, its client gone: the time it waited)."""
        arrived = time.perf_counter()
        if self._draining:
            raise ShuttingDownError()
        queue = self.queue
        if queue is None:
            if self.max_in_flight is not None and self.in_flight >= self.max_in_flight:
                raise OverloadedError(
                    f"The model '{self.model_id}' is at capacity ({self.max_in_flight} requests in flight). "
                    "Retry shortly.",
                    headers={"Retry-After": "1"},
                )
            self.load.add(1)
            set_admission_ms("0.0")
            return None, 0.0
        flow = flow or ANONYMOUS
        try:
            ticket = queue.arrive(flow, cost)
        except OverloadedError:
            self.metrics.admission_waited(self.model_id, flow.tenant, 0.0)
            raise
        self.load.add(1)  # waiting here counts as load: the routing sees it
        waited = 0.0  # placed at once
        if not ticket.running:
            try:
                # asyncio.timeout, not wait_for: wait_for may swallow a cancellation (the client left) that
                # comes as the ticket is dispatched, and the request would then run for nobody.
                async with asyncio.timeout(self.timeout_s):
                    await queue.wait(ticket)
            except BaseException as exc:
                self.load.add(-1)
                self.metrics.admission_waited(self.model_id, flow.tenant, time.perf_counter() - arrived)
                if isinstance(exc, TimeoutError):
                    raise RequestTimeoutError(
                        f"The request waited {self.timeout_s:g}s for the model '{self.model_id}' and was cancelled."
                    ) from None
                raise
            waited = time.perf_counter() - arrived
        self.metrics.admission_waited(self.model_id, flow.tenant, waited)
        set_admission_ms(f"{waited * 1000:.1f}")
        return ticket, waited

    def _time_left(self, arrived: float) -> float:
        """What is left of the request's time after its wait in the queue (the time counts from arrival)."""
        return max(0.001, self.timeout_s - (time.monotonic() - arrived))

    def _generate_span(self, request: EngineRequest) -> Any:
        """The request's `generate` span (tracing on), whose headers the engine request then carries."""
        if not tracing.active():
            return None
        p = request.params
        attributes = {
            "gen_ai.operation.name": "chat" if request.messages is not None else "text_completion",
            "gen_ai.request.model": self.model_id,
            "gen_ai.request.id": request.request_id,
            "gen_ai.request.max_tokens": p.max_tokens,
            "gen_ai.request.temperature": p.temperature,
            "gen_ai.request.n": p.n,
            "serving.adapter": request.adapter,
        }
        span = tracing.start("generate", request.trace_headers, attributes=attributes)
        request.trace_headers = tracing.headers_of(span)
        return span

    @staticmethod
    def _end_generate_span(
        span: Any,
        status: str,
        failure: BaseException | str | None,
        start: float,
        first: float | None,
        prompt_tokens: int,
        completion_tokens: int,
    ) -> None:
        if status == "cancelled":
            failure = None  # the client left: not the server's failure
        elif status != "ok" and failure is None:
            failure = status  # timed out, drained, or failed
        tracing.end(
            span,
            failure,
            {
                "serving.status": status,
                "gen_ai.usage.input_tokens": prompt_tokens,
                "gen_ai.usage.output_tokens": completion_tokens,
                "serving.ttft_ms": None if first is None else round((first - start) * 1000, 2),
            },
        )

    def _release(self, ticket: Ticket | None, used: int) -> None:
        self.load.add(-1)
        if ticket is not None and self.queue is not None:
            self.queue.leave(ticket, used)

    # -- the backend interface (serving.api.backend.ModelBackend) -------------------

    async def chat(self, req: ChatCompletionRequest, request_id: str | None = None) -> Generation:
        check_cost(req, self.limits, self.max_model_len, self.max_token_chars)
        schema = request_schema(req)
        schemas = [(schema, SCHEMA_PARAM)] if schema else []
        if req.tools is not None or req.tool_choice is not None or req.function_call is not None:
            check_tools(req, self.limits)
            schemas += [
                (schema, (legacy_param(p) or p) if req.legacy_functions else p) for schema, p in tool_schemas(req.tools)
            ]
            if req.tool_mode == "auto" and self.tool_parser is None:
                raise InvalidRequestError(
                    f"The model '{self.model_id}' has no tool-call parser configured (models[].tool_parser), so it "
                    "cannot choose whether to call a tool: send tool_choice 'required' or a named function, or "
                    "'none'.",
                    param="tool_choice",
                    code="tool_choice_unsupported",
                )
        if schemas:  # bounded by check_cost; Python, so the loop keeps going
            await asyncio.to_thread(_validate_schemas, schemas)
        request_id = request_id or uuid.uuid4().hex
        return await (self._chat_stream(req, request_id) if req.stream else self._chat(req, request_id))

    async def completions(self, req: CompletionRequest, request_id: str | None = None) -> Generation:
        check_cost(req, self.limits, self.max_model_len, self.max_token_chars)
        request_id = request_id or uuid.uuid4().hex
        return await (self._completions_stream(req, request_id) if req.stream else self._completions(req, request_id))

    async def embeddings(self, req: EmbeddingRequest, request_id: str | None = None) -> dict[str, Any]:
        """One vector per input, as OpenAI answers (floats, or base64 of little-endian float32)."""
        arrived = time.monotonic()
        ticket, admission_wait = await self._admit(req._flow, estimated_input_tokens(req), req._trace)
        start = time.monotonic()
        status = "error"
        out = None
        request = EmbedRequest(
            request_id or f"embd-{uuid.uuid4().hex}",
            req.inputs(),
            req.dimensions,
            max_total_tokens=self.limits.max_embedding_tokens,
        )
        try:
            out = await asyncio.wait_for(self.engine.embed(request), self._time_left(arrived))
            status = "ok"
            # Latency (end to end) and tokens, as a generation's: no first token, nothing completed.
            tenant = req._flow.tenant if req._flow is not None else ANONYMOUS.tenant
            done = GenerationDone(
                self.model_id, None, None, time.monotonic() - start, None, out.prompt_tokens, 0, tenant
            )
            self.metrics.generation_done(done)
        except TimeoutError:
            status = "timeout"
            raise RequestTimeoutError(f"The request did not finish within {self.timeout_s:g} s.") from None
        except asyncio.CancelledError:
            status = "cancelled"
            raise
        finally:
            self._release(ticket, out.prompt_tokens if out is not None else 0)
            access_log(
                "embeddings",
                tenant=req._flow.tenant if req._flow is not None else None,
                model=self.model_id,
                request_id=request.request_id,
                inputs=len(request.inputs),
                status=status,
                duration_ms=round(1000 * (time.monotonic() - start), 1),
                admission_wait_ms=round(admission_wait * 1000, 2),
            )
        as_text = req.encoding_format == "base64"
        data = [
            {
                "object": "embedding",
                "index": i,
                "embedding": base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode() if as_text else v,
            }
            for i, v in enumerate(out.embeddings)
        ]
        tokens = out.prompt_tokens
        return {
            "object": "list",
            "data": data,
            "model": self.model_id,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    async def tokenize(self, req: TokenizeRequest) -> dict[str, Any]:
        request = EngineRequest(request_id="tokenize", params=GenerationParams())
        if req.messages is not None:
            request.messages = engine_messages(req.messages)
            request.tools = template_tools(req.tools) if req.tools else None
            for schema, param in tool_schemas(req.tools):
                check_schema(schema, self.limits, param=param)
        else:
            request.prompt = req.prompt
        try:
            ids = await self.engine.tokenize(request, add_special_tokens=req.add_special_tokens is not False)
        except NotImplementedError:
            raise InvalidRequestError(f"The model '{self.model_id}' cannot tokenize.", status_code=501) from None
        return {"count": len(ids), "max_model_len": self.max_model_len, "tokens": ids, "token_strs": None}

    async def detokenize(self, req: DetokenizeRequest) -> dict[str, Any]:
        try:
            return {"prompt": await self.engine.detokenize(req.tokens)}
        except NotImplementedError:
            raise InvalidRequestError(f"The model '{self.model_id}' cannot detokenize.", status_code=501) from None

    async def ready(self) -> bool:
        try:
            await self.engine.check_health()
            return True
        except Exception:
            return False

    async def stats(self) -> dict[str, float]:
        return {**await self.engine.stats(), "in_flight": float(self.in_flight)}

    async def context_length(self) -> int | None:
        return self.max_model_len

    async def drain(self, timeout_s: float) -> int:
        """Let the requests in progress finish for up to `timeout_s`; then end the rest and admit no more.

        A stream under way ends with an SSE error event (503 `server_shutting_down`)
        and `[DONE]`, so the client knows it was cut and may retry elsewhere; a
        request not yet answered gets the 503 itself. Returns how many were ended.
        Requests still arriving are served unless the drain time ran out with
        requests still in progress: the HTTP server has stopped accepting and
        closes idle connections, but one already sent on a kept-alive connection
        must not fail while the engine still runs (measured: refusing from the
        start of the drain, and refusing once an idle drain had ended at once,
        each failed a short request of tests/e2e/test_faults.py's redeploy).
        """

        def end() -> int:
            self._draining = True
            waiting = self.queue.reject_waiting(ShuttingDownError()) if self.queue is not None else 0
            return waiting + sum(p.interrupt(ShuttingDownError()) for p in list(self._active))

        return await drain(lambda: self.in_flight, end, timeout_s)

    # -- chat -------------------------------------------------------------------

    def _chat_engine_request(self, req: ChatCompletionRequest, request_id: str) -> EngineRequest:
        # Without tools, engine_tools is None and the mode is "none": a plain chat request.
        return EngineRequest(
            request_id=request_id,
            params=generation_params(req),
            messages=engine_messages(req.messages),
            tools=engine_tools(req),
            parse_tool_calls=req.tool_mode == "auto",
            adapter=self.adapter_of(req.model),
            trace_headers=req._trace,
        )

    async def _chat(self, req: ChatCompletionRequest, request_id: str) -> dict[str, Any] | EncodedBody:
        tools = ToolCallStream(req) if req.tools else None
        texts, finish, logprobs, prompt_tokens, completion_tokens, calls, cached = await self._collect(
            self._chat_engine_request(req, request_id), req.n, tools, req._flow
        )
        head = {"id": f"chatcmpl-{request_id}", "object": "chat.completion", "created": int(time.time()),
                "model": self.served_as(req.model)}  # fmt: skip
        messages: list[dict[str, Any]] = [{"role": "assistant", "content": texts[i]} for i in range(req.n)]
        if calls is not None:
            for message, made in zip(messages, calls, strict=True):
                if made.result():
                    message["content"] = message["content"] or None
                    if req.legacy_functions:  # one call, in the legacy shape
                        message["function_call"] = made.result()[0]["function"]
                    else:
                        message["tool_calls"] = made.result()
        choices = [{"index": i, "message": messages[i]} for i in range(req.n)]
        usage = _usage(prompt_tokens, completion_tokens, cached)
        if logprobs is not None:  # encoded already, in pieces
            return encoded_body(head, choices, logprobs, finish, usage)
        for choice, reason in zip(choices, finish, strict=True):
            choice.update(logprobs=None, finish_reason=reason)
        return {**head, "choices": choices, "usage": usage}

    async def _chat_stream(self, req: ChatCompletionRequest, request_id: str) -> AsyncIterator[bytes]:
        engine_request = self._chat_engine_request(req, request_id)
        # The fixed head of every chunk, encoded once: per-step work is only the choices.
        head = _encode(
            {
                "id": f"chatcmpl-{request_id}",
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": self.served_as(req.model),
            }
        )[:-1]
        tail = b',"usage":null}\n\n' if req.include_usage else b"}\n\n"
        want_logprobs = req.logprobs

        def render(out: EngineOutput, started: set[int]) -> bytes:
            choices = []
            for c in out.choices:
                delta: dict[str, Any] = {"content": c.text}
                if c.index not in started:
                    started.add(c.index)
                    delta = {"role": "assistant", "content": c.text}
                choices.append(
                    {
                        "index": c.index,
                        "delta": delta,
                        "logprobs": _chat_logprobs(c.logprobs) if want_logprobs and c.logprobs else None,
                        "finish_reason": c.finish_reason,
                    }
                )
            return b"data: " + head + b',"choices":' + _encode(choices) + tail

        if req.tools:
            tools = ToolCallStream(req)
            legacy = req.legacy_functions

            def render_tools(out: EngineOutput, started: set[int]) -> bytes:
                """As `render`, with each choice's content and tool-call deltas apart; a step with
                nothing to send (a call not complete yet) sends nothing."""
                choices = []
                for c in out.choices:
                    text, calls = tools.split(c)
                    reason = tools.finish_reason(c)
                    lp = _chat_logprobs(c.logprobs) if want_logprobs and c.logprobs else None
                    if not text and not calls and reason is None and lp is None and c.index in started:
                        continue
                    delta: dict[str, Any] = {} if c.index in started else {"role": "assistant"}
                    started.add(c.index)
                    if calls:
                        if text:
                            delta["content"] = text
                        if legacy:  # one call: the first
                            first = [d for d in calls if d.index == 0]
                            if first:
                                delta["function_call"] = function_call_json(first[0])
                        else:
                            delta["tool_calls"] = [tool_call_json(d) for d in calls]
                    else:
                        delta["content"] = text
                    choices.append({"index": c.index, "delta": delta, "logprobs": lp, "finish_reason": reason})
                if not choices:
                    return b""
                return b"data: " + head + b',"choices":' + _encode(choices) + tail

            return await first_then_rest(self._stream(engine_request, render_tools, req.usage_event, head, req._flow))
        return await first_then_rest(self._stream(engine_request, render, req.usage_event, head, req._flow))

    # -- completions ------------------------------------------------------------

    def _completion_engine_request(self, req: CompletionRequest, request_id: str) -> EngineRequest:
        params = generation_params(req)
        adapter = self.adapter_of(req.model)
        prompt = req.prompt
        trace = req._trace
        if isinstance(prompt, str):
            return EngineRequest(
                request_id=request_id, params=params, prompt=prompt, adapter=adapter, trace_headers=trace
            )
        first = prompt[0]  # the validator allows one prompt per request
        if isinstance(first, int):
            return EngineRequest(
                request_id=request_id,
                params=params,
                prompt_token_ids=[int(t) for t in prompt],
                adapter=adapter,
                trace_headers=trace,
            )
        return EngineRequest(request_id=request_id, params=params, prompt=first, adapter=adapter, trace_headers=trace)

    async def _completions(self, req: CompletionRequest, request_id: str) -> dict[str, Any] | EncodedBody:
        texts, finish, logprobs, prompt_tokens, completion_tokens, _, cached = await self._collect(
            self._completion_engine_request(req, request_id), req.n, None, req._flow
        )
        head = {"id": f"cmpl-{request_id}", "object": "text_completion", "created": int(time.time()),
                "model": self.served_as(req.model)}  # fmt: skip
        choices = [{"index": i, "text": texts[i]} for i in range(req.n)]
        usage = _usage(prompt_tokens, completion_tokens, cached)
        if logprobs is not None:
            return encoded_body(head, choices, logprobs, finish, usage)
        for choice, reason in zip(choices, finish, strict=True):
            choice.update(logprobs=None, finish_reason=reason)
        return {**head, "choices": choices, "usage": usage}

    async def _completions_stream(self, req: CompletionRequest, request_id: str) -> AsyncIterator[bytes]:
        engine_request = self._completion_engine_request(req, request_id)
        head = _encode(
            {
                "id": f"cmpl-{request_id}",
                "object": "text_completion",
                "created": int(time.time()),
                "model": self.served_as(req.model),
            }
        )[:-1]
        tail = b',"usage":null}\n\n' if req.include_usage else b"}\n\n"
        want_logprobs = req.logprobs is not None
        offsets: dict[int, int] = {}

        def render(out: EngineOutput, started: set[int]) -> bytes:
            choices = []
            for c in out.choices:
                lp = None
                if want_logprobs and c.logprobs:
                    lp = _completion_logprobs(c.logprobs, offsets.get(c.index, 0))
                offsets[c.index] = offsets.get(c.index, 0) + len(c.text)
                choices.append({"index": c.index, "text": c.text, "logprobs": lp, "finish_reason": c.finish_reason})
            return b"data: " + head + b',"choices":' + _encode(choices) + tail

        return await first_then_rest(self._stream(engine_request, render, req.usage_event, head, req._flow))

    # -- shared -----------------------------------------------------------------

    async def _collect(
        self, request: EngineRequest, n: int, tools: ToolCallStream | None = None, flow: Flow | None = None
    ) -> Collected:
        arrived = time.monotonic()
        ticket, admission_wait = await self._admit(flow, _cost(request), request.trace_headers)
        puller = _Puller(asyncio.current_task())
        self._active.add(puller)
        start = time.perf_counter()
        timing: dict[str, float | None] = {"first": None, "last": None, "queue_wait": None}
        status, result = "error", None
        span = self._generate_span(request)
        failure: BaseException | None = None
        try:
            result = await asyncio.wait_for(self._collect_outputs(request, n, timing, tools), self._time_left(arrived))
            status = "ok"
            return result
        except TimeoutError:
            status = "timeout"
            raise RequestTimeoutError(f"The request timed out after {self.timeout_s:g}s and was cancelled.") from None
        except asyncio.CancelledError:
            if puller.error is None:
                status = "cancelled"
                raise
            status = puller.error.reason
            if puller.task is not None:
                puller.task.uncancel()
            raise puller.error from None
        except BaseException as exc:
            failure = exc
            raise
        finally:
            self._active.discard(puller)
            prompt_tokens, completion_tokens, cached = (result[3], result[4], result[6]) if result else (0, 0, None)
            if span is not None:
                self._end_generate_span(span, status, failure, start, timing["first"], prompt_tokens, completion_tokens)
            self._release(ticket, prompt_tokens + completion_tokens)
            self._record(
                flow,
                request,
                status,
                start,
                timing["first"],
                timing["last"],
                timing["queue_wait"],
                prompt_tokens,
                completion_tokens,
                admission_wait,
                cached,
            )

    async def _collect_outputs(
        self, request: EngineRequest, n: int, timing: dict[str, float | None], tools: ToolCallStream | None
    ) -> Collected:
        parts: list[list[str]] = [[] for _ in range(n)]
        finish: list[str | None] = [None] * n
        chat = request.messages is not None
        logprobs = [LogprobsParts(chat) for _ in range(n)] if request.params.logprobs is not None else None
        calls = [CallsCollected() for _ in range(n)] if tools is not None else None
        prompt_tokens = completion_tokens = 0
        cached: int | None = None
        async with closing(self.engine.generate(request)) as outputs:
            async for out in outputs:
                now = time.perf_counter()
                if timing["first"] is None:
                    timing["first"] = now
                timing["last"] = now
                if out.queue_wait_s is not None:
                    timing["queue_wait"] = out.queue_wait_s
                prompt_tokens = out.prompt_tokens
                if out.cached_tokens is not None:
                    cached = out.cached_tokens
                for c in out.choices:
                    completion_tokens += c.num_tokens
                    if c.logprobs and logprobs is not None:
                        logprobs[c.index].add(c.logprobs)
                    if tools is not None and calls is not None:
                        text, made = tools.split(c)
                        parts[c.index].append(text)
                        calls[c.index].add(made)
                        if c.finish_reason is not None:
                            finish[c.index] = tools.finish_reason(c)
                        continue
                    parts[c.index].append(c.text)
                    if c.finish_reason is not None:
                        finish[c.index] = c.finish_reason
        texts = ["".join(p) for p in parts]
        return texts, finish, logprobs, prompt_tokens, completion_tokens, calls, cached

    async def _stream(
        self,
        request: EngineRequest,
        render: Callable[[EngineOutput, set[int]], bytes],
        include_usage: bool,
        head: bytes,
        flow: Flow | None = None,
    ) -> AsyncIterator[bytes]:
        arrived = time.monotonic()
        ticket, admission_wait = await self._admit(flow, _cost(request), request.trace_headers)
        span = self._generate_span(request)
        failure: BaseException | None = None
        # The timeout cancels whichever task is pulling this stream at that moment
        # (the first item is pulled by the route, the rest by the response):
        # a timer per request instead of a wait_for per token.
        current = asyncio.current_task
        puller = _Puller(current())
        self._active.add(puller)

        def on_timeout() -> None:
            puller.interrupt(RequestTimeoutError(f"The request timed out after {self.timeout_s:g}s and was cancelled."))

        timer = asyncio.get_running_loop().call_later(self._time_left(arrived), on_timeout)
        started: set[int] = set()
        prompt_tokens = completion_tokens = 0
        cached: int | None = None
        clock = time.perf_counter
        start = clock()
        first = last = queue_wait = None
        status = "error"
        sent = False  # once a chunk is out, errors become SSE events, not HTTP errors
        try:
            # Closed with the stream: a stream closed early aborts its engine request at once.
            async with closing(self.engine.generate(request)) as outputs:
                async for out in outputs:
                    last = clock()
                    if first is None:
                        first = last
                    if out.queue_wait_s is not None:
                        queue_wait = out.queue_wait_s
                    prompt_tokens = out.prompt_tokens
                    if out.cached_tokens is not None:
                        cached = out.cached_tokens
                    for c in out.choices:
                        completion_tokens += c.num_tokens
                    chunk = render(out, started)
                    if not chunk:
                        continue  # nothing to send this step (an empty chunk would end a chunked body)
                    yield chunk
                    sent = True
                    puller.task = current()
            status = "ok"
        except GeneratorExit:
            status = "cancelled"  # closed early by the response (client gone, writer stalled)
            raise
        except asyncio.CancelledError:
            err = puller.error
            if err is None:
                status = "cancelled"
                raise  # a client disconnect: the engine already aborted the request
            status = err.reason  # timed out, or the replica is shutting down
            task = current()
            if task is not None:
                task.uncancel()
            if not sent:
                raise err from None
            yield sse(err.body())
            yield DONE
            return
        except APIError as exc:
            failure = exc
            if not sent:
                raise  # nothing sent yet: the caller answers with an HTTP error
            yield sse(exc.body())
            yield DONE
            return
        except Exception as exc:
            failure = exc
            if not sent:
                raise
            cause = unwrap(exc)
            api_err = cause if isinstance(cause, APIError) else EngineError("the stream failed")
            yield sse(api_err.body())
            yield DONE
            return
        finally:
            timer.cancel()
            self._active.discard(puller)
            if span is not None:
                self._end_generate_span(span, status, failure, start, first, prompt_tokens, completion_tokens)
            self._release(ticket, prompt_tokens + completion_tokens)
            self._record(
                flow,
                request,
                status,
                start,
                first,
                last,
                queue_wait,
                prompt_tokens,
                completion_tokens,
                admission_wait,
                cached,
            )
        if include_usage:
            yield (
                b"data: "
                + head
                + b',"choices":[],"usage":'
                + _encode(_usage(prompt_tokens, completion_tokens, cached))
                + b"}\n\n"
            )
        yield DONE
