"""Requests another entry point placed on this replica (the receiving side of serving/routing/forward.py).

An entry point that forwards a request has already checked the caller's key,
charged its request and token budgets and counted the request; it sends the
body as the client sent it with the app's forward token. Here such a request:

* is authenticated by the token alone (`forwarded`), on the replica's own
  port only; a request that claims to be forwarded without the token, or on
  the port clients use, gets a 403; one without the header is an ordinary
  request, with the key check and the budgets;
* is not charged or counted again (the entry point did both, once), and
  queues here as the caller it was at the entry point (`FLOW_HEADER`: its
  tenant, class and weight);
* is served by this replica's own engine and never placed again
  (`served_here`), so no request can travel in a loop;
* gets its usage event when the entry point asks for it
  (`USAGE_EVENT_HEADER`: that event settles the caller's token reservation
  there), and a whole body states its usage in `TOTAL_TOKENS_HEADER`.

Every generation response says which replica served it (`REPLICA_HEADER`)
and where it entered (`ENTRY_HEADER`): the placement is visible to operators,
benchmarks and tests.
"""

from __future__ import annotations

import hmac
from contextvars import ContextVar

from fastapi import Request

from serving.errors import AuthenticationError

FORWARD_TOKEN_HEADER = "x-serving-forward"
FLOW_HEADER = "x-serving-flow"  # whose request (serving.api.fair_queue.Flow), trusted with the token only
USAGE_EVENT_HEADER = "x-serving-usage-event"
TOTAL_TOKENS_HEADER = "x-serving-total-tokens"
REPLICA_HEADER = "x-serving-replica"
ENTRY_HEADER = "x-serving-entry"  # the replica the request entered at (it differs: forwarded)

# Set in the request's task by whatever places the request (a routing backend), read
# when the response is made: the replica that serves it, if known.
placed_on: ContextVar[str | None] = ContextVar("placed_on", default=None)
entered_at: ContextVar[str | None] = ContextVar("entered_at", default=None)


def token_matches(given: str | None, token: str | None) -> bool:
    return bool(token and given and hmac.compare_digest(given.encode(), token.encode()))


def forwarded(request: Request) -> bool:
    """Whether this request came from another entry point of the app (and is marked so for the rest of it).

    Only on the replica's own port (`forward_port`), never on the port clients use:
    a token that leaked would otherwise skip the key and the budgets on the public
    port. A request that claims to be forwarded (the header) without the token, or on
    the wrong port, is refused with a 403, never served or placed again.
    """
    known = getattr(request.state, "forwarded", None)
    if known is None:
        given = request.headers.get(FORWARD_TOKEN_HEADER)
        token = getattr(request.app.state, "forward_token", None)
        known = False
        if given is not None and token is not None:
            port = getattr(request.app.state, "forward_port", None)
            server = request.scope.get("server")
            on_own_port = port is None or (server is not None and server[1] == port)
            if not (on_own_port and token_matches(given, token)):
                raise AuthenticationError(
                    "A forwarded request needs the app's forward token, on a replica's own port.",
                    code="invalid_forward_token",
                    status_code=403,
                )
            known = True
        request.state.forwarded = known
    return bool(known)
