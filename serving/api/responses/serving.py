"""A response as the chat completion it amounts to: the request turned into chat, the answer turned back.

`to_chat` builds the `ChatCompletionRequest` (instructions as the first system
message; the stored conversation of `previous_response_id`, whose own
instructions are not carried over, as OpenAI does; the input items as chat
messages: function calls as an assistant's `tool_calls`, their outputs as `tool`
messages). `response_of` turns a whole chat body into a Response object;
`ResponseEvents` turns the chat's SSE into the Responses stream's typed events
(`response.created`, `response.output_item.added`, `response.output_text.delta`,
`response.function_call_arguments.delta`, ..., `response.completed`), each with
its `sequence_number`. Both give the record to store: the response, and the
conversation it ends, for the next `previous_response_id`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec
from pydantic import ValidationError

from serving.api.protocol import ChatCompletionRequest
from serving.api.responses.protocol import (
    FunctionCallItem,
    FunctionCallOutputItem,
    MessageItem,
    ResponsesRequest,
)
from serving.api.streaming import aclose
from serving.errors import InvalidRequestError


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def input_messages(req: ResponsesRequest) -> list[dict[str, Any]]:
    """The request's input as chat messages (without its instructions)."""
    if isinstance(req.input, str):
        return [{"role": "user", "content": req.input}]
    messages: list[dict[str, Any]] = []
    for item in req.input:
        if isinstance(item, MessageItem):
            messages.append({"role": item.role, "content": item.text()})
        elif isinstance(item, FunctionCallItem):
            call = {
                "id": item.call_id,
                "type": "function",
                "function": {"name": item.name, "arguments": item.arguments},
            }
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and "tool_calls" in last:
                last["tool_calls"].append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif isinstance(item, FunctionCallOutputItem):
            messages.append({"role": "tool", "tool_call_id": item.call_id, "content": item.text()})
    return messages


def to_chat(req: ResponsesRequest, history: list[dict[str, Any]]) -> tuple[ChatCompletionRequest, list[dict[str, Any]]]:
    """(the chat request, the conversation so far without instructions: history + this input)."""
    conversation = [*history, *input_messages(req)]
    messages = ([{"role": "system", "content": req.instructions}] if req.instructions else []) + conversation
    if not messages:
        raise InvalidRequestError("input is empty: send a string or at least one item.", param="input")
    body: dict[str, Any] = {"model": req.model, "messages": messages, "stream": req.stream}
    if req.stream:
        body["stream_options"] = {"include_usage": True}  # the usage of response.completed
    if req.max_output_tokens is not None:
        body["max_completion_tokens"] = req.max_output_tokens
    if req.temperature is not None:
        body["temperature"] = req.temperature
    if req.top_p is not None:
        body["top_p"] = req.top_p
    if req.tools:
        body["tools"] = [
            {"type": "function", "function": t.model_dump(exclude={"type"}, exclude_none=True)} for t in req.tools
        ]
    if req.tool_choice is not None:
        choice = req.tool_choice
        body["tool_choice"] = (
            choice if isinstance(choice, str) else {"type": "function", "function": {"name": choice.name}}
        )
    if req.parallel_tool_calls is not None:
        body["parallel_tool_calls"] = req.parallel_tool_calls
    fmt = req.text.format if req.text is not None else None
    if fmt is not None and fmt.type == "json_object":
        body["response_format"] = {"type": "json_object"}
    elif fmt is not None and fmt.type == "json_schema":
        if fmt.schema_ is None or fmt.name is None:
            raise InvalidRequestError(
                "text.format of type 'json_schema' needs 'name' and 'schema'.", param="text.format"
            )
        schema: dict[str, Any] = {"name": fmt.name, "schema": fmt.schema_}
        if fmt.strict is not None:
            schema["strict"] = fmt.strict
        if fmt.description is not None:
            schema["description"] = fmt.description
        body["response_format"] = {"type": "json_schema", "json_schema": schema}
    try:
        chat = ChatCompletionRequest.model_validate(body)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in err["loc"])
        raise InvalidRequestError(f"Invalid request ({where}): {err['msg']}", param="input") from None
    return chat, conversation


_PARAMS = (  # a chat request's parameter -> the Responses request's, for errors raised by the chat path
    ("response_format.json_schema.schema", "text.format.schema"),
    ("response_format", "text.format"),
    ("max_completion_tokens", "max_output_tokens"),
    ("max_tokens", "max_output_tokens"),
    ("messages", "input"),
    ("tool_choice.function.", "tool_choice."),
)


def responses_param(param: str | None) -> str | None:
    """The name a Responses client knows for a parameter the chat path named (`tools.0.function.parameters`
    is `tools.0.parameters`, `response_format.json_schema.schema` is `text.format.schema`, ...)."""
    if param is None:
        return None
    for chat, ours in _PARAMS:
        if param.startswith(chat):
            return ours + param[len(chat) :]
    parts = param.split(".")
    if len(parts) >= 3 and parts[0] == "tools" and parts[2] == "function":
        return ".".join([*parts[:2], *parts[3:]])
    return param


