"""The app factory: one FastAPI app assembled from the routers, with one error mapping.

`build_api` is called by every ingress (the proxy-path ingress deployment, each
LLM-server replica's direct ingress) and by the tests, with the backends and
the metrics of the place it runs in. This module imports no Ray.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from serving import __version__
from serving.api.backend import ModelRegistry
from serving.api.budgets import Budgets, LedgerClient
from serving.api.middleware import RequestContext, error_response, internal_error_response, record_error
from serving.api.responses.store import MemoryResponseStore, ResponseStore
from serving.api.routes import chat, completions, embeddings, health, models, responses, tokenize
from serving.api.security import Authenticator
from serving.config import AuthConfig, LimitsConfig, ObservabilityConfig
from serving.errors import APIError, error_body, unwrap
from serving.observability.logging import configure_access_log
from serving.observability.metrics import Metrics, NullMetrics

logger = logging.getLogger(__name__)

# The routes whose requests are counted and logged one by one (RequestContext).
GENERATION_PATHS = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/embeddings"})


def _serve_self_contained_openapi(app: FastAPI) -> None:
    """Hoist the request models' nested `$defs` into components.schemas, where their $refs point."""
    from fastapi.openapi.utils import get_openapi

    def openapi() -> dict[str, Any]:
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

    app.openapi = openapi  # type: ignore[method-assign]


def build_api(
    registry: ModelRegistry,
    auth: AuthConfig | None = None,
    limits: LimitsConfig | None = None,
    observability: ObservabilityConfig | None = None,
    metrics: Metrics | None = None,
    forward_token: str | None = None,
    forward_port: int | None = None,
    response_store: ResponseStore | None = None,
    budget_ledger: LedgerClient | None = None,
) -> FastAPI:
    """The app; `forward_token`: the secret that marks requests placed here by another entry point of the
    app, accepted only on `forward_port`, the replica's own listener (serving/api/forwarded.py);
    `budget_ledger`: where the rate-limit budgets are held (None: in this process; serving/api/budgets.py)."""
    app = FastAPI(title="serving: OpenAI-compatible LLM API", version=__version__)
    app.state.forward_token = forward_token
    app.state.forward_port = forward_port
    configure_access_log((observability or ObservabilityConfig()).access_log)
    auth = auth or AuthConfig()
    app.state.registry = registry
    # Stored responses: the app's shared store where there is one (a Ray actor), this process's otherwise.
    app.state.response_store = response_store if response_store is not None else MemoryResponseStore()
    # Fails closed: a named key source that gives no usable key stops the start-up here.
    app.state.limits = limits = limits or LimitsConfig()
    app.state.authenticator = Authenticator.from_config(auth, limits)
    # The app's budgets: leased from its ledger (a Ray actor, cluster-wide), or one in this process.
    app.state.budgets = Budgets(budget_ledger, limits.budget_lease_s)
    if auth.mode == "open":
        logger.warning("auth: open (from the config): the API checks no key, anyone who can reach it may use it")
    for module in (health, models, chat, completions, embeddings, responses, tokenize):
        app.include_router(module.router)
    _serve_self_contained_openapi(app)
    # Tracing is off by default (serving/observability/tracing.py).
    tracing_config = (observability or ObservabilityConfig()).tracing
    app.add_middleware(
        RequestContext, metrics=metrics or NullMetrics(), metered_paths=GENERATION_PATHS, tracing_config=tracing_config
    )

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        record_error(request, exc)
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return JSONResponse(error_body(str(exc.detail), kind), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(error_body(str(exc.errors()[0]["msg"]), "invalid_request_error"), status_code=400)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Reached only for errors raised outside RequestContext; it answers the rest itself.
        err = unwrap(exc)
        if isinstance(err, APIError):
            record_error(request, err)
            return error_response(err)
        logger.exception("unhandled error")
        return internal_error_response()

    return app
