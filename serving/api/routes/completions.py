"""POST /v1/completions."""

from fastapi import APIRouter, Request
from fastapi.responses import Response

from serving.api.dependencies import AdmittedCaller
from serving.api.pipeline import run_generation
from serving.api.protocol import CompletionRequest
from serving.api.routes import json_body_schema

router = APIRouter()


@router.post("/v1/completions", openapi_extra=json_body_schema(CompletionRequest))
async def create_completion(request: Request, caller: AdmittedCaller) -> Response:
    return await run_generation(request, caller, CompletionRequest, lambda b, req, rid: b.completions(req, rid))
