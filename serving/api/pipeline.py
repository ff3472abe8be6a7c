"""The request pipeline of the generation routes: from an admitted caller to a backend's answer.

Every step, cheap first, in the order a request meets them:

1. request id: `serving.api.middleware.RequestContext` (every route);
2. API key, 401: the `authenticate` dependency (`serving.api.dependencies`): the caller's `Principal`;
3. its requests-per-minute budget (cluster-wide, serving/api/budgets.py), 429: `admitted_caller`;
4. body size, 413, read as it arrives (`read_body`);
5. JSON and schema validation, 400/415 (`parse_json_model`);
6. model lookup, 404 (`ModelRegistry.get`), also for a model the caller's tenant may not use;
7. with a tokens-per-minute or concurrency limit, the request's worst case
   reserved (429/400), settled against its usage when it ends (`Lease`);
   the request carries its caller's flow (tenant, class, weight) to the
   replica's fair queue (serving/api/fair_queue.py);
8. the backend, one method per endpoint, cancelled if the client leaves before
   the answer (`until_disconnect`): a JSON body, or SSE whose first chunk
   is already produced (so errors before it are HTTP errors, not 200 streams).

Nothing here runs per token. Errors raise `serving.errors.APIError`s; the app
factory turns them into OpenAI error bodies and the middleware counts them.
"""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator, Awaitable, Callable, TypeVar

import msgspec
from fastapi import Request
from fastapi.responses import Response
from pydantic import BaseModel, ValidationError
from starlette.datastructures import State

from serving.api.backend import Generation, ModelBackend, served_here
from serving.api.budgets import Lease
from serving.api.cost import estimated_input_tokens, prompt_chars
from serving.api.fair_queue import Flow
from serving.api.forwarded import (
    ENTRY_HEADER,
    REPLICA_HEADER,
    TOTAL_TOKENS_HEADER,
    USAGE_EVENT_HEADER,
    entered_at,
    forwarded,
    placed_on,
)
from serving.api.middleware import engine_request_id, set_model
from serving.api.openai_serving import ADMISSION_HEADER, take_admission_ms
from serving.api.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from serving.api.security import Principal
from serving.api.streaming import (
    SSE_HEADERS,
    ClosingStreamingResponse,
    EncodedBody,
    EncodedBodyResponse,
    aclose,
    encode_json,
)
from serving.errors import (
    ClientDisconnectedError,
    EngineUnavailableError,
    InvalidRequestError,
    ModelNotFoundError,
    PayloadTooLargeError,
)
from serving.observability import tracing

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")
GenerationRequest = TypeVar("GenerationRequest", ChatCompletionRequest, CompletionRequest, EmbeddingRequest)

_UNION_BRANCHES = {"str", "int", "float", "bool", "list", "dict", "none"}


def _union_branch(part: str | int) -> bool:
    """A part of a pydantic error location that names a union's branch, not a field: `str`,
    `list[...]`, `literal['none','auto']`, a model class (`NamedToolChoice`); fields are lowercase."""
    if not isinstance(part, str):
        return False
    return (
        part in _UNION_BRANCHES
        or part.startswith(("list[", "function-", "literal[", "dict["))
        or (part[:1].isupper() and part.isidentifier())
    )


# A body cap that follows the models' context (`limits.max_body_bytes: null`): a fixed
# 1 MB refused long-context prompts the model accepts. 16 bytes a token leaves room
# for ~4 characters a token, JSON escapes and the message structure; a prompt too long
# for the context is still refused cheaply before it is tokenized (serving/api/cost.py).
BODY_BYTES_PER_TOKEN = 16
BODY_OVERHEAD_BYTES = 65_536
MIN_BODY_BYTES = 1_000_000


def body_cap_for_context(context_tokens: int) -> int:
    return max(MIN_BODY_BYTES, context_tokens * BODY_BYTES_PER_TOKEN + BODY_OVERHEAD_BYTES)


async def max_body_bytes(state: State) -> int:
    """The configured cap, or one derived from the longest context of the app's models (learned once)."""
    configured: int | None = state.limits.max_body_bytes
    if configured is not None:
        return configured
    derived: int | None = getattr(state, "derived_max_body_bytes", None)
    if derived is None:
        context = await state.registry.longest_context()
        if context is None:
            return MIN_BODY_BYTES  # a model that cannot say yet (its replica is starting): ask again next time
        derived = state.derived_max_body_bytes = body_cap_for_context(context)
    return derived


async def read_body(request: Request, max_bytes: int) -> bytes:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > max_bytes:
        raise PayloadTooLargeError(f"The request body is larger than {max_bytes} bytes.")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise PayloadTooLargeError(f"The request body is larger than {max_bytes} bytes.")
        chunks.append(chunk)
    return b"".join(chunks)


def _most_telling(errors: list[Any]) -> Any:
    """The error to report of several (a union tries every branch): a wrong `type` tag first (the
    item is of another kind), then the deepest location (the branch that got furthest), then the first."""

    def rank(indexed: tuple[int, Any]) -> tuple[int, int, int]:
        i, err = indexed
        loc = [p for p in err["loc"] if not _union_branch(p)]
        wrong_kind = bool(loc) and loc[-1] == "type" and err["type"] in ("literal_error", "union_tag_invalid")
        return (0 if wrong_kind else 1, -len(loc), i)

    return min(enumerate(errors), key=rank)[1]


