from fastapi import APIRouter, Request

from serving.api.protocol import ChatCompletionRequest
from serving.api.routes._common import generate

router = APIRouter()


@router.post(
    "/v1/chat/completions",
    openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": ChatCompletionRequest.model_json_schema(ref_template="#/components/schemas/{model}")}}}},
)
async def create_chat_completion(request: Request):
    return await generate(request, ChatCompletionRequest, "chat")
