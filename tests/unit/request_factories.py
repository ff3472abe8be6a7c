"""Validated OpenAI requests for unit tests: `chat(**fields)` and `completion(**fields)` over minimal bodies."""

from __future__ import annotations

from typing import Any

from serving.api.protocol import ChatCompletionRequest, CompletionRequest

USER = [{"role": "user", "content": "hi"}]


def chat(**kw: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": "m", "messages": USER, **kw})


def completion(**kw: Any) -> CompletionRequest:
    return CompletionRequest.model_validate({"model": "m", "prompt": "hi", **kw})
