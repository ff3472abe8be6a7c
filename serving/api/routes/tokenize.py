"""POST /tokenize and /detokenize: the model's own tokenizer, as vLLM serves them (no /v1: vLLM's paths).

A chat is templated as generation would template it (its tools included), so
`count` is what the request's `usage.prompt_tokens` will be. Same key and
requests-per-minute bucket as generation; nothing generated, so no tokens charged.
"""

from typing import TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import Response

from serving.api.backend import ModelBackend
from serving.api.dependencies import AdmittedCaller
from serving.api.pipeline import max_body_bytes, model_backend, parse_json_model, read_body, until_disconnect
from serving.api.protocol import DetokenizeRequest, TokenizeRequest
from serving.api.routes import json_body_schema
from serving.api.security import Principal
from serving.api.streaming import encode_json

router = APIRouter()


M = TypeVar("M", TokenizeRequest, DetokenizeRequest)


async def _parsed(request: Request, caller: Principal, model: type[M]) -> tuple[M, ModelBackend]:
    raw = await read_body(request, await max_body_bytes(request.app.state))
    req = parse_json_model(raw, request.headers.get("content-type", ""), model)
    return req, model_backend(request, caller, req.model)


@router.post("/tokenize", openapi_extra=json_body_schema(TokenizeRequest))
async def tokenize(request: Request, caller: AdmittedCaller) -> Response:
    req, backend = await _parsed(request, caller, TokenizeRequest)
    return Response(encode_json(await until_disconnect(request, backend.tokenize(req))), media_type="application/json")


@router.post("/detokenize", openapi_extra=json_body_schema(DetokenizeRequest))
async def detokenize(request: Request, caller: AdmittedCaller) -> Response:
    req, backend = await _parsed(request, caller, DetokenizeRequest)
    return Response(
        encode_json(await until_disconnect(request, backend.detokenize(req))), media_type="application/json"
    )
