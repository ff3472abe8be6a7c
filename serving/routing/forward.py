"""`RoutedBackend`: every request placed by the scheduler, served here or forwarded to its replica as bytes.

The entry point (a direct-ingress replica) has authenticated the caller,
charged its budgets and parsed the body; `Scheduler.pick` then ranks the
model's replicas. The first is this replica: the local engine serves it, as
before, with no hop. Another replica: the request's own body bytes go to that
replica's private listener over a pooled keep-alive HTTP/1.1 connection
(`PeerClient`, aiohttp), and its answer comes back as bytes: SSE chunks as they
arrive, or the whole JSON body. No Ray object per chunk, no re-encoding.

The receiving replica knows a forwarded request by the app's forward token
(`FORWARD_TOKEN_HEADER`, a secret made at each deploy and handed to the
replicas only): it skips what the entry point did (the key check, the rate
and token buckets) and serves the request on its own engine, never routing it
again (no loops). It counts the request in its engine metrics; the entry point
counts it in the request metrics, once. A client that sends the header without
the token is an ordinary client.

What can go wrong, and what the caller sees:

* the replica cannot be reached (connection refused or reset before an
  answer: it went away since the last refresh): the next replica in the
  ranking, up to `MAX_TRIES`; then this replica's engine, or the Serve
  handle (`fallback`) for a model this replica does not serve;
* the replica refuses (4xx, 503 overloaded, 429): its error body and status
  as they are (`PeerError`);
* the replica goes away mid-stream, or this replica stops while relaying:
  the stream ends with an error event and `[DONE]` (`serving.api.relay`).

Tracing on (serving/observability/tracing.py), the placement is a `route`
span (the ranking, the replica chosen, local or forwarded, the tries) and
each forward a `forward` span (kind CLIENT) until its answer ends, whose W3C
`traceparent` goes with the request: the serving replica's spans join the
trace where the request entered.
"""

from __future__ import annotations

import functools
import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp

from serving.api.backend import Generation, ModelBackend
from serving.api.forwarded import (
    FLOW_HEADER,
    FORWARD_TOKEN_HEADER,
    TOTAL_TOKENS_HEADER,
    USAGE_EVENT_HEADER,
    entered_at,
    placed_on,
)
from serving.api.openai_serving import ADMISSION_HEADER, set_admission_ms
from serving.api.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    EmbeddingRequest,
    TokenizeRequest,
)
from serving.api.relay import RELAYS, RelayDrain, ended_cleanly
from serving.api.streaming import PIECE_BYTES, EncodedBody, aclose, first_then_rest
from serving.errors import APIError, EngineUnavailableError
from serving.observability import tracing
from serving.routing.scheduler import EndpointTable, Scheduler

logger = logging.getLogger(__name__)

MAX_TRIES = 2
CONNECT_TIMEOUT_S = 2.0
# Below the peers' uvicorn keep-alive (30 s): a pooled connection is dropped here before
# the server closes it, so a request never goes down a connection closing under it.
KEEPALIVE_S = 15.0


_REASON = re.compile(r"[a-z_]{1,40}")  # a metric label the replica gave (serving.errors' reasons)


class PeerUnreachable(Exception):
    """No answer began: the request may go to another replica."""


class PeerError(APIError):
    """A replica's own error answer, passed on with its status and body."""

    def __init__(self, status: int, body: dict[str, Any], headers: dict[str, str], reason: str | None = None) -> None:
        found = body.get("error")
        error: dict[str, Any] = found if isinstance(found, dict) else {}
        super().__init__(
            str(error.get("message") or f"the model's replica answered {status}"),
            param=error.get("param"),
            code=error.get("code"),
            status_code=status,
            headers=headers,
        )
        self.error_type = str(error.get("type") or ("server_error" if status >= 500 else "invalid_request_error"))
        self.reason = (
            reason if reason and _REASON.fullmatch(reason) else ("server_error" if status >= 500 else "rejected")
        )
        self._body = body

    def body(self) -> dict[str, Any]:
        error = self._body.get("error")
        if isinstance(error, dict) and error.get("param") != self.param:  # renamed where it entered (/v1/responses)
            return {**self._body, "error": {**error, "param": self.param}}
        return self._body


