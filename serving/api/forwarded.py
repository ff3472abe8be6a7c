"""Requests another entry point placed on this replica (the receiving side of serving/routing/forward.py).

An entry point that forwards a request has already checked the caller's key,
charged its request and token budgets and counted the request; it sends the
body as the client sent it with the app's forward token. Here such a request:

* is authenticated by the token alone (`forwarded`); a wrong or missing token
  makes it an ordinary request, with the key check and the budgets;
* is not charged or counted again (the entry point did both, once);
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

FORWARD_TOKEN_HEADER = "x-serving-forward"
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
    """Whether this request came from another entry point of the app (and is marked so for the rest of it)."""
    known = getattr(request.state, "forwarded", None)
    if known is None:
        token = getattr(request.app.state, "forward_token", None)
        known = token_matches(request.headers.get(FORWARD_TOKEN_HEADER), token)
        request.state.forwarded = known
    return bool(known)
