"""FastAPI dependencies of the routes: who the caller is, and whether it may send now.

    caller: Caller                    # any /v1 route and /stats: a valid API key or 401
    caller: AdmittedCaller            # generation routes: also its requests-per-minute budget, or 429

The caller is a `Principal` (`serving.api.security`): a digest of its key, its
tenant, its budgets, class and scopes, never the key. A request another entry
point of the app placed here (`serving.api.forwarded`) was authenticated and
charged there: it passes both with the app's forward token, as the caller
its flow header names.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from serving.api.budgets import BudgetLimits, BudgetOwner
from serving.api.fair_queue import Flow
from serving.api.forwarded import FLOW_HEADER, forwarded
from serving.api.security import Principal

FORWARDED = "forwarded"


def forwarded_principal(request: Request) -> Principal:
    """The caller of a request placed here: uncharged here, queued as the flow its entry point named."""
    flow = Flow.parse(request.headers.get(FLOW_HEADER)) or Flow(FORWARDED, FORWARDED)
    return Principal(FORWARDED, flow.tenant, BudgetOwner(flow.name, BudgetLimits()), flow.priority, flow.weight)


async def authenticate(request: Request) -> Principal:
    """The caller from its API key, or a 401."""
    if forwarded(request):
        principal = forwarded_principal(request)
    else:
        principal = request.app.state.authenticator.identify(request.headers.get("authorization"))
    request.state.tenant = principal.tenant  # the label of the request's metrics and log line
    return principal


Caller = Annotated[Principal, Depends(authenticate)]


async def admitted_caller(request: Request, caller: Caller) -> Principal:
    """An authenticated caller that its requests-per-minute budget admits now, or a 429 (before the body)."""
    if not forwarded(request):
        await request.app.state.budgets.admit(caller.owner)
    return caller


AdmittedCaller = Annotated[Principal, Depends(admitted_caller)]
