"""Request models of /v1/responses: strict, as the chat ones (serving/api/protocol.py), nulls meaning unset.

Served: text and message input (input_text / output_text parts), function
calls and their outputs replayed as input, `instructions`, `max_output_tokens`,
`temperature`, `top_p`, function `tools`, `tool_choice`, `parallel_tool_calls`,
`text.format` (text, json_object, json_schema), `stream`, `store`,
`previous_response_id`, `metadata`. Accepted and ignored (they cannot change
what is generated): `user`, `safety_identifier`, `prompt_cache_key`,
`prompt_cache_retention`, `service_tier`, `stream_options.include_obfuscation`,
`truncation: disabled`, an empty `include`, null `reasoning`, `background: false`.
Anything else is a 400 naming it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import Discriminator, Field, Tag

from serving.api.protocol import MAX_TOOLS, FunctionDefinition, _null_is, _Strict


class InputText(_Strict):
    type: Literal["input_text"]
    text: str


class OutputText(_Strict):
    """An assistant's earlier text, replayed as input."""

    type: Literal["output_text"]
    text: str
    annotations: list[Any] | None = None
    logprobs: list[Any] | None = None


class MessageItem(_Strict):
    type: Literal["message"] | None = None  # the SDK's "easy" input message leaves it out
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[Annotated[Union[InputText, OutputText], Field(discriminator="type")]]
    id: str | None = None
    status: str | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class FunctionCallItem(_Strict):
    type: Literal["function_call"]
    call_id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    arguments: str
    id: str | None = None
    status: str | None = None


class FunctionCallOutputItem(_Strict):
    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1)
    output: str | list[InputText]
    id: str | None = None
    status: str | None = None

    def text(self) -> str:
        return self.output if isinstance(self.output, str) else "".join(p.text for p in self.output)


def _item_kind(item: Any) -> str:
    kind = item.get("type", "message") if isinstance(item, dict) else getattr(item, "type", "message")
    return _TAGS.get(kind or "message", str(kind))


# Tags named as the classes are: error locations drop them (serving/api/pipeline.py `_union_branch`).
_TAGS = {
    "message": "MessageItem",
    "function_call": "FunctionCallItem",
    "function_call_output": "FunctionCallOutputItem",
}
InputItem = Annotated[
    Union[
        Annotated[MessageItem, Tag("MessageItem")],
        Annotated[FunctionCallItem, Tag("FunctionCallItem")],
        Annotated[FunctionCallOutputItem, Tag("FunctionCallOutputItem")],
    ],
    Discriminator(_item_kind),
]


class FunctionTool(FunctionDefinition):
    """A Responses function tool: the chat function's fields, flat, with `type`."""

    type: Literal["function"]


class FunctionChoice(_Strict):
    type: Literal["function"]
    name: str = Field(min_length=1)


class TextFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = Field(default=None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class TextConfig(_Strict):
    format: TextFormat | None = None


class StreamOptions(_Strict):
    include_obfuscation: bool | None = None  # ignored


class ResponsesRequest(_Strict):
    model: str = Field(min_length=1)
    input: str | list[InputItem]
    instructions: str | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    tools: list[FunctionTool] | None = Field(default=None, max_length=MAX_TOOLS)
    tool_choice: Literal["none", "auto", "required"] | FunctionChoice | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    stream: Annotated[bool, _null_is(False)] = False
    stream_options: StreamOptions | None = None
    store: Annotated[bool, _null_is(True)] = True
    previous_response_id: str | None = Field(default=None, min_length=1)
    metadata: dict[str, str] | None = None
    # Ignored: they cannot change what is generated.
    user: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    service_tier: str | None = None
    truncation: Literal["disabled"] | None = None  # "auto" (dropping old turns to fit) is not served
    include: list[Any] | None = Field(default=None, max_length=0)
    reasoning: None = None
    background: Literal[False] | None = None
    # Not served: null (unset) only.
    top_logprobs: None = None
    max_tool_calls: None = None
    conversation: None = None
    prompt: None = None
    context_management: None = None
