"""Streams this process relays from another replica, and how they end when either side stops.

A relayed stream is one whose tokens are made elsewhere: through a Ray Serve
handle (`serving.deployments.handle_backend`, the proxy path) or forwarded
over HTTP to the replica the scheduler chose (`serving.routing.forward`).
Two things end such a stream early, and neither may cut it without a word:

* the replica making it goes away mid-way (Serve's force-kill at the end of
  its graceful timeout, a crash, a lost node): `ended_cleanly` turns the
  failure into an SSE error event (503, code `replica_unavailable`, or the
  error's own) and `[DONE]`, as the direct path's streams end;
* the relaying process stops (an ingress replica on a drained node, an entry
  point that forwarded): `RelayDrain.drain` lets the streams run for the drain
  time, then ends each at its next chunk with an error event (503
  `server_shutting_down`) and `[DONE]`. Before, Serve killed the relaying
  replica at its graceful timeout and the client saw a cut body.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

from serving.api.streaming import DONE, aclose, drain, sse
from serving.errors import APIError, EngineUnavailableError, ShuttingDownError, unwrap

logger = logging.getLogger(__name__)


class RelayDrain:
    """The streams this process relays, and their end when the process stops.

    One per process (`RELAYS`). Serve pickles what the app's build made (the
    ingress's backends, its class defined in a function) into each replica; a
    pickled `RelayDrain` is therefore restored as the replica's own `RELAYS`,
    not as a copy. Before, the ingress's drain and its relayed streams each
    held a copy of the build process's: the drain ended nothing, and a drained
    node's ingress kept relaying until Serve killed it and cut the streams
    (seen on the 3-node harness, tests/e2e/test_cluster.py).
    """

    def __init__(self) -> None:
        self.active = 0
        self.ending = False

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        return _process_relays, ()

    async def drain(self, drain_s: float) -> int:
        """Let the relayed streams run for up to `drain_s`, then end them (each at its next chunk); how many."""

        def end() -> int:
            self.ending = True
            return self.active

        return await drain(lambda: self.active, end, drain_s)


RELAYS = RelayDrain()  # one per process: every relayed stream's


def _process_relays() -> RelayDrain:
    """This process's `RELAYS` (what a pickled `RelayDrain` becomes)."""
    return RELAYS


async def ended_cleanly(
    stream: AsyncIterator[bytes], model_id: str, relays: RelayDrain, source: str = "replica"
) -> AsyncIterator[bytes]:
    """`stream`, with a failure after its first chunk turned into an error event and `[DONE]`, as is a drain's end."""
    relays.active += 1
    try:
        async for chunk in stream:
            if relays.ending:
                yield sse(ShuttingDownError().body())
                yield DONE
                return
            yield chunk
    except Exception as exc:
        err = unwrap(exc)
        if not isinstance(err, APIError):
            logger.warning("model %s: the %s's stream failed mid-way: %s", model_id, source, type(exc).__name__)
            err = EngineUnavailableError(
                f"The model's replica stopped during the stream ({type(exc).__name__}); retry the request.",
                code="replica_unavailable",
            )
        yield sse(err.body())
        yield DONE
    finally:
        relays.active -= 1
        await aclose(stream)
