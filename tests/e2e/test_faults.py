"""Faults and redeploys against the real engine, on a dev stack of their own.

They kill and replace replicas, so they get a server of their own (a module
fixture on free ports): the shared dev server never sees them, whatever order
the tests run in.

* Engine failure: the vLLM engine process is killed during steady load. Only the
  requests in flight at that moment may fail; every request is answered (no hang
  past its timeout); clients that retry lose nothing; the time until the model
  serves again is measured and printed.
* Drain: the app is redeployed with a changed config while 20 streams are in
  flight; every stream finishes intact.
"""

import asyncio
import signal
import time

import httpx
import psutil
import pytest

from loadtests import sse
from loadtests.servers import free_ports
from tests.e2e.conftest import API_KEY, AUTH, dev_config, start_stack

MODEL = "tiny-llama"
REQUEST_TIMEOUT_S = 60
DIRECT_PORT, PROXY_PORT = free_ports(2)
DIRECT_URL = f"http://127.0.0.1:{DIRECT_PORT}"


@pytest.fixture(scope="module")
def faults_server(tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "serve-faults.log"
    with start_stack(dev_config(DIRECT_PORT, PROXY_PORT, keys=True), log, env={"SERVING_API_KEYS": API_KEY}) as server:
        yield server


def our_engine_cores(server) -> list[psutil.Process]:
    return server.descendants("VLLM::EngineCore")


async def assert_serving() -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        body = {"model": MODEL, "prompt": "hi", "max_tokens": 3}
        r = await client.post(f"{DIRECT_URL}/v1/completions", json=body, headers=AUTH)
    assert r.status_code == 200, r.text


async def stream_once(client: httpx.AsyncClient, max_tokens: int) -> tuple[str, int]:
    """One streaming chat; returns (outcome, tokens): ok | error:<why>."""
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    tokens, done = 0, False
    try:
        async with client.stream("POST", f"{DIRECT_URL}/v1/chat/completions", json=body, headers=AUTH) as r:
            if r.status_code != 200:
                body = (await r.aread()).decode(errors="replace")[:160]
                return f"error:http-{r.status_code}:{body}", 0
            async for event in sse.aiter_events(r.aiter_bytes()):
                data = event.json()
                if data == sse.DONE:
                    done = True
                elif "error" in data:
                    return "error:sse-error", 0
                elif data.get("usage"):
                    tokens = data["usage"]["completion_tokens"]
    except (httpx.TransportError, httpx.StreamError) as exc:
        return f"error:{type(exc).__name__}", 0
    if not done or tokens != max_tokens:
        return "error:truncated", tokens
    return "ok", tokens


async def test_engine_killed_during_load(faults_server):
    cores = our_engine_cores(faults_server)
    assert len(cores) == 1, f"expected one engine core in the dev stack, found {len(cores)}"
    events: list[tuple[float, float, str]] = []  # (start, end, outcome) per attempt
    answered_requests = 0
    kill_at = None
    stop_at = None
    deadline = time.monotonic() + 240

    async def client_loop(client):
        nonlocal answered_requests
        while time.monotonic() < deadline and (stop_at is None or time.monotonic() < stop_at):
            # a client that retries (with backoff) until its request succeeds or it gives up
            for attempt in range(200):
                start = time.monotonic()
                # Long generations, so the engine is generating at most moments (see chaos()).
                outcome, _ = await asyncio.wait_for(stream_once(client, 1000), REQUEST_TIMEOUT_S)
                events.append((start, time.monotonic(), outcome))
                if outcome == "ok":
                    answered_requests += 1
                    break
                await asyncio.sleep(min(2.0, 0.1 * (attempt + 1)))
            else:
                raise AssertionError("a request was never answered")

    async def chaos():
        nonlocal kill_at, stop_at
        await asyncio.sleep(4)
        # Kill while the engine is generating: "a client is waiting" is not enough, since a
        # request may be fully generated before the client has read it (CI once saw that).
        probe_until = time.monotonic() + 120
        async with httpx.AsyncClient(timeout=10) as probe:
            while (await probe.get(f"{DIRECT_URL}/stats", headers=AUTH)).json()[MODEL]["unfinished_requests"] < 1:
                assert time.monotonic() < probe_until, "the engine never had a request to generate"
                await asyncio.sleep(0.05)
        kill_at = time.monotonic()
        cores[0].send_signal(signal.SIGKILL)
        # keep the load on until the model has served again for 5 s
        while True:
            await asyncio.sleep(0.5)
            recovered = [e for e in events if e[0] > kill_at + 1 and e[2] == "ok"]
            if recovered:
                stop_at = time.monotonic() + 5
                return

    async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S, limits=httpx.Limits(max_connections=16)) as client:
        await asyncio.gather(chaos(), *(client_loop(client) for _ in range(6)))

    failures = [e for e in events if e[2] != "ok"]
    in_flight_at_kill = [e for e in failures if e[0] <= kill_at <= e[1]]
    after_kill = [e for e in failures if e[0] > kill_at]
    before_kill = [e for e in failures if e[1] < kill_at]
    first_ok_after = min(e[1] for e in events if e[0] > kill_at and e[2] == "ok")
    recovery_s = first_ok_after - kill_at
    print(
        f"\nengine kill: {len(events)} attempts, {answered_requests} requests answered, "
        f"{len(in_flight_at_kill)} failed in flight at the kill, {len(after_kill)} refused/failed while "
        f"the replica was replaced (retried), model serving again after {recovery_s:.1f}s"
    )
    assert not before_kill, f"failures before the kill: {before_kill}"
    assert in_flight_at_kill, "the kill hit no request in flight: the test did not test anything"
    # while the replica is down, requests fail fast (refused or 503) instead of hanging
    assert all(e[1] - e[0] < 10 for e in after_kill), "a request hung while the engine was down"
    assert recovery_s < 180
    # the dead engine's worker did not outlive it; the new replica has exactly one engine core
    await asyncio.sleep(2)
    assert len(our_engine_cores(faults_server)) == 1
    await assert_serving()


