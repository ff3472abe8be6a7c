"""Tool calling on /v1/chat/completions: checking the tools, steering the engine, reading the calls back.

What `tool_choice` asks for decides who finds the calls in the output:

* `none` (or no tools): plain text. The tools are not rendered into the prompt,
  so the model is not invited to call what it may not.
* `auto`: the model decides. The tools go to the chat template, and the engine
  finds calls in the model's own syntax with the parser the model's config
  names (`tool_parser`, vLLM's parsers: `hermes` for Qwen2.5 and the tiny model).
  A model with no parser answers in text.
* `required` / a named function: enforced with structured output, so they work
  with any model, parser or not (as vLLM does). A named function's output is
  constrained to its parameters' schema, so the text *is* the arguments and
  streams as argument deltas; `required` is constrained to a JSON array of
  `{"name", "parameters"}` objects, one per call (one only when
  `parallel_tool_calls` is false), and each call is sent when its object is
  complete.

Tool definitions are checked as `response_format` schemas are (serving/api/cost.py):
size and depth on the loop, validity off it, every error a 400 naming the
parameter. This module imports no engine: what it hands the engine is JSON data.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from serving.api.cost import _depth, check_schema
from serving.api.protocol import ChatCompletionRequest, ChatMessage, ChatTool
from serving.config import LimitsConfig
from serving.engine.base import ChoiceDelta, ToolCallDelta
from serving.errors import InvalidRequestError

CONSTRAINED = ("required", "named")


def call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def parameters_of(schema: dict[str, Any] | None) -> dict[str, Any]:
    """A function's parameters schema; none means an object with no properties (as OpenAI)."""
    return schema if schema else {"type": "object", "properties": {}}


def check_tools(req: ChatCompletionRequest, limits: LimitsConfig) -> None:
    """What is wrong with the request's tools, as a 400 naming the parameter (cheap: no schema validation).
    Asked with the legacy `functions`, the parameters are named as the client sent them."""
    if req.functions is not None or req.function_call is not None:
        if req.functions and not req.legacy_functions:
            raise InvalidRequestError(
                "Send either tools (and tool_choice) or the legacy functions (and function_call), not both.",
                param="functions",
                code="invalid_value",
            )
        if not req.functions and req.function_call not in (None, "none"):
            raise InvalidRequestError(
                "function_call asks for a call, but no functions were given.",
                param="function_call",
                code="invalid_value",
            )
    if not req.legacy_functions:
        _check_tools(req, limits)
        return
    try:
        _check_tools(req, limits)
    except InvalidRequestError as exc:
        exc.param = legacy_param(exc.param)
        raise


def legacy_param(param: str | None) -> str | None:
    """A tools parameter as the legacy form names it: tools.0.function.x -> functions.0.x, tool_choice -> function_call."""
    if param is None:
        return None
    parts = param.split(".")
    if parts[0] == "tools":
        return ".".join(["functions", *parts[1:2], *parts[3:]])
    if parts[0] == "tool_choice":
        return ".".join(["function_call", *parts[2:]])
    return param


def _check_tools(req: ChatCompletionRequest, limits: LimitsConfig) -> None:
    choice = req.tool_choice
    if not req.tools:
        if choice is not None and choice not in ("none", "auto"):
            raise InvalidRequestError(
                "tool_choice asks for a tool call, but no tools were given.", param="tool_choice", code="invalid_value"
            )
        if req.parallel_tool_calls is not None:
            return  # harmless without tools (clients send it by default)
        return
    names: set[str] = set()
    for i, tool in enumerate(req.tools):
        name = tool.function.name
        if name in names:
            raise InvalidRequestError(
                f"Duplicate tool name '{name}': each function in tools needs its own name.",
                param=f"tools.{i}.function.name",
                code="invalid_value",
            )
        names.add(name)
        params = tool.function.parameters
        if params is not None:
            check_schema(params, limits, param=f"tools.{i}.function.parameters")
            if params.get("type", "object") != "object":
                raise InvalidRequestError(
                    f"The parameters of function '{name}' must be a JSON schema of type 'object'.",
                    param=f"tools.{i}.function.parameters",
                    code="invalid_value",
                )
    if req.tool_mode == "named":
        assert choice is not None and not isinstance(choice, str)
        if choice.function.name not in names:
            raise InvalidRequestError(
                f"tool_choice names function '{choice.function.name}', which is not in tools.",
                param="tool_choice.function.name",
                code="invalid_value",
            )
    fmt = req.response_format
    if req.tool_mode in CONSTRAINED and fmt is not None and fmt.type != "text":
        raise InvalidRequestError(
            "response_format cannot be combined with a tool_choice that forces a tool call: the call's own "
            "schema constrains the output.",
            param="response_format",
            code="invalid_value",
        )
    check_schema(constrained_schema(req), limits, param="tools")