def _usage(chat_usage: dict[str, Any] | None) -> dict[str, Any] | None:
    """The chat's usage as a Response's. `input_tokens_details.cached_tokens` is the chat's
    `prompt_tokens_details.cached_tokens` (the prompt's prefix-cache hits), and 0 where the engine
    does not state them: OpenAI's Response schema requires the field, as a number."""
    if not chat_usage:
        return None
    cached = (chat_usage.get("prompt_tokens_details") or {}).get("cached_tokens")
    return {
        "input_tokens": chat_usage["prompt_tokens"],
        "input_tokens_details": {"cached_tokens": cached or 0},
        "output_tokens": chat_usage["completion_tokens"],
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": chat_usage["total_tokens"],
    }


def _text_format(req: ResponsesRequest) -> dict[str, Any]:
    fmt = req.text.format if req.text is not None else None
    if fmt is None:
        return {"type": "text"}
    return fmt.model_dump(by_alias=True, exclude_none=True)


def skeleton(req: ResponsesRequest, response_id: str, created_at: int) -> dict[str, Any]:
    """The Response object before any output: what response.created carries."""
    choice = req.tool_choice
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": "in_progress",
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": req.instructions,
        "max_output_tokens": req.max_output_tokens,
        "model": req.model,
        "output": [],
        "parallel_tool_calls": req.parallel_tool_calls is not False,
        "previous_response_id": req.previous_response_id,
        "store": req.store,
        "temperature": req.temperature if req.temperature is not None else 1.0,
        "top_p": req.top_p if req.top_p is not None else 1.0,
        "tool_choice": (choice if isinstance(choice, str) else choice.model_dump()) if choice is not None else "auto",
        "tools": [t.model_dump(exclude_none=True) for t in req.tools or ()],
        "text": {"format": _text_format(req)},
        "truncation": "disabled",
        "usage": None,
        "user": req.user,
        "metadata": req.metadata or {},
    }


def _message_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    return {
        "type": "message",
        "id": item_id,
        "status": status,
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
    }


