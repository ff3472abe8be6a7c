"""GET /v1/models and /v1/models/{id}."""

from typing import Any

from fastapi import APIRouter, Request

from serving.api.dependencies import Caller

router = APIRouter()


@router.get("/v1/models")
async def list_models(request: Request, _: Caller) -> dict[str, Any]:
    registry = request.app.state.registry
    return {"object": "list", "data": [registry.card(m) for m in registry.ids()]}


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, request: Request, _: Caller) -> dict[str, Any]:
    card: dict[str, Any] = request.app.state.registry.card(model_id)
    return card
