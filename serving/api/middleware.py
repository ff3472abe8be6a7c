"""`RequestContext`: the request id, the metrics and the failure log of every HTTP request, in one place.

A pure ASGI middleware (no per-request task or body buffering, unlike
Starlette's `BaseHTTPMiddleware`), outermost in the app:

* Request id. A valid client `X-Request-Id` is kept; otherwise one is made.
  Every response of every route carries it, error responses included. The
  engine's request id adds a short suffix, so a client reusing an id cannot
  collide with a request of its own still in flight.
* Metrics and the access log, for the generation routes: one `request_done`
  per request with its model (set by the pipeline once the model is known),
  HTTP status and, for refusals and failures, the error's stable `reason`.
* The last resort: an exception no handler took becomes a generic 500 (no
  traceback reaches the client), still with its request id.
* Tracing, when the config turns it on (serving/observability/tracing.py):
  the request's server span, child of the caller's W3C `traceparent` if it
  sent one, current in the request's task while the app answers (health
  probes are not traced). Off, the request pays one attribute check.
"""

from __future__ import annotations

import logging
import re
import uuid
from typing import Any, Awaitable, Callable, MutableMapping

from fastapi import Request
from fastapi.responses import JSONResponse

from serving.config import TracingConfig
from serving.errors import APIError, error_body, unwrap
from serving.observability import tracing
from serving.observability.logging import access_log
from serving.observability.metrics import Metrics

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-Id"
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_HEADER = REQUEST_ID_HEADER.lower().encode()
REASON_HEADER = b"x-serving-reason"  # a forwarded request's refusal: its reason, for the entry point's metrics
_REPLICA_HEADER = b"x-serving-replica"  # serving.api.forwarded.REPLICA_HEADER: the replica that served it
UNTRACED_PATHS = frozenset({"/health", "/ready"})  # probes: a trace each would bury the requests'

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]]


def engine_request_id(request: Request) -> str:
    rid: str = request.state.engine_request_id
    return rid


def set_model(request: Request, model_id: str) -> None:
    request.state.model = model_id


def record_error(request: Request, err: BaseException) -> None:
    """Called by the app's error handlers: the middleware labels the response with it."""
    request.state.error = err


def error_response(err: APIError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status_code, headers=dict(err.headers))


def internal_error_response() -> JSONResponse:
    return JSONResponse(
        error_body("The server had an error while processing your request.", "server_error"), status_code=500
    )


class RequestContext:
    def __init__(
        self, app: ASGIApp, metrics: Metrics, metered_paths: frozenset[str], tracing_config: TracingConfig | None = None
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.metered_paths = metered_paths
        # Made where the app serves (Starlette builds its middleware at the first request), so
        # tracing starts in the process that answers, never in one that only built the app.
        self.traced = tracing_config is not None and tracing.configure(tracing_config)

    async def __call__(
        self, scope: Scope, receive: Callable[[], Awaitable[Message]], send: Callable[[Message], Awaitable[None]]
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.traced and scope["path"] not in UNTRACED_PATHS:
            await self._traced(scope, receive, send)
            return
        await self._serve(scope, receive, send)

    async def _traced(
        self, scope: Scope, receive: Callable[[], Awaitable[Message]], send: Callable[[Message], Awaitable[None]]
    ) -> None:
        """`_serve` within the request's server span (kind SERVER, named `METHOD /route`)."""
        method = scope["method"]
        parent = tracing.context_from(tracing.asgi_headers(scope["headers"]))
        attributes = {"http.request.method": method, "url.path": scope["path"], "url.scheme": scope.get("scheme")}
        span = tracing.start(method, parent, "server", attributes)
        token = tracing.attach(span)
        status: int | None = None
        replica: str | None = None

        async def traced_send(message: Message) -> None:
            nonlocal status, replica
            if message["type"] == "http.response.start":
                status = message["status"]
                replica = next((v.decode() for k, v in message.get("headers", ()) if k == _REPLICA_HEADER), None)
            await send(message)

        failure: BaseException | str | None = None
        try:
            await self._serve(scope, receive, traced_send)
        except BaseException as exc:
            failure = exc
            raise
        finally:
            tracing.detach(token)
            route = getattr(scope.get("route"), "path", None)
            if route is not None:
                span.update_name(f"{method} {route}")
            state = scope.get("state", {})
            err = state.get("error")
            if failure is None and status is not None and status >= 500:
                failure = err if err is not None else f"http {status}"
            tracing.end(
                span,
                failure,
                {
                    "http.route": route,
                    "http.response.status_code": status,
                    "serving.request_id": state.get("request_id"),
                    "serving.model": state.get("model"),
                    "serving.tenant": state.get("tenant"),
                    "serving.forwarded": bool(state.get("forwarded")),
                    "serving.replica": replica,
                    "serving.reason": err.reason if isinstance(err, APIError) else None,
                },
            )

    async def _serve(
        self, scope: Scope, receive: Callable[[], Awaitable[Message]], send: Callable[[Message], Awaitable[None]]
    ) -> None:
        given = next((v for k, v in scope["headers"] if k == _HEADER), None)
        given_id = given.decode("latin-1") if given else None
        if given_id and _VALID_REQUEST_ID.fullmatch(given_id):
            rid, engine_id = given_id, f"{given_id}-{uuid.uuid4().hex[:8]}"
        else:
            rid = engine_id = uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = rid
        state["engine_request_id"] = engine_id
        id_header = (_HEADER, rid.encode())
        metered = scope["path"] in self.metered_paths
        started = False

        async def send_with_context(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = [*message.get("headers", ()), id_header]
                if state.get("forwarded"):
                    # counted where it entered, under the reason found here
                    err = state.get("error")
                    if isinstance(err, APIError) and message["status"] >= 400:
                        message["headers"].append((REASON_HEADER, err.reason.encode()))
                elif metered:
                    self._observe(scope, state, message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_with_context)
        except Exception as exc:
            if started:
                raise  # the response is under way: nothing more can be answered
            err = unwrap(exc)
            if isinstance(err, APIError):
                response = error_response(err)
            else:
                logger.exception("unhandled error")
                response = internal_error_response()
            state["error"] = err
            await response(scope, receive, send_with_context)

    def _observe(self, scope: Scope, state: dict[str, Any], status: int) -> None:
        model = state.get("model", "-")
        route = scope["path"]
        tenant = state.get("tenant", "-")  # "-": refused before its key was known
        if status < 400:
            self.metrics.request_done(model, route, status, tenant=tenant)
            return
        err = state.get("error")
        reason = err.reason if isinstance(err, APIError) else ("server_error" if status >= 500 else None)
        self.metrics.request_done(model, route, status, reason, tenant)
        access_log(
            "rejected" if status < 500 else "failed",
            request_id=state["request_id"],
            tenant=tenant,
            model=model,
            route=route,
            status=status,
            error=type(err).__name__ if err is not None else None,
        )
