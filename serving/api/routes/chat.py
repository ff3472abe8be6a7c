from fastapi import APIRouter, Request

from serving.api.protocol import ChatCompletionRequest
from serving.api.routes._common import parse_body, sse_response

router = APIRouter()


@router.post(
    "/v1/chat/completions",
    openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": ChatCompletionRequest.model_json_schema(ref_template="#/components/schemas/{model}")}}}},
)
async def create_chat_completion(request: Request):
    req = await parse_body(request, ChatCompletionRequest)
    backend = request.app.state.registry.get(req.model)
    if req.stream:
        return sse_response(await backend.chat_stream(req))
    return await backend.chat(req)
