from fastapi import APIRouter, Request

from serving.api.protocol import CompletionRequest
from serving.api.routes._common import parse_body, sse_response

router = APIRouter()


@router.post(
    "/v1/completions",
    openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": CompletionRequest.model_json_schema(ref_template="#/components/schemas/{model}")}}}},
)
async def create_completion(request: Request):
    req = await parse_body(request, CompletionRequest)
    backend = request.app.state.registry.get(req.model)
    if req.stream:
        return sse_response(await backend.completions_stream(req))
    return await backend.completions(req)
