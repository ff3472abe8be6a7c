"""A bounded fuzz run of the OpenAI routes, generated from the app's own OpenAPI schema.

Schemathesis turns `app.openapi()` into Hypothesis strategies: positive cases
(bodies the schema allows) and negative ones (bodies it forbids, raw bytes).
Our own mutations of a valid request add what a schema-driven generator does
not produce: wrong types on every field, deleted required fields, unknown keys,
truncated or re-encoded bytes. Every call goes through the real FastAPI app and
OpenAIServing on the simulated engine, with API keys on.

The contract, for every example: no 5xx; every non-2xx is OpenAI's error body
(exactly message/type/param/code under "error"); every call is answered within
CALL_TIMEOUT_S; a 200 stream ends with [DONE]. About 300 examples, well under
a minute on 2 cores.
"""

from __future__ import annotations

import asyncio
import copy
import json
import time
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.core import NOT_SET
from schemathesis.generation.modes import GenerationMode

from loadtests import sse
from serving.config import AuthConfig, LimitsConfig
from tests.inprocess import MODEL, simulated_app

KEY_ENV = "SERVING_TEST_FUZZ_KEYS"
KEY = "sk-fuzz-test-key-0001"
AUTH = {"Authorization": f"Bearer {KEY}"}
CALL_TIMEOUT_S = 10.0
# Fast timings and a small context keep the worst example (n=128 choices up to
# the context) cheap; a small vocabulary makes token-id prompts easy to get wrong.
ENGINE_ARGS = {
    "ttft_base_s": 0.0,
    "prefill_s_per_token": 0.0,
    "decode_s_per_token": 0.0,
    "max_model_len": 64,
    "vocab_size": 1015,
}
EXAMPLES_PER_RUN = 60  # x 5 runs = 300 examples
ROUTES = ["/v1/chat/completions", "/v1/completions"]
FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES_PER_RUN,
    deadline=None,
    database=None,
    derandomize=True,  # the same examples every run: a failure reproduces
    suppress_health_check=list(HealthCheck),
)


# -- the app and the schema ------------------------------------------------------------


class Harness:
    """One app on its own event loop; the fuzz tests are synchronous (Hypothesis drives them)."""

    def __init__(self, monkeypatch) -> None:
        monkeypatch.setenv(KEY_ENV, KEY)
        self.loop = asyncio.new_event_loop()
        self.api = self.loop.run_until_complete(
            simulated_app(
                ENGINE_ARGS,
                max_in_flight=64,
                auth=AuthConfig(api_keys_env=KEY_ENV),
                limits=LimitsConfig(max_body_bytes=64_000, request_timeout_s=5.0),
            )
        )
        self.app, self.engine, self.serving, self.http = self.api.app, self.api.engine, self.api.serving, self.api.http
        self.calls = 0
        self.statuses: dict[int, int] = {}
        self.slowest = 0.0
        self.started = time.monotonic()

    def close(self) -> None:
        self.loop.run_until_complete(self.api.aclose())
        self.loop.close()

    def call(self, path: str, content: bytes | None, headers: dict[str, str]) -> httpx.Response:
        t0 = time.perf_counter()
        try:
            r = self.loop.run_until_complete(
                asyncio.wait_for(self.http.post(path, content=content, headers=headers), CALL_TIMEOUT_S)
            )
        except TimeoutError:
            pytest.fail(f"no answer within {CALL_TIMEOUT_S}s: POST {path} {content[:300]!r}")
        elapsed = time.perf_counter() - t0
        self.slowest = max(self.slowest, elapsed)
        self.calls += 1
        self.statuses[r.status_code] = self.statuses.get(r.status_code, 0) + 1
        check_response(r, path, content)
        return r