def _call_item(item_id: str, call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": item_id,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    }


def _finish(response: dict[str, Any], finish_reason: str | None) -> None:
    if finish_reason == "length":
        response["status"] = "incomplete"
        response["incomplete_details"] = {"reason": "max_output_tokens"}
    else:
        response["status"] = "completed"


def _assistant_message(text: str | None, calls: list[dict[str, Any]]) -> dict[str, Any]:
    """The output as a chat message, for the stored conversation."""
    message: dict[str, Any] = {"role": "assistant", "content": text or None}
    if calls:
        message["tool_calls"] = calls
    return message


def record(response: dict[str, Any], conversation: list[dict[str, Any]], output: dict[str, Any]) -> dict[str, Any]:
    return {"response": response, "conversation": [*conversation, output]}


def response_of(
    req: ResponsesRequest, chat: dict[str, Any], response_id: str, created_at: int, conversation: list[dict[str, Any]]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the Response object, the record to store) from a whole chat completion body."""
    response = skeleton(req, response_id, created_at)
    choice = chat["choices"][0]
    message = choice["message"]
    text = message.get("content")
    calls = message.get("tool_calls") or []
    if text:
        response["output"].append(_message_item(new_id("msg"), text, "completed"))
    for call in calls:
        fn = call["function"]
        response["output"].append(_call_item(new_id("fc"), call["id"], fn["name"], fn["arguments"], "completed"))
    _finish(response, choice.get("finish_reason"))
    response["usage"] = _usage(chat.get("usage"))
    return response, record(response, conversation, _assistant_message(text, calls))


class ResponseEvents:
    """The chat stream of one response as the Responses API's typed events (see the module docstring)."""

    def __init__(
        self,
        req: ResponsesRequest,
        response_id: str,
        created_at: int,
        conversation: list[dict[str, Any]],
        on_done: Callable[[dict[str, Any]], Awaitable[None]] | None = None,
    ) -> None:
        self.response = skeleton(req, response_id, created_at)
        self._conversation = conversation
        self._on_done = on_done
        self._seq = 0
        self._text: list[str] | None = None  # the open message item's text
        self._message_index = -1
        self._message_id = ""
        self._calls: dict[int, int] = {}  # chat tool-call index -> output index
        self._call_args: dict[int, list[str]] = {}
        self._finish: str | None = None

    def _event(self, kind: str, **fields: Any) -> bytes:
        data = {"type": kind, "sequence_number": self._seq, **fields}
        self._seq += 1
        return b"event: " + kind.encode() + b"\ndata: " + msgspec.json.encode(data) + b"\n\n"

    def start(self) -> list[bytes]:
        snapshot = dict(self.response)
        return [
            self._event("response.created", response=snapshot),
            self._event("response.in_progress", response=snapshot),
        ]

    def _open_message(self) -> list[bytes]:
        self._text = []
        self._message_id = new_id("msg")
        self._message_index = len(self.response["output"])
        item = _message_item(self._message_id, "", "in_progress")
        item["content"] = []
        self.response["output"].append(item)
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        return [
            self._event("response.output_item.added", output_index=self._message_index, item=item),
            self._event(
                "response.content_part.added", item_id=self._message_id, output_index=self._message_index,
                content_index=0, part=part,
            ),
        ]  # fmt: skip

    def _close_message(self) -> list[bytes]:
        if self._text is None:
            return []
        text = "".join(self._text)
        self._text = None
        item = _message_item(self._message_id, text, "completed")
        self.response["output"][self._message_index] = item
        i, mid = self._message_index, self._message_id
        return [
            self._event(
                "response.output_text.done", item_id=mid, output_index=i, content_index=0, text=text, logprobs=[]
            ),
            self._event(
                "response.content_part.done", item_id=mid, output_index=i, content_index=0, part=item["content"][0]
            ),
            self._event("response.output_item.done", output_index=i, item=item),
        ]

    def _content(self, text: str) -> list[bytes]:
        out = self._open_message() if self._text is None else []
        assert self._text is not None
        self._text.append(text)
        out.append(
            self._event(
                "response.output_text.delta", item_id=self._message_id, output_index=self._message_index,
                content_index=0, delta=text, logprobs=[],
            )
        )  # fmt: skip
        return out

    def _call(self, delta: dict[str, Any]) -> list[bytes]:
        out: list[bytes] = []
        index = delta["index"]
        fn = delta.get("function") or {}
        if delta.get("id"):
            out += self._close_message()
            self._calls[index] = len(self.response["output"])
            self._call_args[index] = []
            item = _call_item(new_id("fc"), delta["id"], fn.get("name") or "", "", "in_progress")
            self.response["output"].append(item)
            out.append(self._event("response.output_item.added", output_index=self._calls[index], item=dict(item)))
        piece = fn.get("arguments") or ""
        if piece and index in self._calls:
            i = self._calls[index]
            self._call_args[index].append(piece)
            item_id = self.response["output"][i]["id"]
            out.append(
                self._event("response.function_call_arguments.delta", item_id=item_id, output_index=i, delta=piece)
            )
        return out

    def _close_calls(self) -> list[bytes]:
        out = []
        for index, i in self._calls.items():
            item = self.response["output"][i]
            item["arguments"] = "".join(self._call_args[index])
            item["status"] = "completed"
            out.append(
                self._event(
                    "response.function_call_arguments.done", item_id=item["id"], output_index=i,
                    name=item["name"], arguments=item["arguments"],
                )
            )  # fmt: skip
            out.append(self._event("response.output_item.done", output_index=i, item=dict(item)))
        return out

    def _chunk(self, event: dict[str, Any]) -> list[bytes]:
        out: list[bytes] = []
        if "error" in event:
            self.response["status"] = "failed"
            self.response["error"] = {
                "code": event["error"].get("code") or "server_error",
                "message": event["error"]["message"],
            }
            return [
                self._event("error", message=event["error"]["message"], code=event["error"].get("code"), param=None)
            ]
        if event.get("usage"):
            self.response["usage"] = _usage(event["usage"])
        for choice in event.get("choices") or ():
            delta = choice.get("delta") or {}
            if delta.get("content"):
                out += self._content(delta["content"])
            for call in delta.get("tool_calls") or ():
                out += self._call(call)
            if choice.get("finish_reason"):
                self._finish = choice["finish_reason"]
        return out

    def _end(self) -> list[bytes]:
        out = self._close_message() + self._close_calls()
        if self.response["status"] == "failed":
            return [*out, self._event("response.failed", response=self.response)]
        _finish(self.response, self._finish)
        kind = "response.completed" if self.response["status"] == "completed" else "response.incomplete"
        return [*out, self._event(kind, response=self.response)]

    def stored(self) -> dict[str, Any]:
        message = next((o for o in self.response["output"] if o["type"] == "message"), None)
        text = message["content"][0]["text"] if message else None
        calls = [
            {"id": o["call_id"], "type": "function", "function": {"name": o["name"], "arguments": o["arguments"]}}
            for o in self.response["output"]
            if o["type"] == "function_call"
        ]
        return record(self.response, self._conversation, _assistant_message(text, calls))

    async def stream(self, chat: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """The events of `chat` (our own SSE: `data: {...}` events, then `data: [DONE]`)."""
        try:
            for event in self.start():
                yield event
            buffer = b""
            async for chunk in chat:
                buffer += chunk
                *events, buffer = buffer.split(b"\n\n")
                out: list[bytes] = []
                for raw in events:
                    if not raw.startswith(b"data: ") or raw == b"data: [DONE]":
                        continue
                    out += self._chunk(msgspec.json.decode(raw[6:]))
                if out:
                    yield b"".join(out)
            end = self._end()
            if self._on_done is not None and self.response["status"] != "failed":
                await self._on_done(self.stored())
            yield b"".join(end)
        finally:
            await aclose(chat)


def now() -> int:
    return int(time.time())
