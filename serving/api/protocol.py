"""OpenAI request and response models: ours, so no vLLM type leaks into the API.

Requests are strict (unknown fields are a 400, as OpenAI does) and carry the
ranges OpenAI documents, so bad input is refused before any engine sees it.
What real clients send is accepted: `null` for any optional field means unset
(the spec allows it, and SDKs send it); the fields an assistant message has
when a client replays a previous response (`model_dump()` of the SDK's message)
are accepted; fields that cannot change what is generated (`IGNORED_FIELDS`,
listed in the README) are accepted and ignored. A field that would change the
result and that we cannot honour stays a 400 that names it.
Responses are built as plain dicts in the serving modules for speed: streaming
emits one chunk per engine step and a pydantic round-trip per chunk costs more
than the rest of the hot path (see loadtests/PERFORMANCE.md).
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, field_validator, model_validator

MAX_STOP_SEQUENCES = 4
MAX_N = 128
MAX_TOP_LOGPROBS = 20
MAX_COMPLETION_LOGPROBS = 5


MAX_TOOLS = 128  # as OpenAI

# Accepted and ignored: they cannot change what is generated (README, "OpenAI fields").
IGNORED_FIELDS = {
    "chat": (
        "metadata",
        "store",
        "service_tier",
        "prompt_cache_key",
        "prompt_cache_retention",
        "prompt_cache_options",
        "safety_identifier",
        "user",
        "prediction",
        "modalities (['text'] only)",
    ),
    "completions": ("user", "best_of (null or 1)"),
    "stream_options": ("include_obfuscation", "continuous_usage_stats (vLLM's; usage comes in the last chunk)"),
    "assistant message": ("refusal", "annotations", "audio (null)"),
}


def _null_is(default: Any) -> BeforeValidator:
    """`null` for this field means unset: its default (a per-field call, nothing per token)."""
    return BeforeValidator(lambda v: default if v is None else v)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextContentPart(_Strict):
    type: Literal["text"]
    text: str


class RefusalContentPart(_Strict):
    """In a replayed assistant message: a refusal the model gave (kept as its text)."""

    type: Literal["refusal"]
    refusal: str


class FunctionDefinition(_Strict):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    description: str | None = None
    # Its JSON schema: shape here, size and validity checked as response_format's are
    # (serving/api/tools.py). Omitted or null: a function without parameters.
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ChatTool(_Strict):
    type: Literal["function"]
    function: FunctionDefinition


class FunctionName(_Strict):
    name: str = Field(min_length=1)


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: FunctionName


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class ToolCallFunction(_Strict):
    name: str = Field(min_length=1)
    arguments: str  # JSON text, as OpenAI returns it


class ToolCall(_Strict):
    id: str
    type: Literal["function"] = "function"
    function: ToolCallFunction


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[TextContentPart | RefusalContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None  # assistant: the calls it made
    tool_call_id: str | None = None  # tool: the call this is the result of
    # The legacy form (`functions`): an assistant's one call, and a `function` message
    # with its result (`name`); rendered as a tool call and a tool result.
    function_call: ToolCallFunction | None = None
    # Replayed from a previous response, ignored: what it refused (its content says
    # it), citations, and audio a response of ours never has.
    refusal: str | None = None
    annotations: list[Any] | None = None
    audio: None = None

    @model_validator(mode="after")
    def _content_present(self) -> ChatMessage:
        if self.content is None and self.role != "assistant":
            raise ValueError(f"a '{self.role}' message needs content")
        if (self.tool_calls is not None or self.function_call is not None) and self.role != "assistant":
            raise ValueError("only an 'assistant' message may have tool_calls or function_call")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a 'tool' message needs tool_call_id")
        if self.tool_call_id is not None and self.role != "tool":
            raise ValueError("only a 'tool' message may have tool_call_id")
        if self.role == "function" and not self.name:
            raise ValueError("a 'function' message needs the function's name")
        return self

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text if isinstance(part, TextContentPart) else part.refusal for part in self.content)


class StreamOptions(_Strict):
    include_usage: Annotated[bool, _null_is(False)] = False
    include_obfuscation: bool | None = None  # ignored: we add no obfuscation padding
    # vLLM's extension (usage in every chunk), sent by GuideLLM on every stream: accepted, and usage comes
    # once, in the last chunk, as `include_usage` asks (a client summing usage per chunk would count twice).
    continuous_usage_stats: bool | None = None


class JSONSchemaFormat(_Strict):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = None
    # Only its shape here: whether it is a valid JSON schema is checked off the event
    # loop, after its size and depth (serving/api/cost.py), since checking a big one
    # took seconds of the loop that streams every token.
    schema_: dict[str, Any] = Field(alias="schema")
    strict: bool | None = None


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_when_needed(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("response_format of type 'json_schema' needs 'json_schema'")
        return self


class _SamplingFields(_Strict):
    """Fields shared by chat and completions, with OpenAI's ranges."""

    model: str = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    n: Annotated[int, _null_is(1)] = Field(default=1, ge=1, le=MAX_N)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=-(2**63), le=2**64 - 1)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    stream: Annotated[bool, _null_is(False)] = False
    stream_options: StreamOptions | None = None
    user: str | None = None  # ignored (IGNORED_FIELDS)
    # vLLM extensions that load tests and benchmarks rely on.
    ignore_eos: Annotated[bool, _null_is(False)] = False
    top_k: int | None = Field(default=None, ge=-1)
    min_tokens: Annotated[int, _null_is(0)] = Field(default=0, ge=0)

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, stop: str | list[str] | None) -> list[str] | None:
        if stop is None:
            return None
        stops = [stop] if isinstance(stop, str) else stop
        if len(stops) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences are allowed")
        if any(s == "" for s in stops):
            raise ValueError("stop sequences must not be empty")
        return stops

    @property
    def requested_max_tokens(self) -> int | None:
        """The completion-token limit the request asks for (endpoint-specific fields)."""
        raise NotImplementedError

    @property
    def stop_sequences(self) -> list[str] | None:
        """`stop` as a list (the validator has turned a single string into one)."""
        return [self.stop] if isinstance(self.stop, str) else self.stop

    @model_validator(mode="after")
    def _min_tokens_fit(self) -> _SamplingFields:
        limit = self.requested_max_tokens
        if limit is not None and self.min_tokens > limit:
            raise ValueError(f"min_tokens ({self.min_tokens}) must be <= the maximum number of tokens ({limit})")
        return self

    @model_validator(mode="after")
    def _stream_options_need_stream(self) -> _SamplingFields:
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed when stream is true")
        return self

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    # Set by the ingress, not the client: end the stream with a usage event even if the
    # client did not ask for one (the event settles a token reservation and is then
    # removed; serving/api/pipeline.py). Travels with the request through a handle.
    _usage_event: bool = PrivateAttr(default=False)

    @property
    def usage_event(self) -> bool:
        return self.include_usage or self._usage_event

    # The body as the client sent it (set by the pipeline after parsing): what a request
    # placed on another replica is forwarded as (serving/routing/forward.py), byte for byte.
    _raw: bytes | None = PrivateAttr(default=None)
    _flow: Any = PrivateAttr(default=None)  # serving.api.fair_queue.Flow: whose it is, set by the pipeline
    # The W3C trace headers of the request's span where it entered (tracing on only): the engine's
    # spans join it, also across a Serve handle (serving/observability/tracing.py).
    _trace: dict[str, str] | None = PrivateAttr(default=None)

    def raw_body(self) -> bytes:
        if self._raw is None:
            return self.model_dump_json(exclude_unset=True, by_alias=True).encode()
        return self._raw


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: Annotated[bool, _null_is(False)] = False
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    response_format: ResponseFormat | None = None
    tools: list[ChatTool] | None = Field(default=None, max_length=MAX_TOOLS)
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    # The legacy form of tools: served as tools (one call at most), answered in its own
    # shape (`message.function_call`, `finish_reason: function_call`).
    functions: list[FunctionDefinition] | None = Field(default=None, max_length=MAX_TOOLS)
    function_call: Literal["none", "auto"] | FunctionName | None = None
    # Not served: null (unset) only, any value a 400 naming the field.
    logit_bias: None = None
    reasoning_effort: None = None
    verbosity: None = None
    audio: None = None
    web_search_options: None = None
    moderation: None = None
    # Ignored (IGNORED_FIELDS): they cannot change what is generated.
    metadata: dict[str, str] | None = None
    store: bool | None = None
    service_tier: str | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None  # our prefix cache keeps what its memory allows
    prompt_cache_options: dict[str, Any] | None = None
    safety_identifier: str | None = None
    prediction: dict[str, Any] | None = None  # a latency hint (predicted outputs): the output is the same
    modalities: list[Literal["text"]] | None = None  # text is all we generate; asking for audio is a 400

    @model_validator(mode="after")
    def _logprobs_consistent(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs requires logprobs to be true")
        return self

    _legacy_functions: bool = PrivateAttr(default=False)

    @model_validator(mode="after")
    def _functions_as_tools(self) -> ChatCompletionRequest:
        """`functions` alone become tools; with tools, or a `function_call` without them, the serving
        layer refuses them by name (serving/api/tools.py `check_tools`)."""
        if self.functions and self.tools is None and self.tool_choice is None:
            self.tools = [ChatTool(type="function", function=f) for f in self.functions]
            choice = self.function_call
            self.tool_choice = (
                NamedToolChoice(type="function", function=choice) if isinstance(choice, FunctionName) else choice
            )
            self.parallel_tool_calls = False
            self._legacy_functions = True
        return self

    @property
    def legacy_functions(self) -> bool:
        """Asked with `functions`: the call is answered as `function_call`."""
        return self._legacy_functions

    @property
    def tool_mode(self) -> str:
        """'none', 'auto', 'required' or 'named' (a function named by tool_choice)."""
        if not self.tools:
            return "none"
        choice = self.tool_choice
        if choice is None:
            return "auto"  # OpenAI's default when tools are given
        return choice if isinstance(choice, str) else "named"

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_SamplingFields):
    prompt: str | list[str] | list[int] = Field()
    logprobs: int | None = Field(default=None, ge=0, le=MAX_COMPLETION_LOGPROBS)
    echo: Annotated[bool, _null_is(False)] = False
    best_of: Literal[1] | None = None  # more candidates than returned is not served (vLLM's V1 engine has none)
    suffix: None = None  # not served: null only
    logit_bias: None = None

    @field_validator("prompt")
    @classmethod
    def _prompt_not_empty(cls, prompt: str | list[str] | list[int]) -> str | list[str] | list[int]:
        if isinstance(prompt, list):
            if len(prompt) == 0:
                raise ValueError("prompt must not be empty")
            if isinstance(prompt[0], str) and len(prompt) != 1:
                raise ValueError("batched prompts are not supported; send one prompt per request")
        return prompt

    @model_validator(mode="after")
    def _echo_unsupported(self) -> CompletionRequest:
        if self.echo:
            raise ValueError("echo is not supported")
        return self

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_tokens