class PeerClient:
    """Pooled keep-alive connections to the replicas' own listeners (made on first use, on the loop that uses it)."""

    def __init__(self, token: str, read_timeout_s: float = 600.0, connect_timeout_s: float = CONNECT_TIMEOUT_S) -> None:
        self.token = token
        self._connect_timeout_s = connect_timeout_s
        # Bounds a peer that went silent without closing (a node gone from the network): no
        # byte for this long ends the request. As long as the request timeout, since a whole
        # body comes only when the generation is done.
        self._read_timeout_s = read_timeout_s
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=KEEPALIVE_S, force_close=False)
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=self._connect_timeout_s, sock_read=self._read_timeout_s
                ),
                auto_decompress=False,
                skip_auto_headers=("User-Agent", "Accept-Encoding"),
            )
        return self._session

    async def post(self, address: str, path: str, body: bytes, headers: dict[str, str]) -> aiohttp.ClientResponse:
        """The replica's answer once its status and headers have come; `PeerUnreachable` if none began."""
        headers = {FORWARD_TOKEN_HEADER: self.token, "content-type": "application/json", **headers}
        for attempt in range(2):
            try:
                return await self.session().post(f"http://{address}{path}", data=body, headers=headers)
            except aiohttp.ServerDisconnectedError as exc:
                # A pooled connection the server had just closed: nothing was answered; once more, fresh.
                if attempt:
                    raise PeerUnreachable(f"{address}: {exc!r}") from exc
            except (TimeoutError, aiohttp.ClientConnectionError, OSError) as exc:
                # refused, reset, no route, connect or read timeout: nothing was answered
                raise PeerUnreachable(f"{address}: {exc!r}") from exc
        raise AssertionError("unreachable")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


