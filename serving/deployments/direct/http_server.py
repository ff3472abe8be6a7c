"""The direct ingress: the OpenAI app served by uvicorn inside an LLM-server replica.

Measured on 2 cores (loadtests/PERFORMANCE.md, "Direct ingress: the API served
inside the LLM replica"), every process a token crosses costs throughput, and
Ray Serve's proxy plus a handle hop cost 2-3x. Here the HTTP server runs on the
replica's own event loop, next to the engine client, so
a token goes engine core -> this process -> socket, as in plain vLLM.
SO_REUSEPORT lets every replica on a node bind the same port; the kernel spreads
new connections among them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket

import uvicorn

logger = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self):
        # Ray owns the replica's signals; uvicorn must not replace its handlers.
        yield


def reuseport_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


class DirectHTTPServer:
    def __init__(self, server: _Server, task: asyncio.Task) -> None:
        self._server = server
        self._task = task

    @classmethod
    async def start(cls, app, host: str, port: int, graceful_timeout_s: float) -> DirectHTTPServer:
        config = uvicorn.Config(
            app,
            loop="none",
            http="httptools",
            lifespan="off",
            access_log=False,
            log_level="warning",
            timeout_graceful_shutdown=max(1, int(graceful_timeout_s)),
            timeout_keep_alive=30,
        )
        server = _Server(config)
        sock = reuseport_socket(host, port)
        task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
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
