from fastapi import APIRouter, Request

router = APIRouter()


def _authorize(request: Request) -> None:
    request.app.state.authenticator.identify(request.headers.get("authorization"))


@router.get("/v1/models")
async def list_models(request: Request):
    _authorize(request)
    registry = request.app.state.registry
    return {"object": "list", "data": [registry.card(m) for m in registry.ids()]}


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, request: Request):
    _authorize(request)
    return request.app.state.registry.card(model_id)
