"""GET /v1/models and /v1/models/{id}."""

from typing import Any

from fastapi import APIRouter, Request

from serving.api.dependencies import Caller
from serving.errors import ModelNotFoundError

router = APIRouter()


@router.get("/v1/models")
async def list_models(request: Request, caller: Caller) -> dict[str, Any]:
    """The models (and adapters) the caller may use."""
    registry = request.app.state.registry
    return {"object": "list", "data": [registry.card(m) for m in registry.ids() if caller.may_use(m)]}


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, request: Request, caller: Caller) -> dict[str, Any]:
    if not caller.may_use(model_id):
        raise ModelNotFoundError(model_id)
    card: dict[str, Any] = request.app.state.registry.card(model_id)
    return card
