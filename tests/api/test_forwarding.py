"""Requests placed on another replica move there as bytes and come back unchanged (serving/routing/forward.py).

Two or three "replicas" in the test's loop, each the real app (`build_api`)
over a simulated engine, served on real loopback HTTP by the direct ingress's
server (a shared port for clients, an own port for forwards, as a replica
has). Each replica's backend is a `RoutedBackend` over a hand-made endpoint
table, so a test decides where the scheduler must send a request (a replica
marked draining is not chosen). No Ray.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from loadtests import sse
from loadtests.servers import free_port
from serving.api.app import build_api
from serving.api.backend import ModelRegistry
from serving.api.fair_queue import Flow
from serving.api.forwarded import FORWARD_TOKEN_HEADER, REPLICA_HEADER
from serving.api.openai_serving import ADMISSION_HEADER, OpenAIServing
from serving.config import AuthConfig, LimitsConfig
from serving.deployments.direct.http_server import DirectHTTPServer, own_socket
from serving.engine.simulator import SimulatedEngine
from serving.routing.forward import PeerClient, RoutedBackend
from serving.routing.scheduler import DRAINING, READY, Endpoint, EndpointTable, Scheduler
from tests.inprocess import FAST, MODEL, seconds_until

TOKEN = "forward-token-for-tests"
KEY = "sk-forwarding-test-key"


@dataclass
class Replica:
    rid: str
    port: int  # the shared (client) port
    own_port: int  # the replica's own listener: where forwards go
    engine: Any
    table: EndpointTable
    http: DirectHTTPServer
    client: PeerClient
    serving: OpenAIServing | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.own_port}"


@pytest.fixture
async def replicas() -> AsyncIterator[Any]:
    made: list[Replica] = []

    async def make(
        rid: str,
        *,
        model: str = MODEL,
        limits: LimitsConfig | None = None,
        engine_args: dict[str, Any] | None = None,
        serve_model: bool = True,
        task: str = "generate",
        max_running: int | None = None,
    ) -> Replica:
        engine = SimulatedEngine.from_engine_args({**FAST, "decode_s_per_token": 0.002, **(engine_args or {})}, task)
        info = await engine.start()
        limits = limits or LimitsConfig()
        serving = OpenAIServing(
            engine,
            model,
            info.max_model_len,
            limits=limits,
            max_token_chars=info.max_token_chars,
            max_running=max_running,
        )
        table = EndpointTable(rid, own_load=lambda: serving.in_flight)
        client = PeerClient(TOKEN)
        backend = RoutedBackend(model, table, Scheduler(), client, local=serving if serve_model else None)
        sock = own_socket("127.0.0.1")
        app = build_api(
            ModelRegistry([backend], created=1),
            AuthConfig(api_keys_env="FWD_KEYS"),
            limits,
            forward_token=TOKEN,
            forward_port=sock.getsockname()[1],
        )
        port = free_port()
        http = await DirectHTTPServer.start(app, "127.0.0.1", port, graceful_timeout_s=1, extra_sockets=[sock])
        replica = Replica(rid, port, sock.getsockname()[1], engine, table, http, client, serving)
        made.append(replica)
        return replica

    yield make
    for r in made:
        await r.client.close()
        await r.http.stop()
        await r.engine.shutdown()


def connect(replicas: list[Replica], share: bool = False, **states: str) -> None:
    """Every replica's table lists them all (ready unless `states` says otherwise); with `share`, with the
    placements each reported, as the registry passes them on."""
    endpoints = [
        Endpoint(r.rid, MODEL, r.address, state=states.get(r.rid, READY), placed=r.table.report() if share else {})
        for r in replicas
    ]
    for r in replicas:
        r.table.update(endpoints)


@pytest.fixture(autouse=True)
def keys(monkeypatch):
    monkeypatch.setenv("FWD_KEYS", KEY)


AUTH = {"Authorization": f"Bearer {KEY}"}


def chat(stream: bool = False, **kw: Any) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": "tell me"}],
        "max_tokens": 12,
        "stream": stream,
        **kw,
    }


async def test_a_request_placed_on_another_replica_is_served_there_and_answered_where_it_entered(replicas):
    a, b = await replicas("a"), await replicas("b")
    connect([a, b], a=DRAINING)  # a takes no new request: it must go to b
    async with httpx.AsyncClient(timeout=30) as http:
        whole = await http.post(f"{a.url}/v1/chat/completions", json=chat(), headers=AUTH)
        streamed = await http.post(f"{a.url}/v1/chat/completions", json=chat(stream=True), headers=AUTH)
        here = await http.post(f"{b.url}/v1/chat/completions", json=chat(), headers=AUTH)
    assert whole.status_code == 200 and whole.headers[REPLICA_HEADER] == "b", whole.text
    assert streamed.status_code == 200 and streamed.headers[REPLICA_HEADER] == "b"
    assert here.headers[REPLICA_HEADER] == "b" and here.status_code == 200
    events = sse.parse(streamed.content)
    assert events[-1] == sse.DONE
    assert events[-2]["choices"][0]["finish_reason"] == "length"
    assert whole.json()["usage"]["completion_tokens"] == 12 and whole.json()["choices"][0]["message"]["content"]
    assert (await a.engine.stats())["requests"] == 0  # a's engine served none of them
    assert (await b.engine.stats())["requests"] == 3


async def test_the_serving_replica_s_admission_wait_is_stated_where_the_request_entered(replicas):
    """x-serving-admission-ms is the wait in the fair queue of the replica that served the request, relayed
    by the entry point (streamed or not); the entry point's own queue was not asked."""
    a, b = await replicas("a", max_running=1), await replicas("b", max_running=1)
    connect([a, b], a=DRAINING)  # a takes no new request: it must go to b
    assert b.serving is not None and b.serving.queue is not None
    queue = b.serving.queue
    held = queue.arrive(Flow("holder", "holder"))  # b's one place, until the test frees it
    async with httpx.AsyncClient(timeout=30) as http:
        sends = [
            asyncio.ensure_future(http.post(f"{a.url}/v1/chat/completions", json=chat(stream=s), headers=AUTH))
            for s in (False, True)
        ]

        async def both_wait() -> bool:
            return queue.queued == 2

        assert await seconds_until(both_wait, 10) is not None
        await asyncio.sleep(0.3)
        queue.leave(held)
        answers = await asyncio.gather(*sends)
        here = await http.post(f"{b.url}/v1/chat/completions", json=chat(), headers=AUTH)
    for r in answers:
        assert r.status_code == 200 and r.headers[REPLICA_HEADER] == "b", r.text
        assert float(r.headers[ADMISSION_HEADER]) >= 300, r.headers
    assert here.headers[ADMISSION_HEADER] == "0.0"


