"""FastAPI dependencies of the routes: who the caller is, and whether it may send now.

    caller: Caller                    # any /v1 route and /stats: a valid API key or 401
    caller: AdmittedCaller            # generation routes: also the rate-limit buckets, or 429

The caller's identity is a digest of its key (`serving.api.security`), never the key.
A request another entry point of the app placed here (`serving.api.forwarded`)
was authenticated and charged there: it passes both with the app's forward token.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from serving.api.forwarded import forwarded

FORWARDED_CALLER = "forwarded"


async def authenticate(request: Request) -> str:
    """The caller's identity from its API key, or a 401."""
    if forwarded(request):
        return FORWARDED_CALLER
    identity: str = request.app.state.authenticator.identify(request.headers.get("authorization"))
    return identity


Caller = Annotated[str, Depends(authenticate)]


async def admitted_caller(request: Request, caller: Caller) -> str:
    """An authenticated caller that its request and token budgets admit now, or a 429."""
    if not forwarded(request):
        request.app.state.limiter.admit(caller)
    return caller


AdmittedCaller = Annotated[str, Depends(admitted_caller)]
