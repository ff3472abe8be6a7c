"""What one request may cost, checked before it reaches the engine: cheap, O(1) in the work it prevents.

Every check here runs on the event loop that streams every token of the
replica, so each one is a length or a product, never a pass over the prompt's
tokens. What they bound (measured on 2 cores before they existed: SECURITY.md,
"Request cost"):

* choices and their logprobs: `n` at most `limits.max_n`; with logprobs,
  `n x (top_logprobs + 1)` entries per generated position at most
  `limits.max_logprobs_per_token` (each engine step's logprobs are detokenized
  and encoded on the loop: at 16 x 21 per step the frontend fell behind the
  engine and other streams stalled 0.5 s; at 4 x 21, 20 ms), and
  `n x max_tokens x (top_logprobs + 1)` entries in all at most
  `limits.max_logprob_entries` (a non-streaming `n=128, top_logprobs=20`
  request of 1k tokens per choice built a 180 MB body for 23 s on the loop);
  optionally `n x max_tokens` at most `limits.max_output_tokens`. An omitted
  `max_tokens` counts as the whole context, which is what it may generate.
* a `response_format` JSON schema: its encoded size and nesting depth;
* a prompt that cannot fit: its characters divided by the longest token the
  engine's vocabulary has (`EngineInfo.max_token_chars`) is a lower bound on
  its tokens, so a prompt over the context is refused without tokenizing it.
"""

from __future__ import annotations

from typing import Any

from serving.api.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from serving.api.streaming import encode_json
from serving.config import LimitsConfig
from serving.errors import InvalidRequestError, PromptTooLongError

SCHEMA_PARAM = "response_format.json_schema.schema"


def _depth(node: Any, limit: int) -> int:
    """Nesting depth of JSON data, stopping once past `limit` (an iterative walk: no recursion limit)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(node, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > deepest:
            deepest = depth
            if deepest > limit:
                return deepest
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return deepest


def check_schema(schema: dict[str, Any] | None, limits: LimitsConfig, param: str = SCHEMA_PARAM) -> None:
    if schema is None:
        return
    size = len(encode_json(schema))
    if size > limits.max_schema_bytes:
        raise InvalidRequestError(
            f"The JSON schema is {size} bytes; this server accepts schemas up to {limits.max_schema_bytes} bytes.",
            param=param,
            code="schema_too_large",
        )
    if _depth(schema, limits.max_schema_depth) > limits.max_schema_depth:
        raise InvalidRequestError(
            f"The JSON schema is nested deeper than {limits.max_schema_depth} levels.",
            param=param,
            code="schema_too_deep",
        )


def validate_schema(schema: dict[str, Any], param: str = SCHEMA_PARAM) -> None:
    """Whether `schema` is a valid JSON schema (draft 2020-12): slow on big schemas, so run off the loop.

    Every failure is the caller's: a `pattern` Python's `re` cannot compile
    (`a{99999999999}` overflows it), nesting past the recursion limit, a bad
    keyword value.
    """
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        raise InvalidRequestError(f"Invalid JSON schema: {exc.message}", param=param) from None
    except RecursionError:
        raise InvalidRequestError("Invalid JSON schema: nested too deeply.", param=param) from None
    except Exception as exc:  # e.g. re.error, OverflowError from a `pattern`
        raise InvalidRequestError(f"Invalid JSON schema: {type(exc).__name__}: {exc}", param=param) from None


def request_schema(req: ChatCompletionRequest | CompletionRequest) -> dict[str, Any] | None:
    if isinstance(req, ChatCompletionRequest):
        fmt = req.response_format
        if fmt is not None and fmt.type == "json_schema" and fmt.json_schema is not None:
            return fmt.json_schema.schema_
    return None


def estimated_input_tokens(req: EmbeddingRequest) -> int:
    """An embeddings request's tokens before tokenizing: 4 characters a token, token-id inputs counted."""
    return sum(len(x) // 4 if isinstance(x, str) else len(x) for x in req.inputs())


def prompt_chars(req: ChatCompletionRequest | CompletionRequest) -> int | None:
    """Characters of the prompt text, or None for a prompt given as token ids (counted exactly by the engine)."""
    if isinstance(req, ChatCompletionRequest):
        return sum(len(m.text()) for m in req.messages)
    prompt = req.prompt
    if isinstance(prompt, str):
        return len(prompt)
    first = prompt[0]
    return len(first) if isinstance(first, str) else None


def check_cost(
    req: ChatCompletionRequest | CompletionRequest,
    limits: LimitsConfig,
    max_model_len: int,
    max_token_chars: int | None,
) -> None:
    """Refuse with a 400 what would cost more than the limits allow; see the module docstring."""
    n = req.n
    if n > limits.max_n:
        raise InvalidRequestError(
            f"n is {n}; this server allows at most {limits.max_n} choices per request.", param="n", code="n_too_large"
        )
    chars = prompt_chars(req)
    if chars is not None and max_token_chars:
        at_least = -(-chars // max_token_chars)
        if at_least >= max_model_len:
            err = PromptTooLongError(at_least, req.requested_max_tokens or 1, max_model_len)
            err.message = (
                f"This model's maximum context length is {max_model_len} tokens. Your prompt has {chars} characters, "
                f"at least {at_least} tokens. Please reduce the length of the prompt."
            )
            err.param = "messages" if isinstance(req, ChatCompletionRequest) else "prompt"
            raise err
    per_choice = req.requested_max_tokens or max_model_len
    if limits.max_output_tokens is not None and n * per_choice > limits.max_output_tokens:
        raise InvalidRequestError(
            f"n x max_tokens is {n} x {per_choice} = {n * per_choice} tokens (an omitted max_tokens counts as the "
            f"context, {max_model_len}); this server allows at most {limits.max_output_tokens} per request.",
            param="max_tokens",
            code="request_too_large",
        )
    top = _top_logprobs(req)
    if top is not None:
        logprobs_param = "top_logprobs" if isinstance(req, ChatCompletionRequest) else "logprobs"
        width = n * (top + 1)
        if width > limits.max_logprobs_per_token:
            raise InvalidRequestError(
                f"Logprobs for n x (top_logprobs + 1) = {n} x {top + 1} = {width} tokens per generated position "
                f"exceed this server's limit of {limits.max_logprobs_per_token}. Lower n or top_logprobs.",
                param=logprobs_param,
                code="request_too_large",
            )
        entries = n * per_choice * (top + 1)
        if entries > limits.max_logprob_entries:
            raise InvalidRequestError(
                f"Logprobs for n x max_tokens x (top_logprobs + 1) = {n} x {per_choice} x {top + 1} = {entries} "
                f"tokens exceed this server's limit of {limits.max_logprob_entries} (an omitted max_tokens counts as "
                f"the context, {max_model_len}). Lower n, max_tokens or top_logprobs.",
                param=logprobs_param,
                code="request_too_large",
            )
    check_schema(request_schema(req), limits)


def _top_logprobs(req: ChatCompletionRequest | CompletionRequest) -> int | None:
    if isinstance(req, ChatCompletionRequest):
        return (req.top_logprobs or 0) if req.logprobs else None
    return req.logprobs