async def test_the_forward_token_admits_a_request_only_on_a_replica_s_own_port(replicas):
    b = await replicas("b")
    connect([b])
    url, own = f"{b.url}/v1/chat/completions", f"http://{b.address}/v1/chat/completions"
    async with httpx.AsyncClient(timeout=30) as http:
        trusted = await http.post(own, json=chat(), headers={FORWARD_TOKEN_HEADER: TOKEN})
        guessed = await http.post(own, json=chat(), headers={FORWARD_TOKEN_HEADER: "guess", **AUTH})
        public = await http.post(url, json=chat(), headers={FORWARD_TOKEN_HEADER: TOKEN})  # a leaked token
        no_key = await http.post(own, json=chat())
        keyed = await http.post(own, json=chat(), headers=AUTH)
    assert trusted.status_code == 200, trusted.text
    for refused in (guessed, public):  # claims to be forwarded: refused, never served or placed again
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "invalid_forward_token", refused.text
    assert no_key.status_code == 401 and no_key.json()["error"]["code"] == "invalid_api_key"
    assert keyed.status_code == 200  # an ordinary client on the own port: the key suffices


async def test_the_entry_point_charges_the_caller_once_and_settles_from_the_forwarded_stream(replicas):
    limits = LimitsConfig(tokens_per_minute=100_000, requests_per_minute=2)
    a, b = await replicas("a", limits=limits), await replicas("b", limits=limits)
    connect([a, b], a=DRAINING)
    async with httpx.AsyncClient(timeout=30) as http:
        first = await http.post(f"{a.url}/v1/chat/completions", json=chat(stream=True), headers=AUTH)
        second = await http.post(f"{a.url}/v1/chat/completions", json=chat(), headers=AUTH)
        third = await http.post(f"{a.url}/v1/chat/completions", json=chat(), headers=AUTH)
        at_b = [await http.post(f"{b.url}/v1/chat/completions", json=chat(), headers=AUTH) for _ in range(2)]
    assert first.status_code == 200 and second.status_code == 200
    assert third.status_code == 429  # a's budget: 2 requests a minute, wherever they were served
    assert [r.status_code for r in at_b] == [200, 200]  # b charged none of a's: its own budget is whole
    events = sse.parse(first.content)[:-1]
    assert all("usage" not in e or e["usage"] is None for e in events), events[-1]  # not asked for: not shown


async def test_a_replica_s_refusal_reaches_the_client_as_it_is(replicas):
    a, b = await replicas("a"), await replicas("b", engine_args={"max_model_len": 64})
    connect([a, b], a=DRAINING)
    async with httpx.AsyncClient(timeout=30) as http:
        r = await http.post(f"{a.url}/v1/chat/completions", json=chat(max_tokens=500), headers=AUTH)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "context_length_exceeded"
    assert "x-serving-reason" not in r.headers  # said between the replicas only


