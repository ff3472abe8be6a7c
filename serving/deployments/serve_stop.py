"""When Serve begins stopping this replica, so that its drain starts then, not after Serve's wait.

Serve stops a replica (redeploy, downscale, a draining node, `serve shutdown`)
in two steps: it waits, in loops of `graceful_shutdown_wait_loop_s`, until no
*handle call* is ongoing, and only then calls the replica's `__del__`; it
force-kills the replica `graceful_shutdown_timeout_s` after the first step
began. Our drain (end what is still running with an error event and `[DONE]`)
lived in `__del__`. So a replica with a stream in flight through a handle (the
proxy path, another model's direct ingress) never reached `__del__` before the
kill: every stream it served, direct ones too, was cut without an error event.
Measured on a 3-node cluster, a node drained as KubeRay does it (SIGTERM to
`ray start --block`): Serve logged "Waiting for an additional 2.0s to shut
down: 2 ongoing requests" until its deadline, then the streams were cut
(tests/e2e/test_cluster.py, tests/e2e/test_drain.py).

Serve offers the user class no hook for the first step. It marks it on its
replica object (`_shutting_down`, which also turns its data-plane health to
DRAINING); `watch` polls that flag and calls back once it turns. Where the flag
cannot be found (another Ray version), the watcher says so once in the log and
the drain runs from `__del__`, as before.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

logger = logging.getLogger(__name__)

POLL_S = 0.2

# Serve's `graceful_shutdown_wait_loop_s` (its default; our deployment options leave it):
# a stopping replica waits this long for the handle calls Serve counts before it calls
# `__del__`, and the force-kill deadline runs from the start of that wait.
SERVE_SHUTDOWN_WAIT_LOOP_S = 2.0


def drain_time_s(graceful_shutdown_timeout_s: float) -> float:
    """How long a stopping replica lets its requests finish before ending them.

    Serve kills the replica `graceful_shutdown_timeout_s` after its shutdown
    began, and `__del__` starts only after one wait loop (Serve's
    `_drain_ongoing_requests`); ending the rest needs a moment too (their last
    events, the engine's shutdown). So: what is left after the wait loop, less
    5 s, or half of it if it is short. (Measured: with the wait loop ignored, a
    4 s timeout drained for 2 s and Serve killed the replica while it wrote the
    streams' error events, which then ended without them.)
    """
    budget = max(0.0, graceful_shutdown_timeout_s - SERVE_SHUTDOWN_WAIT_LOOP_S)
    return max(budget / 2, budget - 5.0)


def drain_from_stop_s(graceful_shutdown_timeout_s: float) -> float:
    """The drain time counted from the start of Serve's stop (what `watch` sees): the same deadline."""
    return drain_time_s(graceful_shutdown_timeout_s) + SERVE_SHUTDOWN_WAIT_LOOP_S


def _serve_replica() -> Any | None:
    """Serve's replica object in this actor process (what holds `_shutting_down`), if it can be found."""
    try:
        import ray

        actors = ray._private.worker.global_worker.actors
    except Exception:  # not in a Ray worker, or Ray's internals moved
        return None
    for actor in list(actors.values()):
        impl = getattr(actor, "_replica_impl", None)
        if impl is not None and isinstance(getattr(impl, "_shutting_down", None), bool):
            return impl
    return None


def stopping_probe(find: Callable[[], Any | None] = _serve_replica) -> Callable[[], bool] | None:
    """A cheap check of whether Serve has begun stopping this replica, or None where it cannot be known."""
    replica = find()
    if replica is None:
        return None
    return lambda: bool(replica._shutting_down)


async def watch(
    on_stop: Callable[[], Awaitable[object]],
    probe: Callable[[], bool] | None = None,
    poll_s: float = POLL_S,
) -> None:
    """Wait until Serve begins stopping the replica, then await `on_stop()`; cancel it to stop watching."""
    if probe is None:
        probe = stopping_probe()
    if probe is None:
        logger.warning("Serve's stop of this replica cannot be seen; the drain starts at __del__ (serve_stop.py)")
        return
    while not probe():
        await asyncio.sleep(poll_s)
    try:
        await on_stop()
    except Exception:  # the drain from __del__ still runs; nobody awaits this task
        logger.exception("the drain begun at Serve's stop failed")
