from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from serving.api.routes._common import authorize

router = APIRouter()


@router.get("/health")
async def health():
    """Liveness: the process answers. Never touches an engine."""
    return {"status": "ok"}


@router.get("/ready")
async def ready(request: Request):
    """Readiness: 200 only when every model's engine is up."""
    models = await request.app.state.registry.ready()
    ok = all(models.values())
    return JSONResponse({"ready": ok, "models": models}, status_code=200 if ok else 503)


@router.get("/stats")
async def stats(request: Request):
    """Engine counters per model, as seen by the process that answers (one replica). Needs a key."""
    authorize(request)
    return await request.app.state.registry.stats()