async def test_an_unreachable_replica_is_skipped(replicas):
    a, b = await replicas("a"), await replicas("b")
    gone = Endpoint("gone", MODEL, f"127.0.0.1:{free_port()}")  # listed, but nothing listens there
    for r in (a, b):
        r.table.update([gone, Endpoint("a", MODEL, a.address, state=DRAINING), Endpoint("b", MODEL, b.address)])
    async with httpx.AsyncClient(timeout=30) as http:
        answers = [
            await http.post(
                f"{a.url}/v1/chat/completions", json=chat(messages=[{"role": "user", "content": str(i)}]), headers=AUTH
            )
            for i in range(6)
        ]
    assert [r.status_code for r in answers] == [200] * 6
    assert {r.headers[REPLICA_HEADER] for r in answers} == {"b"}


async def test_a_client_that_leaves_mid_stream_stops_the_replica_that_serves_it(replicas):
    a, b = await replicas("a"), await replicas("b", engine_args={"decode_s_per_token": 0.05})
    connect([a, b], a=DRAINING)
    async with httpx.AsyncClient(timeout=30) as http:
        async with http.stream(
            "POST", f"{a.url}/v1/chat/completions", json=chat(True, max_tokens=400), headers=AUTH
        ) as r:
            async for _ in r.aiter_bytes():
                break  # one chunk, then the client leaves

    async def idle() -> bool:
        stats = await b.engine.stats()
        return stats["running"] == 0 and stats["waiting"] == 0

    assert await seconds_until(idle, 3) is not None, await b.engine.stats()


async def test_a_replica_s_503_sends_the_request_to_the_next_replica(replicas):
    """A replica that cannot take it (here: its engine is down) answers 503 before generating: the next one serves."""
    a, b, c = await replicas("a"), await replicas("b"), await replicas("c")
    connect([a, b, c], a=DRAINING)
    await b.engine.shutdown()  # b's engine is gone: 503, nothing generated
    async with httpx.AsyncClient(timeout=30) as http:
        answers = [
            await http.post(
                f"{a.url}/v1/chat/completions",
                json=chat(messages=[{"role": "user", "content": f"q {i}"}]),
                headers=AUTH,
            )
            for i in range(8)
        ]
    assert [r.status_code for r in answers] == [200] * 8, [r.text for r in answers if r.status_code != 200]
    assert {r.headers[REPLICA_HEADER] for r in answers} == {"c"}


async def test_a_forwarded_stream_is_cut_only_between_events(replicas):
    """However the bytes arrive, the entry point passes on whole events (the usage event is found and removed)."""
    limits = LimitsConfig(tokens_per_minute=1_000_000)
    a, b = await replicas("a", limits=limits), await replicas("b", limits=limits)
    connect([a, b], a=DRAINING)
    async with httpx.AsyncClient(timeout=30) as http:
        r = await http.post(f"{a.url}/v1/chat/completions", json=chat(stream=True, max_tokens=300), headers=AUTH)
    events = sse.parse(r.content)
    assert events[-1] == sse.DONE and events[-2]["choices"][0]["finish_reason"] == "length"
    assert all(e.get("usage") is None for e in events[:-1])


async def test_a_forwarded_request_is_never_forwarded_again(replicas):
    """A replica without the model (its table stale) answers 503 rather than passing the request on."""
    c = await replicas("c", serve_model=False)
    b = await replicas("b")
    connect([c, b])
    async with httpx.AsyncClient(timeout=30) as http:
        r = await http.post(
            f"http://{c.address}/v1/chat/completions", json=chat(), headers={FORWARD_TOKEN_HEADER: TOKEN}
        )
    assert r.status_code == 503 and r.json()["error"]["code"] == "replica_unavailable", r.text
    assert (await b.engine.stats())["requests"] == 0


async def test_prefix_affinity_across_entry_points(replicas):
    """A new prompt is served where it enters; once that is reported, it is served there from every entry point."""
    rs = [await replicas(rid) for rid in ("a", "b", "c")]
    connect(rs)
    served: dict[str, set[str]] = {}
    async with httpx.AsyncClient(timeout=30) as http:
        for i in range(12):
            body = chat(messages=[{"role": "system", "content": f"tenant {i} " * 30}, {"role": "user", "content": "q"}])
            first = rs[i % 3]
            answer = await http.post(f"{first.url}/v1/chat/completions", json=body, headers=AUTH)
            assert answer.status_code == 200, answer.text
            assert answer.headers[REPLICA_HEADER] == first.rid  # nobody holds it: no hop
            connect(rs, share=True)  # the registry's next refresh
            for r in rs:
                answer = await http.post(f"{r.url}/v1/chat/completions", json=body, headers=AUTH)
                assert answer.status_code == 200, answer.text
                served.setdefault(f"tenant {i}", set()).add(answer.headers[REPLICA_HEADER])
    assert all(len(where) == 1 for where in served.values()), served
    assert {next(iter(w)) for w in served.values()} == {"a", "b", "c"}, served