def check_response(r: httpx.Response, path: str, content: bytes | None) -> None:
    where = f"POST {path} {(content or b'')[:400]!r} -> {r.status_code} {r.text[:400]}"
    assert r.status_code < 500, where
    if r.status_code < 300:
        if r.headers["content-type"].startswith("text/event-stream"):
            try:
                events = sse.parse(r.content)
            except sse.SSEError as exc:
                pytest.fail(f"{exc}: {where}")
            for event in events[:-1]:
                if "error" in event:
                    assert set(event["error"]) == {"message", "type", "param", "code"}, where
        else:
            assert "choices" in r.json(), where
        return
    body = r.json()
    assert set(body) == {"error"}, where
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}, where
    assert isinstance(err["message"], str) and err["message"], where
    assert isinstance(err["type"], str) and err["type"], where
    assert err["param"] is None or isinstance(err["param"], str), where
    assert err["code"] is None or isinstance(err["code"], str), where


@pytest.fixture(scope="module")
def harness():
    mp = pytest.MonkeyPatch()
    h = Harness(mp)
    yield h
    h.close()
    mp.undo()
    print(f"\nfuzz: {h.calls} calls, statuses {dict(sorted(h.statuses.items()))}, slowest {h.slowest * 1000:.0f} ms")


def dangling_refs(schema: dict) -> list[str]:
    """Every local $ref in `schema` that does not resolve within it."""
    bad = []

    def resolves(ref: str) -> bool:
        node: Any = schema
        for part in ref.removeprefix("#/").split("/"):
            if not isinstance(node, dict) or part not in node:
                return False
            node = node[part]
        return True

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/") and not resolves(ref):
                bad.append(ref)
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(schema)
    return sorted(set(bad))


def resolvable(openapi: dict) -> dict:
    """The served schema with request-body `$defs` hoisted to components (see test_openapi_refs_resolve)."""
    doc = copy.deepcopy(openapi)
    components = doc.setdefault("components", {}).setdefault("schemas", {})
    for item in doc["paths"].values():
        for op in item.values():
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
            if isinstance(body, dict) and "$defs" in body:
                components.update(body.pop("$defs"))
    return doc


def test_openapi_refs_resolve(harness):
    """The served schema must be self-contained: clients and tools (SDK generators,
    schemathesis) resolve `$ref`s against the document. The request bodies of the
    generation routes point to #/components/schemas/<Model> while the models sit
    in a nested `$defs`; loaded as served, schemathesis silently sends no body at all."""
    schema = harness.app.openapi()
    assert {"/v1/chat/completions", "/v1/completions"} <= set(schema["paths"])
    assert dangling_refs(schema) == []


@pytest.fixture(scope="module")
def api_schema(harness):
    doc = resolvable(harness.app.openapi())
    assert dangling_refs(doc) == []
    return schemathesis.openapi.from_dict(doc)


# -- generated from the schema ---------------------------------------------------------


def encode(body: Any) -> bytes | None:
    if body is NOT_SET or body is None:
        return None
    if isinstance(body, (bytes, bytearray)):
        return bytes(body)
    if isinstance(body, str):
        return body.encode("utf-8", "surrogatepass")
    return json.dumps(body).encode()  # lone surrogates become \ud800 escapes, as a client's JSON would


def run_schema_fuzz(harness, api_schema, path: str, mode: GenerationMode) -> None:
    strategy = api_schema[path]["POST"].as_strategy(generation_mode=mode)

    @FUZZ_SETTINGS
    @given(case=strategy, real_model=st.booleans(), with_key=st.integers(0, 9))
    def run(case, real_model, with_key):
        body = case.body
        if real_model and isinstance(body, dict):
            body = {**body, "model": MODEL}  # get past the 404 to the deeper checks
        headers = {"content-type": case.media_type or "application/json"}
        if with_key:  # one in ten without a key: 401 bodies are checked too
            headers.update(AUTH)
        harness.call(path, encode(body), headers)

    before = harness.calls
    run()
    assert harness.calls - before >= EXAMPLES_PER_RUN * 0.8, harness.calls - before


@pytest.mark.parametrize("path", ROUTES)
def test_schema_positive(harness, api_schema, path):
    run_schema_fuzz(harness, api_schema, path, GenerationMode.POSITIVE)


@pytest.mark.parametrize("path", ROUTES)
def test_schema_negative(harness, api_schema, path):
    run_schema_fuzz(harness, api_schema, path, GenerationMode.NEGATIVE)


