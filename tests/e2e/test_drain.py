"""Stopping the stack drains its replica: streams longer than the drain end with an error event and [DONE].

The real stack (configs/dev.yaml, the real vLLM engine, `serve run` on ports
of its own) with `graceful_shutdown_timeout_s: 6`, so a stopping replica lets
its requests run for 2 s after Serve's 2 s wait loop (`drain_time_s`) and then
ends them, 2 s before Serve's deadline. Sixteen
concurrent streams of 2,000 tokens each need well over that on 2 cores (six
finished within a 4 s drain). Ctrl-C reaches
`serve run`, which shuts the application down as a redeploy or a downscale
does: Serve calls the replica's shutdown, which drains. Before, such streams
were cut with neither an error event nor `[DONE]`; and with a drain that
ignored the wait loop (a 4 s timeout, 2 s of drain) Serve killed the replica
while it wrote the error events, in one CI run of the full suite.
"""

from __future__ import annotations

import threading
import time

import httpx

from loadtests import sse
from loadtests.servers import free_ports
from tests.e2e.conftest import dev_config, start_stack

DIRECT, PROXY = free_ports(2)
STREAMS = 16


def test_stop_ends_long_streams_with_an_error_event_and_done(tmp_path):
    data = dev_config(DIRECT, PROXY)
    model = data["applications"][0]["args"]["models"][0]
    model["deployment"]["graceful_shutdown_timeout_s"] = 6
    body = {
        "model": model["id"],
        "messages": [{"role": "user", "content": "tell me a long story"}],
        "max_tokens": 2000,
        "ignore_eos": True,
        "stream": True,
    }
    results: list[list] = []
    failures: list[BaseException] = []
    started = threading.Semaphore(0)

    def stream() -> None:
        try:
            with httpx.stream("POST", f"http://127.0.0.1:{DIRECT}/v1/chat/completions", json=body, timeout=60) as r:
                assert r.status_code == 200, r.read()
                reader, events = sse.SSEReader(), []
                for chunk in r.iter_bytes():
                    new = reader.feed(chunk)
                    if new and not events:
                        started.release()
                    events += [e.json() for e in new]
                results.append(events)
        except BaseException as exc:  # reported by the test
            failures.append(exc)
            started.release()

    with start_stack(data, tmp_path / "serve.log") as server:
        threads = [threading.Thread(target=stream) for _ in range(STREAMS)]
        for t in threads:
            t.start()
        for _ in threads:
            assert started.acquire(timeout=60), "the streams never started"
        t0 = time.monotonic()
        server.stop()  # Ctrl-C, then no vLLM process may be left (ServeProcess checks)
        stopped_s = time.monotonic() - t0
        for t in threads:
            t.join(timeout=30)
    assert not failures, failures
    assert len(results) == STREAMS
    for events in results:
        assert events[-1] == sse.DONE, f"a stream ended without [DONE]: {events[-2:]}"
        last = events[-2]
        assert "error" in last, (
            f"a stream finished within the drain ({stopped_s:.1f} s): {last['choices'][0]['finish_reason']}"
        )
        assert last["error"]["code"] == "server_shutting_down", last
    assert stopped_s < 40, f"the stop took {stopped_s:.0f} s"
