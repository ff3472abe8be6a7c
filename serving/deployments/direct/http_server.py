"""The direct ingress: the OpenAI app served by uvicorn inside an LLM-server replica.

Measured on 2 cores (loadtests/PERFORMANCE.md, "Direct ingress: the API served
inside the LLM replica"), every process a token crosses costs throughput, and
Ray Serve's proxy plus a handle hop cost 2-3x. Here the HTTP server runs on the
replica's own event loop, next to the engine client, so
a token goes engine core -> this process -> socket, as in plain vLLM.
SO_REUSEPORT lets every replica on a node bind the same port; the kernel spreads
new connections among them.

This server faces clients itself, so it bounds what a connection may hold
(`GuardedHttpToolsProtocol`, limits from `IngressConfig`): open connections per
replica, request line plus header bytes and header count (431), the time to
send the headers and the silence allowed inside a body (408), and how long a
client may leave a response unread (the connection is dropped, and the stream
and its engine request closed at once). Without them, a half-sent request held
a connection for good, a 2 MB header or 20,000 headers were answered 200, and
a client that stopped reading held its engine slot until the request timeout
(SECURITY.md, "The direct ingress's HTTP server").
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import socket
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from serving.config import IngressConfig

logger = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self):
        # Ray owns the replica's signals; uvicorn must not replace its handlers.
        yield


@dataclasses.dataclass(frozen=True)
class ConnectionLimits:
    max_connections: int = 1024
    max_header_bytes: int = 65_536
    max_headers: int = 100
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    write_timeout_s: float = 30.0

    @classmethod
    def from_config(cls, cfg: IngressConfig) -> ConnectionLimits:
        return cls(
            cfg.max_connections,
            cfg.max_header_bytes,
            cfg.max_headers,
            cfg.header_timeout_s,
            cfg.body_timeout_s,
            cfg.write_timeout_s,
        )


_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large", 503: b"Service Unavailable"}


class _Refused(Exception):
    """Raised from a parser callback to stop parsing; the refusal is sent instead of uvicorn's 400."""


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with limits on what one connection may hold (see the module docstring)."""

    limits = ConnectionLimits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_bytes = 0
        self._header_count = 0
        self._refusal: tuple[int, str] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._write_timer: asyncio.TimerHandle | None = None

    # -- timers -----------------------------------------------------------------

    def _arm(self, seconds: float, what: str) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, self._timed_out, what)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timed_out(self, what: str) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and self.cycle.response_started:
            self.transport.close()  # an answer is under way: nothing else can be said
            return
        self._send_and_close(408, f"{what} not received within the server's time limit.")

    # The transport calls these when its buffer passes the high-water mark and when it
    # drains again: paused for `write_timeout_s` means the client stopped reading.

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._write_timer is None:
            self._write_timer = self.loop.call_later(self.limits.write_timeout_s, self._write_stalled)

    def resume_writing(self) -> None:
        super().resume_writing()
        self._cancel_write_timer()

    def _cancel_write_timer(self) -> None:
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None

    def _write_stalled(self) -> None:
        self._write_timer = None
        if not self.transport.is_closing():
            logger.info("dropped a connection whose client read nothing for %gs", self.limits.write_timeout_s)
            # abort, not close: close would wait to flush what the client does not read.
            # connection_lost follows: the response sees a disconnect and closes its stream.
            self.transport.abort()

    # -- refusals ---------------------------------------------------------------

    def _send_and_close(self, status: int, message: str) -> None:
        body = message.encode()
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n%s" % (status, _REASONS[status], len(body), body)
        )
        self.transport.close()

    def send_400_response(self, msg: str) -> None:
        # uvicorn's answer to a parser error: ours when a callback stopped the parser on purpose.
        if self._refusal is not None:
            self._send_and_close(*self._refusal)
        else:
            super().send_400_response(msg)

    def _refuse(self, status: int, message: str) -> None:
        self._refusal = (status, message)
        raise _Refused(message)

    # -- connection and parser callbacks -------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            self._send_and_close(503, "Too many open connections; retry shortly.")
            return
        self._arm(self.limits.header_timeout_s, "The request headers were")

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._cancel_write_timer()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_bytes = self._header_count = 0
        self._arm(self.limits.header_timeout_s, "The request headers were")

    def on_url(self, url: bytes) -> None:
        self._header_bytes += len(url)
        if self._header_bytes > self.limits.max_header_bytes:
            self._refuse(431, f"The request line and headers exceed {self.limits.max_header_bytes} bytes.")
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4
        self._header_count += 1
        if self._header_bytes > self.limits.max_header_bytes:
            self._refuse(431, f"The request line and headers exceed {self.limits.max_header_bytes} bytes.")
        if self._header_count > self.limits.max_headers:
            self._refuse(431, f"The request has more than {self.limits.max_headers} header fields.")
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()
        if self.cycle is not None and self.cycle.more_body and not self.transport.is_closing():
            self._arm(self.limits.body_timeout_s, "The request body was")

    def on_body(self, body: bytes) -> None:
        if self._timer is not None:
            self._arm(self.limits.body_timeout_s, "The request body was")
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        self._disarm()
        super().on_response_complete()  # arms uvicorn's keep-alive timeout until the next request


def reuseport_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def own_socket(host: str, port: int = 0) -> socket.socket:
    """A listener of this replica alone (no SO_REUSEPORT): the address entry points forward requests to."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


class DirectHTTPServer:
    def __init__(self, server: _Server, task: asyncio.Task) -> None:
        self._server = server
        self._task = task

    @classmethod
    async def start(
        cls,
        app: Any,
        host: str,
        port: int,
        graceful_timeout_s: float,
        limits: ConnectionLimits | None = None,
        extra_sockets: list[socket.socket] | None = None,
    ) -> DirectHTTPServer:
        protocol = type("Protocol", (GuardedHttpToolsProtocol,), {"limits": limits or ConnectionLimits()})
        config = uvicorn.Config(
            app,
            loop="none",
            http=protocol,
            lifespan="off",
            access_log=False,
            log_level="warning",
            timeout_graceful_shutdown=max(1, int(graceful_timeout_s)),
            timeout_keep_alive=30,
        )
        server = _Server(config)
        sock = reuseport_socket(host, port)
        task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock, *(extra_sockets or [])]))
        while not server.started:
            if task.done():
                task.result()  # raises the start-up error
                raise RuntimeError("the direct HTTP server stopped during start-up")
            await asyncio.sleep(0.05)
        logger.info("direct ingress listening on %s:%d", host, port)
        return cls(server, task)

    async def stop(self) -> None:
        """Stop accepting, let in-flight responses finish (up to the graceful timeout)."""
        self._server.should_exit = True
        with contextlib.suppress(Exception):
            await self._task