# -- mutations of valid requests -------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)
VALID = {
    "/v1/chat/completions": {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hello there"}],
        "max_tokens": 3,
        "temperature": 0.5,
        "top_p": 0.9,
        "n": 1,
        "stop": ["zz"],
        "seed": 1,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "stream": False,
        "logprobs": True,
        "top_logprobs": 2,
        "user": "u",
        "response_format": {"type": "text"},
    },
    "/v1/completions": {
        "model": MODEL,
        "prompt": "hello there",
        "max_tokens": 3,
        "temperature": 0.5,
        "top_p": 0.9,
        "n": 1,
        "stop": "zz",
        "seed": 1,
        "stream": False,
        "logprobs": 2,
        "user": "u",
    },
}


@st.composite
def mutated(draw):
    path = draw(st.sampled_from(ROUTES))
    body: dict[str, Any] = copy.deepcopy(VALID[path])
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["replace", "delete", "add", "nest"]))
        keys = sorted(body)
        if op == "replace" and keys:
            body[draw(st.sampled_from(keys))] = draw(json_values)
        elif op == "delete" and keys:
            body.pop(draw(st.sampled_from(keys)))
        elif op == "add":
            body[draw(st.text(min_size=1, max_size=12))] = draw(json_values)
        elif op == "nest" and "messages" in body:
            # a "replace" before may have left messages of any JSON value: nest into a message only if it is one
            messages = body.get("messages")
            msg = dict(messages[0]) if isinstance(messages, list) and messages and isinstance(messages[0], dict) else {}
            field = draw(st.sampled_from(["role", "content", "name", "extra"]))
            msg[field] = draw(json_values | st.sampled_from(["tool", "", "user"]))
            body["messages"] = [msg]
        elif op == "nest":
            body["prompt"] = draw(
                st.lists(st.integers(-5, 2000), max_size=5) | st.lists(st.text(max_size=5), max_size=3) | json_values
            )
    raw = json.dumps(body).encode()
    damage = draw(st.sampled_from(["none", "none", "none", "truncate", "latin1", "wrap", "deep", "bigint"]))
    if damage == "deep":  # nesting deeper than any parser's recursion limit, well under the body limit
        depth = draw(st.integers(900, 20_000))
        raw = (
            raw[:-1]
            + b', "'
            + draw(st.sampled_from(sorted(body) or ["x"])).encode()
            + b'": '
            + b"[" * depth
            + b"]" * depth
            + b"}"
        )
    elif damage == "bigint":  # an integer literal longer than Python's int/str conversion limit
        raw = (
            raw[:-1]
            + b', "'
            + draw(st.sampled_from(["max_tokens", "n", "seed", "temperature"])).encode()
            + b'": '
            + b"9" * draw(st.integers(4301, 20_000))
            + b"}"
        )
    elif damage == "truncate":
        raw = raw[: draw(st.integers(0, max(0, len(raw) - 1)))]
    elif damage == "latin1":
        raw = json.dumps(body, ensure_ascii=False).encode("latin-1", "replace") + b"\xff"
    elif damage == "wrap":
        raw = json.dumps(draw(st.sampled_from([[body], "x", 3, None, True]))).encode()
    return path, raw


@FUZZ_SETTINGS
@given(example=mutated())
def _mutation_run(harness, example):
    path, raw = example
    harness.call(path, raw, {"content-type": "application/json", **AUTH})


def test_mutations(harness):
    before = harness.calls
    _mutation_run(harness)
    assert harness.calls - before >= EXAMPLES_PER_RUN * 0.8, harness.calls - before


def test_fuzz_totals(harness):
    """Runs last in this module: the fuzz run stayed bounded and the app still serves."""
    assert harness.slowest < CALL_TIMEOUT_S
    assert time.monotonic() - harness.started < 60
    r = harness.call(
        "/v1/chat/completions",
        json.dumps(VALID["/v1/chat/completions"]).encode(),
        {"content-type": "application/json", **AUTH},
    )
    assert r.status_code == 200
    stats = harness.loop.run_until_complete(harness.engine.stats())
    assert stats["running"] == 0 and harness.serving.in_flight == 0
