"""Request parsing shared by the generation routes: JSON body -> protocol model, or a 400."""

from __future__ import annotations

import json
from typing import TypeVar

from fastapi import Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ValidationError

from serving.api.errors import InvalidRequestError

M = TypeVar("M", bound=BaseModel)

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


async def parse_body(request: Request, model: type[M]) -> M:
    content_type = request.headers.get("content-type", "")
    if content_type and "json" not in content_type.split(";")[0]:
        raise InvalidRequestError(
            f"Content-Type must be application/json, got '{content_type}'", status_code=415
        )
    raw = await request.body()
    try:
        data = json.loads(raw)
    except UnicodeDecodeError:
        raise InvalidRequestError("The request body is not valid UTF-8.")
    except json.JSONDecodeError as exc:
        raise InvalidRequestError(f"The request body is not valid JSON: {exc.msg} at position {exc.pos}.")
    if not isinstance(data, dict):
        raise InvalidRequestError("The request body must be a JSON object.")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        param = ".".join(str(p) for p in err["loc"]) or None
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = f"Unrecognized request argument supplied: {param}"
        raise InvalidRequestError(f"Invalid value for '{param}': {msg}" if param and err["type"] != "extra_forbidden" else msg, param=param, code="invalid_value" if err["type"] != "missing" else "missing_required_parameter")


def sse_response(stream) -> StreamingResponse:
    return StreamingResponse(stream, media_type="text/event-stream", headers=SSE_HEADERS)
