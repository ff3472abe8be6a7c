from fastapi import APIRouter, Request

router = APIRouter()


@router.get("/v1/models")
async def list_models(request: Request):
    registry = request.app.state.registry
    return {"object": "list", "data": [registry.card(m) for m in registry.ids()]}


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, request: Request):
    return request.app.state.registry.card(model_id)