MAX_DETOKENIZE_TOKENS = 1_000_000


class TokenizeRequest(_Strict):
    """POST /tokenize, as vLLM serves it: a prompt, or chat messages (templated, with their tools, as generation
    would see them; the generation prompt added). Exactly one of the two."""

    model: str = Field(min_length=1)
    prompt: str | None = None
    messages: list[ChatMessage] | None = Field(default=None, min_length=1)
    tools: list[ChatTool] | None = Field(default=None, max_length=MAX_TOOLS)
    add_special_tokens: bool | None = None  # a prompt's BOS; default true (as vLLM)

    @model_validator(mode="after")
    def _one_input(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("send either 'prompt' or 'messages'")
        if self.tools is not None and self.messages is None:
            raise ValueError("'tools' go with 'messages'")
        return self


class DetokenizeRequest(_Strict):
    model: str = Field(min_length=1)
    tokens: list[Annotated[int, Field(ge=0)]] = Field(max_length=MAX_DETOKENIZE_TOKENS)


MAX_EMBEDDING_INPUTS = 2048  # as OpenAI


class EmbeddingRequest(_Strict):
    """POST /v1/embeddings. `input`: a string, strings, token ids, or lists of token ids (one vector each)."""

    model: str = Field(min_length=1)
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Annotated[Literal["float", "base64"], _null_is("float")] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None  # accepted and ignored, as for chat

    @field_validator("input")
    @classmethod
    def _inputs(cls, value: str | list[str] | list[int] | list[list[int]]) -> Any:
        if value == "" or (isinstance(value, list) and "" in value):
            raise ValueError("input must not contain an empty string")
        if isinstance(value, list):
            if not value:
                raise ValueError("input must not be empty")
            if len(value) > MAX_EMBEDDING_INPUTS and not isinstance(value[0], int):
                raise ValueError(f"at most {MAX_EMBEDDING_INPUTS} inputs per request")
        return value

    def inputs(self) -> list[str | list[int]]:
        """One entry per vector asked for: a flat list of ids is one input (as OpenAI and vLLM read it)."""
        value = self.input
        if isinstance(value, str):
            return [value]
        if isinstance(value[0], int):
            return [list(value)]
        return list(value)

    # What the generation pipeline asks of any request it admits (serving/api/pipeline.py):
    # nothing streams, nothing is generated.
    stream: ClassVar[bool] = False
    n: ClassVar[int] = 1
    requested_max_tokens: ClassVar[int] = 0
    include_usage: ClassVar[bool] = False
    usage_event: ClassVar[bool] = False
    _usage_event: bool = PrivateAttr(default=False)
    _raw: bytes | None = PrivateAttr(default=None)
    _flow: Any = PrivateAttr(default=None)  # serving.api.fair_queue.Flow: whose it is, set by the pipeline
    # The W3C trace headers of the request's span where it entered (tracing on only): the engine's
    # spans join it, also across a Serve handle (serving/observability/tracing.py).
    _trace: dict[str, str] | None = PrivateAttr(default=None)

    def raw_body(self) -> bytes:
        if self._raw is None:
            return self.model_dump_json(exclude_unset=True).encode()
        return self._raw
