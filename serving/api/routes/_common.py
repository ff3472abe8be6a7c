"""What every generation route does before it reaches a backend.

Order matters and is cheap-first: request id, API key (401), rate limits (429),
body size (413), JSON and schema validation (400), model lookup (404). Nothing
here runs per token.
"""

from __future__ import annotations

import re
import uuid
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ValidationError

from serving.api.errors import APIError, InvalidRequestError, unwrap
from serving.api.security import PayloadTooLargeError
from serving.observability.logging import access_log
from serving.observability.metrics import get_metrics

M = TypeVar("M", bound=BaseModel)

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
REQUEST_ID_HEADER = "X-Request-Id"
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def request_id_of(request: Request) -> tuple[str, str]:
    """(the id to return to the client, the engine's request id).

    A valid client id is kept; the engine id adds a short suffix to it so that
    a client reusing an id cannot collide with a request still in flight.
    """
    given = request.headers.get(REQUEST_ID_HEADER)
    if given and _VALID_REQUEST_ID.fullmatch(given):
        rid = given
        engine_id = f"{given}-{uuid.uuid4().hex[:8]}"
    else:
        rid = engine_id = uuid.uuid4().hex
    request.state.request_id = rid
    return rid, engine_id


def authorize(request: Request) -> str:
    """The caller's identity from its API key, or a 401."""
    return request.app.state.authenticator.identify(request.headers.get("authorization"))


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


def parse_json_model(raw: bytes, content_type: str, model: type[M]) -> M:
    if content_type and "json" not in content_type.split(";")[0].strip().lower():
        raise InvalidRequestError(
            f"Content-Type must be application/json, got '{content_type}'", status_code=415
        )
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequestError("The request body is not valid UTF-8.")
    try:
        # Strict JSON parsing: "5" is not an integer and "true" not a boolean (as OpenAI),
        # and the Rust parser refuses absurd nesting and numbers instead of recursing.
        return model.model_validate_json(raw, strict=True)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        if err["type"] == "json_invalid":
            raise InvalidRequestError(f"The request body is not valid JSON: {err.get('ctx', {}).get('error', err['msg'])}.")
        if err["type"] == "model_type" and not err["loc"]:
            raise InvalidRequestError("The request body must be a JSON object.")
        # Drop pydantic's union-branch names (messages.0.content.str -> messages.0.content).
        loc = [str(p) for p in err["loc"] if p not in _UNION_BRANCHES and not str(p).startswith(("list[", "function-"))]
        param = ".".join(loc) or None
        if err["type"] == "extra_forbidden":
            raise InvalidRequestError(f"Unrecognized request argument supplied: {param}", param=param, code="unknown_parameter")
        msg = err["msg"].removeprefix("Value error, ")
        code = "missing_required_parameter" if err["type"] == "missing" else "invalid_value"
        raise InvalidRequestError(f"Invalid value for '{param}': {msg}" if param else msg, param=param, code=code)
    except RecursionError:
        raise InvalidRequestError("The request body is nested too deeply.")


_UNION_BRANCHES = {"str", "int", "float", "bool", "list", "dict", "none"}


def estimated_tokens(req: Any) -> int:
    """What a request may cost, charged up front against tokens-per-minute (as OpenAI does)."""
    if hasattr(req, "messages"):
        prompt_chars = sum(len(m.text()) for m in req.messages)
    else:
        prompt_chars = len(req.prompt) if isinstance(req.prompt, (str, list)) else 0
    return prompt_chars // 4 + (req.requested_max_tokens or 256) * req.n


async def generate(request: Request, model_cls: type[M], kind: str):
    """The body of /v1/chat/completions and /v1/completions (kind: 'chat' or 'completions')."""
    state = request.app.state
    rid, engine_id = request_id_of(request)
    route = request.url.path
    model = "-"
    try:
        caller = authorize(request)
        state.limiter.admit(caller)
        raw = await read_body(request, state.limits.max_body_bytes)
        req = parse_json_model(raw, request.headers.get("content-type", ""), model_cls)
        backend = state.registry.get(req.model)
        model = backend.model_id  # only known ids become metric labels
        state.limiter.charge_tokens(caller, estimated_tokens(req))
        headers = {REQUEST_ID_HEADER: rid}
        if req.stream:
            stream = await getattr(backend, f"{kind}_stream")(req, engine_id)
            response = StreamingResponse(stream, media_type="text/event-stream", headers={**SSE_HEADERS, **headers})
        else:
            response = JSONResponse(await getattr(backend, kind)(req, engine_id), headers=headers)
    except Exception as exc:
        err = unwrap(exc)
        status = err.status_code if isinstance(err, APIError) else 500
        get_metrics().request_done(model, route, status, err)
        access_log("rejected" if status < 500 else "failed", request_id=rid, model=model, route=route,
                   status=status, error=type(err).__name__)
        raise
    get_metrics().request_done(model, route, 200)
    return response
