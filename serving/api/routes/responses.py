"""POST /v1/responses, GET and DELETE /v1/responses/{id}: the Responses API (serving/api/responses/).

A response runs as the chat completion it amounts to, through the same
admission, leases and backend as /v1/chat/completions (`admitted_generation`);
a stored one goes to the app's response store, keyed by the caller.
"""

from typing import Any

import msgspec
from fastapi import APIRouter, Request
from fastapi.responses import Response

from serving.api.dependencies import AdmittedCaller, Caller
from serving.api.pipeline import (
    admitted_generation,
    flow_of,
    max_body_bytes,
    model_backend,
    parse_json_model,
    read_body,
    respond,
)
from serving.api.responses.protocol import ResponsesRequest
from serving.api.responses.serving import ResponseEvents, new_id, now, response_of, responses_param, to_chat
from serving.api.routes import json_body_schema
from serving.api.streaming import EncodedBody, encode_json
from serving.errors import APIError, NotFoundError

router = APIRouter()


def _not_found(response_id: str, param: str | None = None) -> NotFoundError:
    return NotFoundError(
        f"No response with id '{response_id}' (it may have expired, or belong to another API key).",
        param=param,
        code="response_not_found",
    )


@router.post("/v1/responses", openapi_extra=json_body_schema(ResponsesRequest))
async def create_response(request: Request, caller: AdmittedCaller) -> Response:
    state = request.app.state
    raw = await read_body(request, await max_body_bytes(state))
    req = parse_json_model(raw, request.headers.get("content-type", ""), ResponsesRequest)
    backend = model_backend(request, caller, req.model)
    store = state.response_store
    history: list[dict[str, Any]] = []
    if req.previous_response_id is not None:
        previous = await store.get(caller.key, req.previous_response_id)
        if previous is None:
            raise _not_found(req.previous_response_id, "previous_response_id")
        history = previous["conversation"]
    chat, conversation = to_chat(req, history)
    chat._flow = flow_of(caller)
    response_id, created_at = new_id("resp"), now()
    try:
        result = await admitted_generation(request, caller, chat, backend, lambda b, r, rid: b.chat(r, rid))
    except APIError as exc:
        exc.param = responses_param(exc.param)  # named as the client sent it
        raise
    if isinstance(result, (dict, EncodedBody)):
        body = result if isinstance(result, dict) else msgspec.json.decode(result.join())
        response, record = response_of(req, body, response_id, created_at, conversation)
        if req.store:
            await store.put(caller.key, response_id, record)
        return respond(response)

    async def keep(record: dict[str, Any]) -> None:
        await store.put(caller.key, response_id, record)

    events = ResponseEvents(req, response_id, created_at, conversation, on_done=keep if req.store else None)
    return respond(events.stream(result))


@router.get("/v1/responses/{response_id}")
async def get_response(response_id: str, caller: Caller, request: Request) -> Response:
    found = await request.app.state.response_store.get(caller.key, response_id)
    if found is None:
        raise _not_found(response_id)
    return Response(encode_json(found["response"]), media_type="application/json")


@router.delete("/v1/responses/{response_id}")
async def delete_response(response_id: str, caller: Caller, request: Request) -> Response:
    if not await request.app.state.response_store.delete(caller.key, response_id):
        raise _not_found(response_id)
    return Response(
        encode_json({"id": response_id, "object": "response", "deleted": True}), media_type="application/json"
    )
