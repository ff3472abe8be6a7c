"""POST /v1/embeddings: an embedding model's vectors (`models[].task: embed`).

It goes the generation routes' way (serving/api/pipeline.py): key check and
request budget, a token reservation for its inputs (nothing is generated)
settled from its usage, placement on the model's replicas with forwarding as
bytes, cancellation when the client leaves. A chat model refuses it with a 400.
"""

from fastapi import APIRouter, Request
from fastapi.responses import Response

from serving.api.dependencies import AdmittedCaller
from serving.api.pipeline import run_generation
from serving.api.protocol import EmbeddingRequest
from serving.api.routes import json_body_schema

router = APIRouter()


@router.post("/v1/embeddings", openapi_extra=json_body_schema(EmbeddingRequest))
async def create_embeddings(request: Request, caller: AdmittedCaller) -> Response:
    return await run_generation(request, caller, EmbeddingRequest, lambda b, req, rid: b.embeddings(req, rid))
