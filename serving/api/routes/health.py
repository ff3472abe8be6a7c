"""Probes and counters: /health (liveness), /ready (readiness), /stats (needs a key)."""

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from serving.api.dependencies import Caller

router = APIRouter()


@router.get("/health")
async def health() -> dict[str, str]:
    """Liveness: the process answers. Never touches an engine."""
    return {"status": "ok"}


@router.get("/ready")
async def ready(request: Request) -> JSONResponse:
    """Readiness: 200 only when every model's engine is up."""
    models = await request.app.state.registry.ready()
    ok = all(models.values())
    return JSONResponse({"ready": ok, "models": models}, status_code=200 if ok else 503)


@router.get("/stats")
async def stats(request: Request, caller: Caller) -> dict[str, Any]:
    """Engine counters per model the caller may use, as seen by the process that answers (one replica)."""
    result: dict[str, Any] = await request.app.state.registry.stats()
    return {model: counters for model, counters in result.items() if caller.may_use(model)}
