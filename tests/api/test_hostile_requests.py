"""Hostile requests must not stall other streams: the simulator behind the real direct-ingress HTTP server.

The app runs on uvicorn in the test's own event loop (`DirectHTTPServer`, as in a
replica), so whatever a request costs on that loop shows as a gap in a
concurrent stream. The probe is `loadtests/hostile.py` (also run against the real
engine: tests/e2e/test_hostile_requests.py). The bound is 50 ms between two chunks
of the victim stream while a hostile request is handled; the simulator makes a
token every 2 ms, so a quiet window's largest gap is a few ms. A case passes when
one of up to three windows stays under the bound (`quietest_window`: a stall the
request causes repeats, a spike of the machine's own does not).
"""

from __future__ import annotations

import pytest

from loadtests.hostile import quietest_window
from loadtests.servers import free_port
from serving.deployments.direct.http_server import DirectHTTPServer
from tests.inprocess import simulated_app

MAX_GAP_MS = 50.0
ENGINE = {"decode_s_per_token": 0.002, "max_model_len": 300_000}


@pytest.fixture
async def direct_url():
    api = await simulated_app(ENGINE)
    port = free_port()
    server = await DirectHTTPServer.start(api.app, "127.0.0.1", port, graceful_timeout_s=1)
    yield f"http://127.0.0.1:{port}"
    await server.stop()
    await api.aclose()


@pytest.mark.parametrize(
    "case", ["quiet", "schema-anyof", "schema-regex", "schema-at-limit", "big-body", "n-logprobs", "logprobs-at-limit"]
)
async def test_a_hostile_request_does_not_stall_other_streams(direct_url, case):
    window, gaps = await quietest_window(direct_url, "sim-model", case, MAX_GAP_MS)
    assert window.gaps_ms, "the victim stream produced nothing during the window"
    assert window.max_gap_ms < MAX_GAP_MS, f"{case}: largest gap of each window: {gaps}; last: {window}"
    if case != "quiet":
        assert window.status is not None and window.status < 500, window
