"""Malformed requests against the real dev server: the right 4xx, OpenAI's error body, and it keeps serving.

`CASES` is the table (its length is asserted below, so the count is visible):
every case goes to the direct ingress, the ones marked `proxy` also
through Ray Serve's proxy -> ingress deployment path. For each:

* the status is the expected one (a handful of cases may legitimately be
  served, e.g. NUL bytes or lone surrogates in a string: those accept 200 or
  any 4xx, never a 5xx);
* a non-2xx body is exactly `{"error": {"message", "type", "param", "code"}}`,
  with the expected `code`/`param` where the case names them;
* a valid request sent right after it succeeds (200).

Types are checked the way OpenAI checks them: a JSON string is not an integer,
a boolean or a float, even when it looks like one ("5", "true", "0.7").
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import AUTH, DIRECT_URL, PROXY_URL

MODEL = "tiny-llama"
CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"
MESSAGES = [{"role": "user", "content": "hi"}]
VALID_CHAT = {"model": MODEL, "messages": MESSAGES, "max_tokens": 1}
MAX_MODEL_LEN = 2048  # configs/dev.yaml
ERROR_KEYS = {"message", "type", "param", "code"}
DROP = object()  # a field value meaning "leave this field out"
OK_OR_4XX = "200-or-4xx"  # the server may serve it or refuse it, never fail on it


@dataclass
class Case:
    id: str
    status: int | str
    body: dict[str, Any] | bytes | None = None
    path: str = CHAT_PATH
    code: str | None = None
    param: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    method: str = "POST"
    proxy: bool = False  # also sent through Ray Serve's proxy

    def content(self) -> bytes | None:
        if self.body is None or isinstance(self.body, bytes):
            return self.body
        return json.dumps(self.body).encode()


def chat(**fields: Any) -> dict[str, Any]:
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 2, **fields}
    return {k: v for k, v in body.items() if v is not DROP}


RESPONSES_PATH = "/v1/responses"


def response(**fields: Any) -> dict[str, Any]:
    body = {"model": MODEL, "input": "hi", "max_output_tokens": 2, **fields}
    return {k: v for k, v in body.items() if v is not DROP}


def completion(**fields: Any) -> dict[str, Any]:
    body = {"model": MODEL, "prompt": "hi", "max_tokens": 2, **fields}
    return {k: v for k, v in body.items() if v is not DROP}


def raw_chat(tail: bytes) -> bytes:
    """A chat body whose last field is the given raw JSON text (for what json.dumps cannot write)."""
    return b'{"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, ' + tail + b"}"


def tool(name: str, parameters: Any = None) -> dict[str, Any]:
    function: dict[str, Any] = {"name": name}
    if parameters is not None:
        function["parameters"] = parameters
    return {"type": "function", "function": function}


def deep_schema(depth: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "array", "items": schema}
    return schema


SCHEMA_PARAM = "response_format.json_schema.schema"


def json_schema_format(schema: Any) -> dict[str, Any]:
    """A `response_format` asking for `schema` (any JSON value: the bad cases send non-objects too)."""
    return {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}


LONG_TEXT = "one two three four five six seven eight nine ten " * 400  # > 2048 tokens
# over the derived max_body_bytes: 1,000,000 (the floor) at a 2,048 context
OVER_LIMIT = b'{"model": "tiny-llama", "prompt": "' + b"a" * 1_200_000 + b'"}'

CASES: list[Case] = [
    # -- the body as a whole ----------------------------------------------------------
    Case("broken-json-truncated", 400, b'{"model": "tiny-llama", "messages": [', proxy=True),
    Case("empty-body", 400, b"", proxy=True),
    Case("json-array-body", 400, b'[{"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}]}]'),
    Case("json-string-body", 400, b'"hello"'),
    Case("json-number-body", 400, b"42"),
    Case("json-null-body", 400, b"null"),
    Case("trailing-garbage", 400, json.dumps(VALID_CHAT).encode() + b" trailing"),
    Case(
        "invalid-utf8",
        400,
        b'{"model": "tiny-llama", "messages": [{"role": "user", "content": "\xff\xfe\xc3("}]}',
        proxy=True,
    ),
    Case("nesting-too-deep", 400, raw_chat(b'"user": ' + b"[" * 100_000 + b"]" * 100_000), proxy=True),
    Case("integer-with-5000-digits", 400, raw_chat(b'"seed": ' + b"9" * 5000)),
    Case("nan-temperature", 400, raw_chat(b'"temperature": NaN'), param="temperature"),
    Case(
        "content-type-text-plain",
        415,
        json.dumps(VALID_CHAT).encode(),
        headers={"content-type": "text/plain"},
        proxy=True,
    ),
    Case("content-type-form", 415, b"model=tiny-llama", headers={"content-type": "application/x-www-form-urlencoded"}),
    Case("body-over-limit", 413, OVER_LIMIT, path=COMPLETIONS_PATH, proxy=True),
    # -- model ------------------------------------------------------------------------
    Case("model-int", 400, chat(model=5), param="model"),
    Case("model-null", 400, chat(model=None), param="model"),
    Case("model-missing", 400, chat(model=DROP), code="missing_required_parameter", param="model"),
    Case("model-empty", 400, chat(model=""), param="model"),
    Case("model-unknown", 404, chat(model="no-such-model"), code="model_not_found", param="model", proxy=True),
    Case("model-unknown-stream", 404, chat(model="no-such-model", stream=True), code="model_not_found"),
    Case("model-non-ascii", 404, chat(model="modèle-ü"), code="model_not_found", param="model", proxy=True),
    Case("model-with-nul", 404, chat(model="tiny-llama\u0000"), code="model_not_found"),
    # -- messages ---------------------------------------------------------------------
    Case("messages-string", 400, chat(messages="hi"), param="messages"),
    Case("messages-missing", 400, chat(messages=DROP), code="missing_required_parameter", param="messages"),
    Case("messages-null", 400, chat(messages=None), param="messages"),
    Case("message-is-string", 400, chat(messages=["hi"])),
    Case("role-unknown", 400, chat(messages=[{"role": "tool_result", "content": "x"}]), param="messages.0.role"),
    Case("role-missing", 400, chat(messages=[{"content": "x"}]), code="missing_required_parameter"),
    Case("role-int", 400, chat(messages=[{"role": 1, "content": "x"}])),
    Case("content-number", 400, chat(messages=[{"role": "user", "content": 42}]), proxy=True),
    Case("content-dict", 400, chat(messages=[{"role": "user", "content": {"text": "hi"}}])),
    Case("content-null-for-user", 400, chat(messages=[{"role": "user", "content": None}])),
    Case(
        "content-part-unknown-type",
        400,
        chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]),
    ),
    Case("content-part-without-text", 400, chat(messages=[{"role": "user", "content": [{"type": "text"}]}])),
    Case(
        "message-unknown-field",
        400,
        chat(messages=[{"role": "user", "content": "x", "mood": "happy"}]),
        code="unknown_parameter",
    ),
    Case("name-int", 400, chat(messages=[{"role": "user", "content": "x", "name": 7}])),
    # -- max_tokens -------------------------------------------------------------------
    Case("max-tokens-string", 400, chat(max_tokens="5"), param="max_tokens", proxy=True),
    Case("max-tokens-float", 400, chat(max_tokens=5.5), param="max_tokens"),
    Case("max-tokens-bool", 400, chat(max_tokens=True), param="max_tokens"),
    Case("max-tokens-zero", 400, chat(max_tokens=0), param="max_tokens"),
    Case("max-completion-tokens-negative", 400, chat(max_completion_tokens=-1), param="max_completion_tokens"),
    Case("max-tokens-over-context", 400, chat(max_tokens=10**9), code="context_length_exceeded", proxy=True),
    Case("max-tokens-over-int64", 400, chat(max_tokens=2**70), code="context_length_exceeded"),
    Case(
        "max-tokens-over-context-completions",
        400,
        completion(max_tokens=MAX_MODEL_LEN),
        path=COMPLETIONS_PATH,
        code="context_length_exceeded",
    ),
    # -- sampling ---------------------------------------------------------------------
    Case("temperature-string", 400, chat(temperature="hot"), param="temperature"),
    Case("temperature-numeric-string", 400, chat(temperature="0.7"), param="temperature"),
    Case("temperature-negative", 400, chat(temperature=-0.1), param="temperature"),
    Case("temperature-above-2", 400, chat(temperature=2.01), param="temperature"),
    Case("top-p-above-1", 400, chat(top_p=1.5), param="top_p"),
    Case("top-p-negative", 400, chat(top_p=-0.5), param="top_p"),
    Case("n-float", 400, chat(n=1.5), param="n"),
    Case("n-string", 400, chat(n="2"), param="n"),
    Case("n-too-large", 400, chat(n=129), param="n", proxy=True),
    Case("n-huge", 400, chat(n=10**6), param="n"),
    Case("presence-penalty-above-2", 400, chat(presence_penalty=2.5), param="presence_penalty"),
    Case("frequency-penalty-below-minus-2", 400, chat(frequency_penalty=-2.5), param="frequency_penalty"),
    Case("presence-penalty-string", 400, chat(presence_penalty="high"), param="presence_penalty"),
    Case("seed-string", 400, chat(seed="abc"), param="seed"),
    Case("seed-over-uint64", 400, chat(seed=2**64), param="seed"),
    Case("top-k-below-minus-1", 400, chat(top_k=-2), param="top_k"),
    Case("min-tokens-negative", 400, chat(min_tokens=-1), param="min_tokens"),
    Case("min-tokens-over-max-tokens", 400, chat(min_tokens=10, max_tokens=2)),
    Case("user-int", 400, chat(user=3), param="user"),
    # -- stop -------------------------------------------------------------------------
    Case("stop-int", 400, chat(stop=5)),
    Case("stop-dict", 400, chat(stop={"a": 1})),
    Case("stop-list-of-ints", 400, chat(stop=[1, 2])),
    Case("stop-too-many", 400, chat(stop=[str(i) for i in range(10)]), param="stop", proxy=True),
    Case("stop-empty-string", 400, chat(stop=""), param="stop"),
    Case("stop-list-with-empty", 400, chat(stop=["a", ""]), param="stop"),
    # -- stream, logprobs -------------------------------------------------------------
    Case("stream-string", 400, chat(stream="true"), param="stream"),
    Case("stream-options-without-stream", 400, chat(stream_options={"include_usage": True})),
    Case(
        "stream-options-unknown-field",
        400,
        chat(stream=True, stream_options={"include_usage": True, "x": 1}),
        code="unknown_parameter",
    ),
    Case("logprobs-string", 400, chat(logprobs="true"), param="logprobs"),
    Case("top-logprobs-above-20", 400, chat(logprobs=True, top_logprobs=21), param="top_logprobs"),
    Case("top-logprobs-negative", 400, chat(logprobs=True, top_logprobs=-1), param="top_logprobs"),
    # -- response_format --------------------------------------------------------------
    Case("response-format-string", 400, chat(response_format="json"), param="response_format"),
    Case(
        "response-format-unknown-type",
        400,
        chat(response_format={"type": "xml"}),
        param="response_format.type",
        proxy=True,
    ),
    Case("response-format-json-schema-missing", 400, chat(response_format={"type": "json_schema"})),
    Case(
        "response-format-schema-not-object",
        400,
        chat(response_format=json_schema_format(["type", "object"])),
        param=SCHEMA_PARAM,
    ),
    Case(
        "response-format-schema-string",
        400,
        chat(response_format=json_schema_format("object")),
        param=SCHEMA_PARAM,
    ),
    Case(
        "response-format-invalid-schema",
        400,
        chat(response_format=json_schema_format({"type": "object", "properties": 5})),
        param=SCHEMA_PARAM,
    ),
    Case(
        "response-format-schema-too-deep",
        400,
        chat(response_format=json_schema_format(deep_schema(600))),
    ),
    Case(
        "response-format-bad-name",
        400,
        chat(
            response_format={"type": "json_schema", "json_schema": {"name": "has space", "schema": {"type": "object"}}}
        ),
        param="response_format.json_schema.name",
    ),
    # -- what one request may cost (limits.*: dev.yaml keeps the defaults; SECURITY.md, "Request cost") -----
    Case("n-over-max-n", 400, chat(n=17), code="n_too_large", param="n", proxy=True),
    Case(
        "logprobs-width-over-limit",
        400,
        chat(n=5, logprobs=True, top_logprobs=20),  # 5 x 21 = 105 > 96
        code="request_too_large",
        param="top_logprobs",
        proxy=True,
    ),
    Case("completion-n-over-max-n", 400, completion(n=17), path=COMPLETIONS_PATH, code="n_too_large", param="n"),
    Case(
        "schema-over-max-bytes",
        400,
        chat(response_format=json_schema_format({"enum": [f"value-{i:06d}" for i in range(3000)]})),  # ~45 KB
        code="schema_too_large",
        param=SCHEMA_PARAM,
        proxy=True,
    ),
    Case(
        "schema-pattern-overflows-re",
        400,
        chat(response_format=json_schema_format({"type": "string", "pattern": "a{99999999999}"})),
        param=SCHEMA_PARAM,
    ),
    Case(
        "schema-pattern-invalid",
        400,
        chat(response_format=json_schema_format({"type": "string", "pattern": "("})),
        param=SCHEMA_PARAM,
        proxy=True,
    ),
    # -- unknown arguments ------------------------------------------------------------
    Case("unknown-argument", 400, chat(frobnicate=1), code="unknown_parameter", param="frobnicate", proxy=True),
    Case("functions-with-tools", 400, chat(functions=[{"name": "f"}], tools=[tool("g")]), param="functions"),
    Case("logit-bias-not-served", 400, chat(logit_bias={"1": 5}), param="logit_bias"),
    Case("suffix-not-served", 400, completion(suffix="x"), path=COMPLETIONS_PATH, param="suffix"),
    # -- tools ------------------------------------------------------------------------
    Case("tool-name-invalid", 400, chat(tools=[tool("get weather!")]), param="tools.0.function.name", proxy=True),
    Case("tool-names-duplicate", 400, chat(tools=[tool("f"), tool("f")]), param="tools.1.function.name"),
    Case("tool-type-unknown", 400, chat(tools=[{"type": "retrieval"}]), param="tools.0.type"),
    Case(
        "tool-parameters-invalid-schema",
        400,
        chat(tools=[tool("f", {"type": "object", "properties": {"a": {"type": "string", "pattern": "("}}})]),
        param="tools.0.function.parameters",
        proxy=True,
    ),
    Case(
        "tool-parameters-not-object",
        400,
        chat(tools=[tool("f", {"type": "array"})]),
        param="tools.0.function.parameters",
    ),
    Case(
        "tool-parameters-too-deep",
        400,
        chat(tools=[tool("f", {"type": "object", "properties": {"a": deep_schema(100)}})]),
        code="schema_too_deep",
        param="tools.0.function.parameters",
    ),
    Case("tool-choice-without-tools", 400, chat(tool_choice="required"), param="tool_choice"),
    Case("tool-choice-unknown-string", 400, chat(tools=[tool("f")], tool_choice="always"), param="tool_choice"),
    Case(
        "tool-choice-names-missing-function",
        400,
        chat(tools=[tool("f")], tool_choice={"type": "function", "function": {"name": "g"}}),
        param="tool_choice.function.name",
        proxy=True,
    ),
    Case(
        "tool-choice-forced-with-response-format",
        400,
        chat(tools=[tool("f")], tool_choice="required", response_format={"type": "json_object"}),
        param="response_format",
    ),
    Case("tool-message-without-call-id", 400, chat(messages=[{"role": "tool", "content": "x"}]), param="messages.0"),
    Case(
        "tool-calls-arguments-not-string",
        400,
        chat(
            messages=[
                {"role": "user", "content": "x"},
                {
                    "role": "assistant",
                    "tool_calls": [{"id": "1", "type": "function", "function": {"name": "f", "arguments": {}}}],
                },
            ]
        ),
        param="messages.1.tool_calls.0.function.arguments",
    ),
    Case(
        "unknown-argument-completions",
        400,
        completion(frobnicate="x"),
        path=COMPLETIONS_PATH,
        code="unknown_parameter",
        param="frobnicate",
    ),
    # -- /v1/responses ----------------------------------------------------------------
    Case("responses-input-missing", 400, response(input=DROP), path=RESPONSES_PATH, param="input", proxy=True),
    Case("responses-input-empty", 400, response(input=[]), path=RESPONSES_PATH, param="input"),
    Case(
        "responses-input-item-unknown",
        400,
        response(input=[{"type": "image", "url": "x"}]),
        path=RESPONSES_PATH,
        param="input.0",
    ),
    Case(
        "responses-builtin-tool",
        400,
        response(tools=[{"type": "web_search"}]),
        path=RESPONSES_PATH,
        param="tools.0.type",
    ),
    Case("responses-background", 400, response(background=True), path=RESPONSES_PATH, param="background"),
    Case("responses-truncation-auto", 400, response(truncation="auto"), path=RESPONSES_PATH, param="truncation"),
    Case(
        "responses-json-schema-without-schema",
        400,
        response(text={"format": {"type": "json_schema", "name": "x"}}),
        path=RESPONSES_PATH,
        param="text.format",
    ),
    Case(
        "responses-schema-invalid",
        400,
        response(text={"format": {"type": "json_schema", "name": "x", "schema": {"type": "string", "pattern": "("}}}),
        path=RESPONSES_PATH,
        param="text.format.schema",
        proxy=True,
    ),
    Case(
        "responses-previous-unknown",
        404,
        response(previous_response_id="resp_does_not_exist"),
        path=RESPONSES_PATH,
        code="response_not_found",
        param="previous_response_id",
        proxy=True,
    ),
    Case(
        "responses-max-output-zero", 400, response(max_output_tokens=0), path=RESPONSES_PATH, param="max_output_tokens"
    ),
    Case("responses-get-unknown", 404, None, path="/v1/responses/resp_nope", method="GET", code="response_not_found"),
    # -- strings the engine must survive: served or refused, never a 5xx --------------
    Case("nul-in-content", OK_OR_4XX, chat(messages=[{"role": "user", "content": "a\u0000b"}]), proxy=True),
    Case("nul-in-prompt", OK_OR_4XX, completion(prompt="a\u0000b"), path=COMPLETIONS_PATH),
    Case("nul-in-stop", OK_OR_4XX, chat(stop=["\u0000"])),
    Case("lone-surrogate-in-content", OK_OR_4XX, chat(messages=[{"role": "user", "content": "a\ud800b"}]), proxy=True),
    Case("lone-surrogate-in-prompt", OK_OR_4XX, completion(prompt="a\udfffb"), path=COMPLETIONS_PATH, proxy=True),
    Case("lone-surrogate-in-stop", OK_OR_4XX, chat(stop=["\ud800"])),
    Case(
        "lone-surrogate-in-content-part",
        OK_OR_4XX,
        chat(messages=[{"role": "user", "content": [{"type": "text", "text": "\udc00"}]}]),
    ),
    Case("lone-surrogate-in-model", "4xx", chat(model="\ud800")),
    Case("lone-surrogate-in-unknown-key", 400, raw_chat(b'"\\ud800": 1')),
    # -- completions prompts ----------------------------------------------------------
    Case(
        "prompt-missing",
        400,
        completion(prompt=DROP),
        path=COMPLETIONS_PATH,
        code="missing_required_parameter",
        param="prompt",
    ),
    Case("prompt-int", 400, completion(prompt=5), path=COMPLETIONS_PATH),
    Case("prompt-empty-list", 400, completion(prompt=[]), path=COMPLETIONS_PATH, proxy=True),
    Case("prompt-mixed-list", 400, completion(prompt=[1, "a"]), path=COMPLETIONS_PATH),
    Case("prompt-nested-ids", 400, completion(prompt=[[1, 2]]), path=COMPLETIONS_PATH),
    Case("prompt-float-ids", 400, completion(prompt=[1.5, 2]), path=COMPLETIONS_PATH),
    Case(
        "prompt-ids-out-of-vocab",
        400,
        completion(prompt=[1, 999999]),
        path=COMPLETIONS_PATH,
        param="prompt",
        proxy=True,
    ),
    Case("prompt-ids-negative", 400, completion(prompt=[-1]), path=COMPLETIONS_PATH, param="prompt"),
    Case("prompt-ids-over-int64", 400, completion(prompt=[2**64]), path=COMPLETIONS_PATH),
    Case(
        "prompt-ids-out-of-vocab-stream",
        400,
        completion(prompt=[999999], stream=True),
        path=COMPLETIONS_PATH,
        param="prompt",
    ),
    Case("prompt-batched", 400, completion(prompt=["a", "b"]), path=COMPLETIONS_PATH),
    Case(
        "prompt-too-long",
        400,
        completion(prompt=LONG_TEXT),
        path=COMPLETIONS_PATH,
        code="context_length_exceeded",
        proxy=True,
    ),
    Case(
        "prompt-ids-too-long",
        400,
        completion(prompt=[100] * (MAX_MODEL_LEN + 10)),
        path=COMPLETIONS_PATH,
        code="context_length_exceeded",
    ),
    Case("completions-logprobs-above-5", 400, completion(logprobs=6), path=COMPLETIONS_PATH, param="logprobs"),
    Case("completions-logprobs-negative", 400, completion(logprobs=-1), path=COMPLETIONS_PATH, param="logprobs"),
    Case("completions-echo-unsupported", 400, completion(echo=True), path=COMPLETIONS_PATH),
    # -- methods and paths ------------------------------------------------------------
    Case("get-on-chat", 405, None, method="GET"),
    Case("unknown-route", 404, chat(), path="/v1/chat/complete"),
]

PROXY_CASES = [c for c in CASES if c.proxy]


def test_case_table_size():
    assert len(CASES) >= 40, len(CASES)
    assert len({c.id for c in CASES}) == len(CASES), "case ids must be unique"
    assert len(PROXY_CASES) >= 10, len(PROXY_CASES)


@pytest.fixture(scope="module")
def http(dev_server):
    with httpx.Client(timeout=60) as client:
        yield client


def send(http: httpx.Client, base_url: str, case: Case) -> httpx.Response:
    headers = {**AUTH, "content-type": "application/json", **case.headers}
    if case.method == "GET":
        headers.pop("content-type")
    return http.request(case.method, base_url + case.path, content=case.content(), headers=headers)


def check_error_body(r: httpx.Response, case: Case) -> None:
    where = f"{case.id}: {r.status_code} {r.text[:500]}"
    body = r.json()
    assert set(body) == {"error"}, where
    err = body["error"]
    assert set(err) == ERROR_KEYS, where
    assert isinstance(err["message"], str) and err["message"], where
    assert isinstance(err["type"], str) and err["type"], where
    assert err["param"] is None or isinstance(err["param"], str), where
    assert err["code"] is None or isinstance(err["code"], str), where
    if case.code is not None:
        assert err["code"] == case.code, where
    if case.param is not None:
        assert err["param"] == case.param, where
    if 400 <= r.status_code < 500 and r.status_code not in (404, 405):
        assert err["type"] == "invalid_request_error", where


def run_case(http: httpx.Client, base_url: str, case: Case) -> None:
    try:
        r = send(http, base_url, case)
    except httpx.TransportError as exc:
        pytest.fail(f"{case.id}: the server dropped the connection instead of answering: {exc!r}")
    where = f"{case.id}: {r.status_code} {r.text[:500]}"
    assert r.status_code < 500, where
    if case.status == OK_OR_4XX:
        if r.status_code == 200:
            assert r.json()["choices"], where
        else:
            assert 400 <= r.status_code < 500, where
            check_error_body(r, case)
    elif case.status == "4xx":
        assert 400 <= r.status_code < 500, where
        check_error_body(r, case)
    else:
        assert r.status_code == case.status, where
        check_error_body(r, case)
    # ...and the server goes on serving
    ok = http.post(base_url + CHAT_PATH, json=VALID_CHAT, headers=AUTH)
    assert ok.status_code == 200, f"after {case.id}: {ok.status_code} {ok.text[:300]}"
    assert ok.json()["usage"]["completion_tokens"] >= 1


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_direct(http, case):
    run_case(http, DIRECT_URL, case)


@pytest.mark.parametrize("case", PROXY_CASES, ids=[c.id for c in PROXY_CASES])
def test_bad_input_proxy(http, case):
    run_case(http, PROXY_URL, case)