def tool_schemas(tools: list[ChatTool] | None) -> list[tuple[dict[str, Any], str]]:
    """Every function's parameters schema with its parameter path, to check and validate."""
    return [
        (tool.function.parameters, f"tools.{i}.function.parameters")
        for i, tool in enumerate(tools or ())
        if tool.function.parameters
    ]


def constrained_schema(req: ChatCompletionRequest) -> dict[str, Any] | None:
    """The JSON schema that forces the output to be the call(s) `tool_choice` asks for, None if it forces none."""
    mode = req.tool_mode
    tools = req.tools or []
    if mode == "named":
        choice = req.tool_choice
        assert choice is not None and not isinstance(choice, str)
        wanted = next((t for t in tools if t.function.name == choice.function.name), None)
        return parameters_of(wanted.function.parameters) if wanted is not None else None
    if mode != "required":
        return None
    calls = [
        {
            "type": "object",
            "properties": {
                "name": {"type": "string", "enum": [t.function.name]},
                "parameters": parameters_of(t.function.parameters),
            },
            "required": ["name", "parameters"],
            "additionalProperties": False,
        }
        for t in tools
    ]
    schema: dict[str, Any] = {
        "type": "array",
        "minItems": 1,
        "items": calls[0] if len(calls) == 1 else {"anyOf": calls},
    }
    if req.parallel_tool_calls is False:
        schema["maxItems"] = 1
    return schema


def engine_tools(req: ChatCompletionRequest) -> list[dict[str, Any]] | None:
    """The tools as the chat template gets them (OpenAI's shape), None when they must not be offered."""
    if req.tool_mode == "none" or not req.tools:
        return None
    return template_tools(req.tools)


def template_tools(tools: list[ChatTool]) -> list[dict[str, Any]]:
    return [
        {
            "type": "function",
            "function": t.function.model_dump(exclude_none=True) | {"parameters": parameters_of(t.function.parameters)},
        }
        for t in tools
    ]


def engine_messages(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    """The messages as the chat template gets them: text content; a call's arguments as JSON data (as vLLM
    hands them to templates, which write `arguments | tojson`), or the text when it is not JSON."""
    out: list[dict[str, Any]] = []
    for m in messages:
        message: dict[str, Any] = {"role": m.role, "content": m.text()}
        if m.name is not None:
            message["name"] = m.name
        if m.function_call is not None:  # the legacy form: one call, its id made from its name
            fn = m.function_call
            message["tool_calls"] = [
                {
                    "id": f"call_{fn.name}",
                    "type": "function",
                    "function": {"name": fn.name, "arguments": _json_or_text(fn.arguments)},
                }
            ]
        if m.role == "function":
            message = {"role": "tool", "content": m.text(), "tool_call_id": f"call_{m.name}", "name": m.name}
        if m.tool_calls:
            message["tool_calls"] = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.function.name, "arguments": _json_or_text(c.function.arguments)},
                }
                for c in m.tool_calls
            ]
        if m.tool_call_id is not None:
            message["tool_call_id"] = m.tool_call_id
        out.append(message)
    return out


MAX_ARGUMENTS_DEPTH = 64  # deeper arguments stay text: templates write them back with a recursive `tojson`


def _json_or_text(arguments: str) -> Any:
    try:
        data = json.loads(arguments)
    except (ValueError, RecursionError):
        return arguments
    return data if _depth(data, MAX_ARGUMENTS_DEPTH) <= MAX_ARGUMENTS_DEPTH else arguments


# -- reading constrained output back as calls ---------------------------------------


