"""POST /v1/chat/completions."""

from fastapi import APIRouter, Request
from fastapi.responses import Response

from serving.api.dependencies import AdmittedCaller
from serving.api.pipeline import run_generation
from serving.api.protocol import ChatCompletionRequest
from serving.api.routes import json_body_schema

router = APIRouter()


@router.post("/v1/chat/completions", openapi_extra=json_body_schema(ChatCompletionRequest))
async def create_chat_completion(request: Request, caller: AdmittedCaller) -> Response:
    return await run_generation(request, caller, ChatCompletionRequest, lambda b, req, rid: b.chat(req, rid))
