"""Hostile requests against the real engine: no other stream stalls (loadtests/hostile.py, on the dev stack).

Each case runs a victim stream while one hostile request is handled and bounds
the victim's largest gap between two chunks at 100 ms (a quiet window here shows
about 10 ms, but the machine alone sometimes shows one 200+ ms gap: CI once saw
226 ms in the `quiet` case, with no hostile request at all). A stall a hostile
request causes happens on every try, a noise spike does not, so a case passes
when one of up to three windows stays under the bound (`quietest_window`).

Before the request-cost bounds: a 240 KB `anyOf` schema stalled the victim 2.7 s,
a 1 MB body 0.66 s, `n=128, top_logprobs=20` 17 s (and built a 187 MB body), a
schema `pattern` of `a{99999999999}` answered 500. What is let through just under
the limits (`*-at-limit`) must not stall anyone either.
"""

from __future__ import annotations

import httpx
import pytest

from loadtests.hostile import hostile_bodies, quietest_window
from tests.e2e.conftest import API_KEY, DIRECT_URL, REPLICA

MAX_GAP_MS = 100.0


# logprobs-at-limit (n=4, top_logprobs=20, 2000 tokens, an 11.7 MB body) is back: its one spike per request
# (108-161 ms in five of five runs on 2026-12-03) was the body joined, encoded and written at once at the
# end; built and written in pieces (serving/api/streaming.py: EncodedBody): 21-41 ms in four runs (27-78 ms
# in eight runs before, the same day).
CASES = list(hostile_bodies("tiny-llama", 1_000_000))


@pytest.mark.parametrize("case", CASES)
async def test_a_hostile_request_does_not_stall_other_streams(dev_server, case):
    window, gaps = await quietest_window(DIRECT_URL, "tiny-llama", case, MAX_GAP_MS, API_KEY)
    assert window.gaps_ms, "the victim stream produced nothing during the window"
    assert window.max_gap_ms < MAX_GAP_MS, f"largest gap of each window: {gaps}; last: {window}"
    if case == "quiet":
        return
    assert window.status is not None and window.status < 500, window
    if case.endswith("at-limit"):
        assert window.status == 200, window
    else:
        assert window.status == 400, window


async def test_the_sequence_that_got_the_replica_replaced_leaves_it_serving(dev_server):
    """The issue's sequence, back to back: a large schema, an overflowing regex, n=128 with top_logprobs=20, a 900 KB prompt.

    Before, it got the dev stack's replica killed by Serve's health check and
    replaced, and the next connection was refused. Now each is a 400 within
    seconds, the next request is served at once, and the replica is the same process.
    """
    before = {p.pid for p in dev_server.descendants(REPLICA)}
    assert len(before) == 1, before
    bodies = hostile_bodies("tiny-llama", 900_000)
    sequence = [bodies[case] for case in ("schema-anyof", "schema-regex", "n-logprobs", "big-body")]
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with httpx.AsyncClient(base_url=DIRECT_URL, headers=headers, timeout=30) as client:
        for body in sequence:
            r = await client.post("/v1/chat/completions", json=body)
            assert r.status_code == 400, r.text[:300]
        ok = await client.post(
            "/v1/chat/completions",
            json={"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
        )
        assert ok.status_code == 200, ok.text
    assert {p.pid for p in dev_server.descendants(REPLICA)} == before, "the replica was replaced"