class NamedCall:
    """`tool_choice` names a function: the whole output is its arguments, streamed as they come."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.started = False

    def feed(self, text: str) -> list[ToolCallDelta]:
        if not self.started:
            self.started = True
            return [ToolCallDelta(index=0, id=call_id(), name=self.name, arguments=text)]
        return [ToolCallDelta(index=0, arguments=text)] if text else []

    def finish(self) -> list[ToolCallDelta]:
        return [] if self.started else self.feed("")  # an empty output is still the call (its arguments cut)

    @property
    def calls(self) -> int:
        return 1 if self.started else 0


class CallArray:
    """`tool_choice: required`: a JSON array of `{"name", "parameters"}`; each call is sent when its object closes.

    A scanner over the characters as they arrive (strings and escapes tracked, so
    braces inside them do not count): nothing is parsed twice.
    """

    def __init__(self) -> None:
        self._depth = 0
        self._in_string = False
        self._escaped = False
        self._element: list[str] = []
        self.calls = 0
        self.text: list[str] = []  # everything, for an output that never became a call (cut by max_tokens)

    def feed(self, text: str) -> list[ToolCallDelta]:
        self.text.append(text)
        found: list[ToolCallDelta] = []
        start = 0 if self._depth > 1 else None
        for i, ch in enumerate(text):
            if self._in_string:
                if self._escaped:
                    self._escaped = False
                elif ch == "\\":
                    self._escaped = True
                elif ch == '"':
                    self._in_string = False
                continue
            if ch == '"':
                self._in_string = True
            elif ch in "{[":
                self._depth += 1
                if self._depth == 2:
                    start = i
            elif ch in "}]":
                self._depth -= 1
                if self._depth == 1 and start is not None:
                    self._element.append(text[start : i + 1])
                    call = self._call("".join(self._element))
                    self._element.clear()
                    start = None
                    if call is not None:
                        found.append(call)
        if start is not None:
            self._element.append(text[start:])
        return found

    def _call(self, element: str) -> ToolCallDelta | None:
        try:
            data = json.loads(element)
            name, params = data["name"], data.get("parameters", {})
        except (ValueError, KeyError, TypeError):
            return None
        delta = ToolCallDelta(
            index=self.calls, id=call_id(), name=name, arguments=json.dumps(params, ensure_ascii=False)
        )
        self.calls += 1
        return delta

    def finish(self) -> list[ToolCallDelta]:
        return []


def decoder_for(req: ChatCompletionRequest) -> NamedCall | CallArray | None:
    """A fresh reader of one choice's constrained output, None when the output is not forced into calls."""
    mode = req.tool_mode
    if mode == "named":
        choice = req.tool_choice
        assert choice is not None and not isinstance(choice, str)
        return NamedCall(choice.function.name)
    if mode == "required":
        return CallArray()
    return None


def function_call_json(delta: ToolCallDelta) -> dict[str, Any]:
    """One streamed legacy `function_call` delta (the name in the first)."""
    if delta.id is not None:
        return {"name": delta.name, "arguments": delta.arguments}
    return {"arguments": delta.arguments}


def tool_call_json(delta: ToolCallDelta) -> dict[str, Any]:
    """One streamed `tool_calls` entry, as OpenAI sends it (id, type and name only in a call's first)."""
    if delta.id is not None:
        return {
            "index": delta.index,
            "id": delta.id,
            "type": "function",
            "function": {"name": delta.name, "arguments": delta.arguments},
        }
    return {"index": delta.index, "function": {"arguments": delta.arguments}}


class CallsCollected:
    """One choice's calls from its deltas, for a whole (non-streaming) response."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def add(self, deltas: list[ToolCallDelta]) -> None:
        for d in deltas:
            while len(self.calls) <= d.index:
                self.calls.append({"id": None, "type": "function", "function": {"name": None, "arguments": ""}})
            call = self.calls[d.index]
            if d.id is not None:
                call["id"] = d.id
            if d.name is not None:
                call["function"]["name"] = d.name
            call["function"]["arguments"] += d.arguments

    def result(self) -> list[dict[str, Any]]:
        return [c for c in self.calls if c["function"]["name"]]


class ToolCallStream:
    """One request's choices as content and tool-call deltas, whoever found the calls.

    With a forced call (`required`, named) the engine's text is the constrained
    JSON and is read here; with `auto` the engine's parser has already split its
    deltas into content and calls. A choice that made calls and stopped by itself
    finishes with `tool_calls`.
    """

    __slots__ = ("_req", "_decoders", "_called")

    def __init__(self, req: ChatCompletionRequest) -> None:
        self._req = req
        self._decoders: dict[int, NamedCall | CallArray] | None = {} if req.tool_mode in CONSTRAINED else None
        self._called: set[int] = set()

    def split(self, c: ChoiceDelta) -> tuple[str, list[ToolCallDelta]]:
        """The choice's content and its tool-call deltas in this step."""
        if self._decoders is None:
            text, calls = c.text, c.tool_calls or []
        else:
            decoder = self._decoders.get(c.index)
            if decoder is None:
                decoder = self._decoders[c.index] = decoder_for(self._req)  # type: ignore[assignment]
            assert decoder is not None
            calls = decoder.feed(c.text)
            text = ""
            if c.finish_reason is not None:
                calls += decoder.finish()
                if isinstance(decoder, CallArray) and not decoder.calls:
                    text = "".join(decoder.text)  # never became a call (cut short): what there is, as content
        if calls:
            self._called.add(c.index)
        return text, calls

    def finish_reason(self, c: ChoiceDelta) -> str | None:
        if c.finish_reason == "stop" and c.index in self._called:
            return "function_call" if self._req.legacy_functions else "tool_calls"
        return c.finish_reason
