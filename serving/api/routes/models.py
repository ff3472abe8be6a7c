from fastapi import APIRouter, Request

from serving.api.routes._common import authorize

router = APIRouter()


@router.get("/v1/models")
async def list_models(request: Request):
    authorize(request)
    registry = request.app.state.registry
    return {"object": "list", "data": [registry.card(m) for m in registry.ids()]}


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, request: Request):
    authorize(request)
    return request.app.state.registry.card(model_id)
