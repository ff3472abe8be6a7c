"""The app factory: one FastAPI app assembled from the routers, with one error mapping."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from serving.api.backend import ModelRegistry
from serving.api.errors import APIError, error_body, unwrap
from serving.api.routes import chat, completions, health, models

logger = logging.getLogger(__name__)


def build_api(registry: ModelRegistry) -> FastAPI:
    app = FastAPI(title="serving: OpenAI-compatible LLM API", version="0.1.0")
    app.state.registry = registry
    for module in (health, models, chat, completions):
        app.include_router(module.router)

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError):
        return JSONResponse(exc.body(), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException):
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return JSONResponse(error_body(str(exc.detail), kind), status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError):
        return JSONResponse(error_body(str(exc.errors()[0]["msg"]), "invalid_request_error"), status_code=400)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception):
        err = unwrap(exc)
        if isinstance(err, APIError):
            return JSONResponse(err.body(), status_code=err.status_code, headers=err.headers)
        logger.exception("unhandled error")
        return JSONResponse(error_body("The server had an error while processing your request.", "server_error"), status_code=500)

    return app
