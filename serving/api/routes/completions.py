from fastapi import APIRouter, Request

from serving.api.protocol import CompletionRequest
from serving.api.routes._common import generate

router = APIRouter()


@router.post(
    "/v1/completions",
    openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": CompletionRequest.model_json_schema(ref_template="#/components/schemas/{model}")}}}},
)
async def create_completion(request: Request):
    return await generate(request, CompletionRequest, "completions")
