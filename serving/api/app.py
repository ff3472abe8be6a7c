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
from serving.api.routes._common import REQUEST_ID_HEADER
from serving.api.security import Authenticator, RateLimiter, load_api_keys
from serving.config import AuthConfig, LimitsConfig, ObservabilityConfig
from serving.observability.logging import configure_access_log

logger = logging.getLogger(__name__)


def _error_response(request: Request, err: APIError) -> JSONResponse:
    headers = dict(err.headers)
    rid = getattr(request.state, "request_id", None)
    if rid:
        headers[REQUEST_ID_HEADER] = rid
    return JSONResponse(err.body(), status_code=err.status_code, headers=headers)


def _serve_self_contained_openapi(app: FastAPI) -> None:
    """Hoist the request models' nested `$defs` into components.schemas, where their $refs point."""
    from fastapi.openapi.utils import get_openapi

    def openapi():
        if app.openapi_schema is None:
            spec = get_openapi(title=app.title, version=app.version, routes=app.routes)
            schemas = spec.setdefault("components", {}).setdefault("schemas", {})
            for path in spec.get("paths", {}).values():
                for op in path.values():
                    body = op.get("requestBody", {}).get("content", {}).get("application/json", {})
                    schema = body.get("schema", {})
                    schemas.update(schema.pop("$defs", {}))
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi


def build_api(
    registry: ModelRegistry,
    auth: AuthConfig | None = None,
    limits: LimitsConfig | None = None,
    observability: ObservabilityConfig | None = None,
) -> FastAPI:
    app = FastAPI(title="serving: OpenAI-compatible LLM API", version="0.1.0")
    configure_access_log((observability or ObservabilityConfig()).access_log)
    auth = auth or AuthConfig()
    app.state.registry = registry
    app.state.authenticator = Authenticator(load_api_keys(auth))
    app.state.limits = limits or LimitsConfig()
    app.state.limiter = RateLimiter(app.state.limits)
    if not app.state.authenticator.enabled:
        logger.warning(
            "no API keys configured (env %s, file %s): the API is open to anyone who can reach it",
            auth.api_keys_env, auth.api_keys_file,
        )
    for module in (health, models, chat, completions):
        app.include_router(module.router)
    _serve_self_contained_openapi(app)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return _error_response(request, exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException):
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return JSONResponse(error_body(str(exc.detail), kind), status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError):
        return JSONResponse(error_body(str(exc.errors()[0]["msg"]), "invalid_request_error"), status_code=400)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        err = unwrap(exc)
        if isinstance(err, APIError):
            return _error_response(request, err)
        logger.exception("unhandled error")
        return JSONResponse(error_body("The server had an error while processing your request.", "server_error"), status_code=500)

    return app