def parse_json_model(raw: bytes, content_type: str, model: type[M]) -> M:
    if content_type and "json" not in content_type.split(";")[0].strip().lower():
        raise InvalidRequestError(f"Content-Type must be application/json, got '{content_type}'", status_code=415)
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequestError("The request body is not valid UTF-8.") from None
    try:
        # Strict JSON parsing: "5" is not an integer and "true" not a boolean (as OpenAI),
        # and the Rust parser refuses absurd nesting and numbers instead of recursing.
        return model.model_validate_json(raw, strict=True)
    except ValidationError as exc:
        err = _most_telling(exc.errors(include_url=False))
        if err["type"] == "json_invalid":
            detail = err.get("ctx", {}).get("error", err["msg"])
            raise InvalidRequestError(f"The request body is not valid JSON: {detail}.") from None
        if err["type"] == "model_type" and not err["loc"]:
            raise InvalidRequestError("The request body must be a JSON object.") from None
        # Drop pydantic's union-branch names (messages.0.content.str -> messages.0.content).
        loc = [str(p) for p in err["loc"] if not _union_branch(p)]
        param = ".".join(loc) or None
        if err["type"] == "extra_forbidden":
            raise InvalidRequestError(
                f"Unrecognized request argument supplied: {param}", param=param, code="unknown_parameter"
            ) from None
        msg = err["msg"].removeprefix("Value error, ")
        code = "missing_required_parameter" if err["type"] == "missing" else "invalid_value"
        raise InvalidRequestError(
            f"Invalid value for '{param}': {msg}" if param else msg, param=param, code=code
        ) from None
    except RecursionError:
        raise InvalidRequestError("The request body is nested too deeply.") from None


def worst_case_tokens(
    req: ChatCompletionRequest | CompletionRequest | EmbeddingRequest, context: int | None
) -> tuple[int, int]:
    """(estimated prompt tokens, the most completion tokens the request may generate), for its reservation.

    The prompt is estimated at 4 characters a token (settled against the real
    count when the request ends); token-id prompts are counted. An omitted
    max_tokens may generate the rest of the context, `n` times; with no known
    context (a model behind a handle that did not answer) it counts as the
    prompt's own size again, at least 256.
    """
    if isinstance(req, EmbeddingRequest):  # nothing generated: its inputs only
        return estimated_input_tokens(req), 0
    chars = prompt_chars(req)
    if chars is not None:
        prompt = chars // 4
    elif isinstance(req, CompletionRequest) and isinstance(req.prompt, list):
        prompt = len(req.prompt)
    else:
        prompt = 0
    limit = req.requested_max_tokens
    if limit is None:
        limit = max(1, context - prompt) if context else max(256, prompt)
    return prompt, limit * req.n


def respond(result: Generation) -> Response:
    # One JSON encoder for bodies and stream chunks (msgspec: fast, and a -inf logprob
    # becomes null instead of the error json.dumps raises).
    response: Response
    if isinstance(result, dict):
        response = Response(encode_json(result), media_type="application/json")
    elif isinstance(result, EncodedBody):
        response = EncodedBodyResponse(result)
    else:
        stream: AsyncIterator[bytes] = result
        response = ClosingStreamingResponse(stream, media_type="text/event-stream", headers=SSE_HEADERS)
    replica, entry = placed_on.get(), entered_at.get()
    if replica is not None:
        response.headers[REPLICA_HEADER] = replica
    if entry is not None:
        response.headers[ENTRY_HEADER] = entry
    admission = take_admission_ms()  # the wait in the fair queue of the engine that serves it, if known here
    if admission is not None:
        response.headers[ADMISSION_HEADER] = admission
    return response


def model_backend(request: Request, caller: Principal, model: str) -> ModelBackend:
    """The backend of `model` if the caller may use it; a 404 otherwise, as for a model that does not exist
    (OpenAI's "does not exist or you do not have access to it": a tenant does not learn others' models)."""
    if not caller.may_use(model):
        raise ModelNotFoundError(model)
    backend: ModelBackend = request.app.state.registry.get(model)
    set_model(request, backend.model_id)  # only known ids become metric labels
    return backend


def flow_of(caller: Principal) -> Flow:
    return Flow(caller.owner.budget, caller.tenant, caller.priority, caller.weight)


async def run_generation(
    request: Request,
    caller: Principal,
    request_model: type[GenerationRequest],
    call: Callable[[ModelBackend, GenerationRequest, str], Awaitable[Generation]],
) -> Response:
    """Steps 4-8 above for an admitted `caller`: `call` picks the backend's endpoint method."""
    state = request.app.state
    raw = await read_body(request, await max_body_bytes(state))
    req = parse_json_model(raw, request.headers.get("content-type", ""), request_model)
    req._raw = raw  # what a request placed on another replica is sent as
    backend = model_backend(request, caller, req.model)
    req._flow = flow_of(caller)
    if forwarded(request):
        return await _serve_forwarded(request, req, backend, call)
    return respond(await admitted_generation(request, caller, req, backend, call))