async def test_redeploy_drains_in_flight_streams(faults_server):
    config = dev_config(DIRECT_PORT, PROXY_PORT, keys=True)
    model = config["applications"][0]["args"]["models"][0]
    model.setdefault("env", {})["SERVING_DEPLOY_GENERATION"] = "2"  # a new runtime_env: new replicas
    before = {p.pid for p in our_engine_cores(faults_server)}

    short_outcomes: list[str] = []
    swapped = asyncio.Event()

    async def short_requests_until_swapped(client):
        # new requests keep arriving during the whole redeploy
        while not swapped.is_set():
            short_outcomes.append((await stream_once(client, 8))[0])
            await asyncio.sleep(0.2)

    async def wait_for_swap():
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            now = {p.pid for p in our_engine_cores(faults_server)}
            if now and not (now & before):
                swapped.set()
                return now
            await asyncio.sleep(1)
        swapped.set()
        return set()

    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=32)) as client:
        streams = [asyncio.create_task(stream_once(client, 1500)) for _ in range(20)]
        poller = asyncio.create_task(short_requests_until_swapped(client))
        await asyncio.sleep(1.0)
        assert not any(t.done() for t in streams), "streams finished before the redeploy started"
        # in a thread: the streams in flight are read by this event loop meanwhile
        deploy = await asyncio.to_thread(faults_server.deploy, config, 60)
        assert deploy.returncode == 0, deploy.stderr
        results = await asyncio.gather(*streams)
        now = await wait_for_swap()
        await poller

    broken = [r for r in results if r[0] != "ok"]
    failed_short = [o for o in short_outcomes if o != "ok"]
    print(
        f"\nredeploy: {len(results)} streams in flight, {len(broken)} broken; "
        f"{len(short_outcomes)} requests sent during the redeploy, {len(failed_short)} failed"
    )
    assert not broken, broken
    assert now, "the redeploy did not replace the engine"
    assert not failed_short, f"requests failed during the redeploy: {failed_short}"
    await assert_serving()
