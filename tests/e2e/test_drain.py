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

A redeploy that replaces the replica while streams run through both paths
(the direct ingress, and Serve's proxy: handle calls into the replica) ends
them all the same way. Serve calls `__del__` only once no handle call is
left, so with the drain begun there it waited until its deadline and killed
the replica: every stream was cut, direct ones too (the proxy's got
`replica_unavailable`); the drain now begins when Serve begins the stop
(serving/deployments/serve_stop.py).
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


def long_story(model_id: str) -> dict:
    """A stream of 2,000 tokens: far longer than the drain on 2 cores."""
    return {
        "model": model_id,
        "messages": [{"role": "user", "content": "tell me a long story"}],
        "max_tokens": 2000,
        "ignore_eos": True,
        "stream": True,
    }


def test_stop_ends_long_streams_with_an_error_event_and_done(tmp_path):
    data = dev_config(DIRECT, PROXY)
    model = data["applications"][0]["args"]["models"][0]
    model["deployment"]["graceful_shutdown_timeout_s"] = 6
    body = long_story(model["id"])
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


def test_redeploy_ends_long_streams_on_both_paths_with_an_error_event_and_done(tmp_path):
    """Streams keep coming on both paths until the old replica's stop ends one; none in flight is cut.

    When the stop begins depends on the new app's build, 5-20 s after `serve deploy` on a loaded
    machine, so each client starts a new long stream whenever its last one finished, until the
    first stream ended by the drain is seen. (The build ran at Ray's worker niceness beside the
    busy replica; while it imported vLLM to check engine_args, it took 90 s here and more than
    the old 240 s deadline in a CI run, where the test then saw no drain at all.)
    """
    data = dev_config(DIRECT, PROXY)
    model = data["applications"][0]["args"]["models"][0]
    # Stop the old replica first (no surge): its stop is the only one, and nothing new serves meanwhile.
    model["deployment"].update(graceful_shutdown_timeout_s=6, max_surge_percent=0)
    body = long_story(model["id"])
    outcomes: list[tuple[str, str]] = []  # (path, drained | finished | refused | cut: ...)
    stop_seen = threading.Event()
    deadline = time.monotonic() + 360
    deployed_at: list[float] = []

    def one_stream(port: int, max_tokens: int) -> str:
        try:
            with httpx.stream(
                "POST",
                f"http://127.0.0.1:{port}/v1/chat/completions",
                json={**body, "max_tokens": max_tokens},
                timeout=90,
            ) as r:
                if r.status_code != 200:
                    return f"refused: {r.status_code}"
                events = sse.parse(r.read(), require_done=False)
        except httpx.ConnectError:
            return "refused: connect"
        except (httpx.HTTPError, sse.SSEError) as exc:
            return f"cut: {exc!r}"
        if not events or events[-1] != sse.DONE:
            return f"cut: no [DONE] after {events[-1:]}"
        last = events[-2]
        if "error" in last:
            return "drained" if last["error"]["code"] == "server_shutting_down" else f"cut: {last['error']}"
        return "finished" if last["choices"][0]["finish_reason"] == "length" else f"cut: {last}"

    def client(port: int, index: int) -> None:
        # The first streams of different lengths: with equal ones all clients ended their
        # streams together and started the next together, and in a CI run the stop fell
        # into such a gap for every proxy-path client (none was drained there).
        max_tokens = 400 + 100 * index
        while not stop_seen.is_set() and time.monotonic() < deadline:
            outcome = one_stream(port, max_tokens)
            max_tokens = body["max_tokens"]
            outcomes.append(("direct" if port == DIRECT else "proxy", outcome))
            if outcome == "drained" and not stop_seen.is_set():
                print(f"\nfirst drained stream {time.monotonic() - deployed_at[0]:.1f} s after serve deploy")
            if outcome == "drained":
                stop_seen.set()
            elif outcome.startswith("refused"):
                time.sleep(0.5)

    with start_stack(data, tmp_path / "serve.log") as server:
        ports = [DIRECT, PROXY] * (STREAMS // 2)
        clients = [threading.Thread(target=client, args=(port, i)) for i, port in enumerate(ports)]
        for t in clients:
            t.start()
        model.setdefault("env", {})["SERVING_DEPLOY_GENERATION"] = "2"  # a new runtime_env: a new replica
        try:
            deployed_at.append(time.monotonic())
            deploy = server.deploy(data)
        finally:
            for t in clients:
                t.join(timeout=300)
        assert deploy.returncode == 0, deploy.stderr
    print(f"\nredeploy under load: {sorted(set((p, o, outcomes.count((p, o))) for p, o in outcomes))}")
    cut = [o for o in outcomes if o[1].startswith("cut")]
    assert not cut, cut
    drained = {path for path, outcome in outcomes if outcome == "drained"}
    assert drained == {"direct", "proxy"}, f"the stop ended no stream on { ({'direct', 'proxy'} - drained) }"