async def admitted_generation(
    request: Request,
    caller: Principal,
    req: GenerationRequest,
    backend: ModelBackend,
    call: Callable[[ModelBackend, GenerationRequest, str], Awaitable[Generation]],
) -> Generation:
    """Steps 7-8 for a parsed request (the generation routes, and /v1/responses for the chat it becomes)."""
    if tracing.active():
        req._trace = tracing.current_headers()  # the request span: the engine's spans join it, wherever it runs
    limits = caller.owner.limits
    if not (limits.tokens_per_minute or limits.max_concurrent):
        return await until_disconnect(request, call(backend, req, engine_request_id(request)))
    prompt, completion = worst_case_tokens(req, await backend.context_length())
    lease = await request.app.state.budgets.reserve(caller.owner, prompt, completion)
    assert lease is not None
    hide_usage = bool(req.stream and not req.include_usage)
    if hide_usage:
        # The usage event settles the lease; the client, which did not ask for it, does not see it.
        req._usage_event = True
    try:
        result = await until_disconnect(request, call(backend, req, engine_request_id(request)))
    except BaseException as exc:
        # A client that left may have cost its whole reservation; a refusal or our failure, nothing.
        lease.settle(None if isinstance(exc, (ClientDisconnectedError, asyncio.CancelledError)) else 0)
        raise
    if isinstance(result, (dict, EncodedBody)):
        lease.settle(_whole_body_tokens(result))
        return result
    return _settled_stream(result, lease, hide_usage)


async def _serve_forwarded(
    request: Request,
    req: GenerationRequest,
    backend: ModelBackend,
    call: Callable[[ModelBackend, GenerationRequest, str], Awaitable[Generation]],
) -> Response:
    """A request another entry point placed here: this replica's engine serves it, uncharged (serving/api/forwarded.py)."""
    here = served_here(backend)
    if here is None:
        raise EngineUnavailableError(
            f"Model '{req.model}' is not served by this replica; retry the request.", code="replica_unavailable"
        )
    if request.headers.get(USAGE_EVENT_HEADER) == "1":
        req._usage_event = True  # the entry point settles its caller's tokens from it
    result = await until_disconnect(request, call(here, req, engine_request_id(request)))
    response = respond(result)
    if isinstance(result, (dict, EncodedBody)):
        tokens = _whole_body_tokens(result)
        response.headers[TOTAL_TOKENS_HEADER] = str(tokens if tokens is not None else 0)
    return response


def _whole_body_tokens(result: dict | EncodedBody) -> int | None:
    """A whole body's usage (what settles the caller's tokens), None if it states none."""
    if isinstance(result, EncodedBody):
        return result.total_tokens
    tokens: int | None = (result.get("usage") or {}).get("total_tokens")
    return tokens


_USAGE_MARK = b',"choices":[],"usage":'  # the last event of a stream that includes usage (openai_serving)


async def _settled_stream(stream: AsyncIterator[bytes], lease: Lease, hide_usage: bool) -> AsyncIterator[bytes]:
    """The stream, whose usage event settles `lease` (and is left out if the client did not ask for it)."""
    used = None
    try:
        async for chunk in stream:
            i = chunk.find(_USAGE_MARK)  # chunks may hold several events (the handle path coalesces them)
            if i >= 0:
                start = chunk.rfind(b"data: ", 0, i)
                end = chunk.index(b"\n\n", i) + 2
                used = msgspec.json.decode(chunk[i + len(_USAGE_MARK) : end - 3])["total_tokens"]
                if hide_usage:
                    chunk = chunk[:start] + chunk[end:]
                    if not chunk:
                        continue
            yield chunk
    finally:
        await aclose(stream)
        lease.settle(used)


async def _disconnected(request: Request) -> None:
    """Returns when the client closes the connection (the body has been read: only that message is left)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """`work`, cancelled as soon as the client leaves: a whole body, or a stream's first chunk.

    Once a stream is under way, the response itself notices a disconnect and
    closes the stream (which aborts the engine request). Before that, nothing
    read from the connection: a non-streaming request generated to its end, and
    a stream waiting for its first token held its engine slot, for nobody.

    `work` runs in the caller's task (a task of its own would cost a trip through
    the event loop each way, which a busy replica's loop makes tens of ms of TTFT);
    a watcher task cancels it when the client leaves.
    """
    current = asyncio.current_task()
    assert current is not None
    left = False

    def on_disconnect(watcher: asyncio.Task[None]) -> None:
        nonlocal left
        if not watcher.cancelled() and watcher.exception() is None:
            left = True
            current.cancel()

    watcher = asyncio.ensure_future(_disconnected(request))
    watcher.add_done_callback(on_disconnect)
    try:
        return await work
    except asyncio.CancelledError:
        if not left:
            raise
        current.uncancel()
        raise ClientDisconnectedError("The client closed the connection; the request was cancelled.") from None
    finally:
        watcher.remove_done_callback(on_disconnect)
        watcher.cancel()