class SplitResponse:
    """Stands in for aiohttp's response: the body in the pieces a slow network might give."""

    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = pieces
        self.released = self.closed = False

        class Content:
            async def iter_any(inner) -> AsyncIterator[bytes]:
                for piece in pieces:
                    yield piece

        self.content = Content()

    def release(self) -> None:
        self.released = True

    def close(self) -> None:
        self.closed = True


async def test_events_are_reassembled_from_any_split_of_the_bytes():
    from serving.routing.forward import _events

    body = b'data: {"a":1}\n\ndata: {"b":2,"usage":{"total_tokens":3}}\n\ndata: [DONE]\n\n'
    for cut in range(1, len(body)):
        resp = SplitResponse([body[:cut], body[cut:]])
        chunks = [c async for c in _events(resp)]  # type: ignore[arg-type]
        assert b"".join(chunks) == body and all(c.endswith(b"\n\n") for c in chunks), (cut, chunks)
        assert resp.released and not resp.closed
    truncated = SplitResponse([body[:20]])
    with pytest.raises(Exception, match="inside an event"):
        [c async for c in _events(truncated)]  # type: ignore[arg-type]
    assert truncated.closed


async def test_a_response_placed_on_another_replica_goes_as_the_chat_it_amounts_to(replicas):
    """/v1/responses at an entry point whose replica drains: its chat is forwarded as JSON the other replica
    parses strictly (aliased fields such as `json_schema.schema` included), streamed or not."""
    a, b = await replicas("a"), await replicas("b")
    connect([a, b], a=DRAINING)
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    body = {
        "model": MODEL,
        "input": "ok?",
        "instructions": "JSON only.",
        "text": {"format": {"type": "json_schema", "name": "answer", "schema": schema}},
    }
    async with httpx.AsyncClient(timeout=30) as http:
        whole = await http.post(f"{a.url}/v1/responses", json=body, headers=AUTH)
        streamed = await http.post(f"{a.url}/v1/responses", json={**body, "stream": True}, headers=AUTH)
    assert whole.status_code == 200 and whole.headers[REPLICA_HEADER] == "b", whole.text
    assert json.loads(whole.json()["output"][0]["content"][0]["text"]) == {"ok": True}
    assert streamed.status_code == 200 and streamed.headers[REPLICA_HEADER] == "b", streamed.text
    assert b"event: response.completed" in streamed.content
    assert (await b.engine.stats())["requests"] == 2 and (await a.engine.stats())["requests"] == 0


async def test_a_forwarded_refusal_names_the_parameter_as_the_responses_client_sent_it(replicas):
    a, b = await replicas("a"), await replicas("b")
    connect([a, b], a=DRAINING)
    fmt = {"type": "json_schema", "name": "x", "schema": {"type": "string", "pattern": "("}}
    async with httpx.AsyncClient(timeout=30) as http:
        r = await http.post(
            f"{a.url}/v1/responses", json={"model": MODEL, "input": "x", "text": {"format": fmt}}, headers=AUTH
        )
    assert r.status_code == 400 and r.json()["error"]["param"] == "text.format.schema", r.text
    assert (await b.engine.stats())["requests"] == 0  # refused by b before its engine


async def test_an_embeddings_request_is_forwarded_as_bytes(replicas):
    limits = LimitsConfig(tokens_per_minute=1000)
    a = await replicas("a", task="embed", limits=limits, engine_args={"embedding_size": 8})
    b = await replicas("b", task="embed", limits=limits, engine_args={"embedding_size": 8})
    connect([a, b], a=DRAINING)  # a takes no new request: it must go to b
    body = {"model": MODEL, "input": ["one two three", "four"], "encoding_format": "float"}
    async with httpx.AsyncClient(timeout=30) as http:
        forwarded = await http.post(f"{a.url}/v1/embeddings", json=body, headers=AUTH)
        here = await http.post(f"{b.url}/v1/embeddings", json=body, headers=AUTH)
    assert forwarded.status_code == 200 and forwarded.headers[REPLICA_HEADER] == "b", forwarded.text
    assert forwarded.json()["data"] == here.json()["data"] and len(forwarded.json()["data"]) == 2
    assert forwarded.json()["usage"] == {"prompt_tokens": 5, "total_tokens": 5}  # the simulator: "thre" "e"
    assert (await a.engine.stats())["requests"] == 0 and (await b.engine.stats())["requests"] == 2