async def _events(resp: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    """The SSE body as it arrives, cut at event boundaries only (a read may end inside an event).

    The pipeline finds the usage event in a chunk, and a relay may add an error event
    after one: both need whole events. The connection goes back to the pool only if the
    body was read to its end.
    """
    complete = False
    pending = b""
    try:
        async for data in resp.content.iter_any():
            pending += data
            end = pending.rfind(b"\n\n")
            if end < 0:
                continue
            chunk, pending = pending[: end + 2], pending[end + 2 :]
            yield chunk
        if pending.strip():
            raise aiohttp.ClientPayloadError("the replica's stream ended inside an event")
        complete = True
    finally:
        if complete:
            resp.release()
        else:
            resp.close()  # the replica sees the client leave and stops generating


async def _error_of(resp: aiohttp.ClientResponse) -> PeerError:
    raw = await resp.read()
    resp.release()
    try:
        body = json.loads(raw)
    except ValueError:
        body = {}
    if not isinstance(body, dict) or "error" not in body:
        body = {"error": {"message": raw.decode(errors="replace")[:500], "type": "server_error"}}
    headers = {k: v for k, v in resp.headers.items() if k.lower() == "retry-after"}
    return PeerError(resp.status, body, headers, resp.headers.get("x-serving-reason"))


class _Then:
    """`stream`, and `done(failure)` once, however it ends: exhausted (None), failed (the exception), or closed
    before it was read at all (None)."""

    def __init__(self, stream: AsyncIterator[bytes], done: Callable[[BaseException | None], None]) -> None:
        self._stream = stream
        self._done: Callable[[BaseException | None], None] | None = done

    def __aiter__(self) -> _Then:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self._stream.__anext__()
        except StopAsyncIteration:
            await self.aclose()
            raise
        except BaseException as exc:
            await self.aclose(exc)
            raise

    async def aclose(self, failure: BaseException | None = None) -> None:
        done, self._done = self._done, None
        if done is not None:
            done(failure)
            await aclose(self._stream)


def _whatever_the_end(done: Callable[[], None]) -> Callable[[BaseException | None], None]:
    """A `_Then` callback that does `done()` however the stream ended."""
    return lambda _failure: done()


Placed = Callable[[str, str], None]  # (model, "local" | "forwarded" | "fallback")


def _route_settled(span: Any, placement: str, replica: str | None, tries: int) -> None:
    """The `route` span's end (tracing on): where the request went, after how many forwards."""
    attributes = {"serving.route.placement": placement, "serving.route.replica": replica, "serving.route.tries": tries}
    tracing.end(span, attributes=attributes)


def _relay_admission(headers: Any) -> None:
    """The serving replica's fair-queue wait, stated where the request entered: set once its answer has begun
    (a forward that fails before then, retried elsewhere or by the fallback, leaves no value behind)."""
    admission = headers.get(ADMISSION_HEADER)
    if admission is not None:
        set_admission_ms(admission)


class RoutedBackend:
    """A model's requests, each placed by the scheduler (see the module docstring)."""

    places_requests = True  # serving.api.backend.served_here: a forwarded request gets `local`

    def __init__(
        self,
        model_id: str,
        table: EndpointTable,
        scheduler: Scheduler,
        client: PeerClient,
        local: ModelBackend | None = None,
        fallback: ModelBackend | None = None,
        relays: RelayDrain | None = None,
        on_placed: Placed | None = None,
    ) -> None:
        self.model_id = model_id
        self.local = local
        self.fallback = fallback
        self.table = table
        self.scheduler = scheduler
        self.client = client
        self.relays = relays if relays is not None else RELAYS  # a pickled one is the process's own
        self._on_placed = on_placed

    async def chat(self, req: ChatCompletionRequest, request_id: str) -> Generation:
        return await self._place(req, request_id, "/v1/chat/completions", lambda b: b.chat(req, request_id))

    async def completions(self, req: CompletionRequest, request_id: str) -> Generation:
        return await self._place(req, request_id, "/v1/completions", lambda b: b.completions(req, request_id))

    async def embeddings(self, req: EmbeddingRequest, request_id: str) -> Generation:
        return await self._place(req, request_id, "/v1/embeddings", lambda b: b.embeddings(req, request_id))

    def _placed(self, where: str) -> None:
        if self._on_placed is not None:
            self._on_placed(self.model_id, where)

    async def _place(
        self,
        req: ChatCompletionRequest | CompletionRequest | EmbeddingRequest,
        request_id: str,
        path: str,
        here: Callable[[ModelBackend], Awaitable[Generation]],
    ) -> Generation:
        if not tracing.active():
            return await self._placed_on(req, request_id, path, here, None)
        span = tracing.start("route", attributes={"serving.model": self.model_id, "serving.entry": self.table.self_id})
        try:
            return await self._placed_on(req, request_id, path, here, span)
        except BaseException as exc:
            if span.is_recording():  # not settled: no replica could take it (a settled span is left as it was)
                tracing.end(span, exc)
            raise

    async def _placed_on(
        self,
        req: ChatCompletionRequest | CompletionRequest | EmbeddingRequest,
        request_id: str,
        path: str,
        here: Callable[[ModelBackend], Awaitable[Generation]],
        span: Any,
    ) -> Generation:
        """The placement (`_place`); `span`: its `route` span (tracing on), ended once the placement is settled."""
        tries = 0
        if self.table.self_id is not None:
            entered_at.set(self.table.self_id)
        ranked = self.scheduler.pick(self.model_id, req, self.table)
        if span is not None:
            ranked = list(ranked)
            span.set_attribute("serving.route.ranked", [e.replica_id for e in ranked[:8]])
        for endpoint in ranked:
            if endpoint.replica_id == self.table.self_id and self.local is not None:
                break
            if tries == MAX_TRIES:
                break
            tries += 1
            self.table.started(endpoint.replica_id)
            try:
                result = await self._forward(endpoint.address, path, req, request_id, endpoint.replica_id, span)
            except PeerUnreachable as exc:
                self.table.finished(endpoint.replica_id)
                logger.warning("model %s: replica %s unreachable (%s)", self.model_id, endpoint.replica_id, exc)
                continue
            except PeerError as exc:
                self.table.finished(endpoint.replica_id)
                if exc.status_code == 503 and tries < MAX_TRIES:
                    # draining, full, its engine down, or not serving the model (a stale table):
                    # nothing was generated, so the next replica may take it
                    continue
                raise
            except BaseException:
                self.table.finished(endpoint.replica_id)
                raise
            self._placed("forwarded")
            if isinstance(result, (dict, EncodedBody)):
                self.table.finished(endpoint.replica_id)
            else:
                result = _Then(result, _whatever_the_end(functools.partial(self.table.finished, endpoint.replica_id)))
            placed_on.set(endpoint.replica_id)
            _route_settled(span, "forwarded", endpoint.replica_id, tries)
            return result
        if self.local is not None:
            self._placed("local")
            if self.table.self_id is not None:
                placed_on.set(self.table.self_id)
            _route_settled(span, "local", self.table.self_id, tries)
            return await here(self.local)
        if self.fallback is not None:
            self._placed("fallback")
            _route_settled(span, "fallback", None, tries)
            return await here(self.fallback)
        raise EngineUnavailableError(
            f"No replica of model '{self.model_id}' could be reached; retry shortly.", code="replica_unavailable"
        )

    async def _forward(
        self,
        address: str,
        path: str,
        req: ChatCompletionRequest | CompletionRequest | EmbeddingRequest,
        request_id: str,
        replica_id: str | None = None,
        route: Any = None,
    ) -> Generation:
        headers = {"x-request-id": request_id}
        if req._flow is not None:
            headers[FLOW_HEADER] = req._flow.header()  # whose it is: its place in the target's fair queue
        if req.stream and req.usage_event and not req.include_usage:
            headers[USAGE_EVENT_HEADER] = "1"
        if route is None:
            return await self._forwarded(address, path, req, headers)
        host, _, port = address.rpartition(":")
        attributes = {
            "http.request.method": "POST",
            "url.path": path,
            "server.address": host.strip("[]"),
            "server.port": int(port) if port.isdigit() else None,
            "serving.replica": replica_id,
        }
        span = tracing.start("forward", route, "client", attributes)
        headers.update(tracing.headers_of(span) or {})  # the serving replica's spans join this trace
        try:
            result = await self._forwarded(address, path, req, headers)
        except BaseException as exc:
            tracing.end(span, exc, {"http.response.status_code": getattr(exc, "status_code", None)})
            raise
        if isinstance(result, (dict, EncodedBody)):
            tracing.end(span, attributes={"http.response.status_code": 200})
            return result
        # the `forward` span ends with the relayed stream, however it ends
        return _Then(result, lambda failure: tracing.end(span, failure, {"http.response.status_code": 200}))

    async def _forwarded(
        self,
        address: str,
        path: str,
        req: ChatCompletionRequest | CompletionRequest | EmbeddingRequest,
        headers: dict[str, str],
    ) -> Generation:
        resp = await self.client.post(address, path, req.raw_body(), headers)
        try:
            if resp.status != 200:
                raise await _error_of(resp)
            if resp.content_type == "text/event-stream":
                stream = await first_then_rest(_events(resp))
                _relay_admission(resp.headers)
                return ended_cleanly(stream, self.model_id, self.relays, source="forwarded replica")
            body = await resp.read()
            resp.release()
            _relay_admission(resp.headers)
            parts = [body[i : i + PIECE_BYTES] for i in range(0, len(body), PIECE_BYTES)] or [b""]
            return EncodedBody(parts, int(resp.headers.get(TOTAL_TOKENS_HEADER, "0") or 0))
        except (TimeoutError, aiohttp.ClientError) as exc:
            resp.close()
            # the replica went away before its first chunk or during a whole body: nothing reached the client
            raise PeerUnreachable(f"{address}: {exc!r}") from exc
        except BaseException:
            resp.close()
            raise

    # -- what is not per request: the local engine's, or the fallback's ----------------

    def _own(self) -> ModelBackend | None:
        return self.local if self.local is not None else self.fallback

    async def tokenize(self, req: TokenizeRequest) -> dict[str, Any]:
        return await self._serving_backend().tokenize(req)

    async def detokenize(self, req: DetokenizeRequest) -> dict[str, Any]:
        return await self._serving_backend().detokenize(req)

    def _serving_backend(self) -> ModelBackend:
        """Tokenizing is the model's, not a replica's: this replica's engine, or the model's deployment."""
        own = self._own()
        if own is None:
            raise EngineUnavailableError(
                f"No replica of model '{self.model_id}' could be reached; retry shortly.", code="replica_unavailable"
            )
        return own

    async def ready(self) -> bool:
        own = self._own()
        if own is not None:
            return await own.ready()
        return bool(self.scheduler.candidates(self.model_id, self.table))

    async def context_length(self) -> int | None:
        own = self._own()
        return await own.context_length() if own is not None else None

    async def stats(self) -> dict[str, float]:
        own = self._own()
        return await own.stats() if own is not None else {}
