"""`tool_choice: auto` on the real engine: vLLM's own `hermes` parser, as serving/engine/vllm_engine.py drives it.

The tiny model's random weights never write a call, so the engine test
(tests/e2e/test_tools.py) sees only text; here the parser is fed what a model
following the tiny model's template would write, in the pieces an engine
yields, with the tiny model's tokenizer. No engine runs.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from serving.models.tiny_llama import ensure_tiny_llama

WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
}


@pytest.fixture(scope="module")
def reader_factory():
    from transformers import AutoTokenizer
    from vllm.parser import ParserManager

    from serving.engine.vllm_engine import _ToolCallReader

    tokenizer = AutoTokenizer.from_pretrained(ensure_tiny_llama())
    parser_cls = ParserManager.get_parser(tool_parser_name="hermes", enable_auto_tools=True, tokenizer=tokenizer)
    return lambda: (_ToolCallReader(parser_cls, tokenizer, None, "tiny-llama", [WEATHER]), tokenizer)


def feed(reader, tokenizer, text: str, size: int):
    """`text` in pieces of `size` characters, as engine outputs; the content and the calls assembled."""
    content, calls = "", {}
    pieces = [text[i : i + size] for i in range(0, len(text), size)]
    for i, piece in enumerate(pieces):
        out = SimpleNamespace(
            index=0,
            text=piece,
            token_ids=tokenizer.encode(piece, add_special_tokens=False),
            finish_reason="stop" if i == len(pieces) - 1 else None,
        )
        text_part, deltas = reader.split(out, [1, 2, 3])
        content += text_part
        for d in deltas or ():
            call = calls.setdefault(d.index, {"id": None, "name": None, "arguments": ""})
            if d.id:
                call["id"] = d.id
            if d.name:
                call["name"] = d.name
            call["arguments"] += d.arguments
    return content, calls


@pytest.mark.parametrize("size", [1, 3, 7, 1000])
def test_hermes_calls_found_in_the_templates_format(reader_factory, size):
    reader, tokenizer = reader_factory()
    text = (
        'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
    )
    content, calls = feed(reader, tokenizer, text, size)
    assert content.strip() == "Let me check."
    assert [c["name"] for c in calls.values()] == ["get_weather", "get_weather"]
    assert [json.loads(c["arguments"]) for c in calls.values()] == [{"city": "Paris"}, {"city": "Oslo"}]
    assert all(c["id"] for c in calls.values())


def test_text_without_a_call_stays_content(reader_factory):
    reader, tokenizer = reader_factory()
    content, calls = feed(reader, tokenizer, "The weather is fine, no tool needed.", 4)
    assert content == "The weather is fine, no tool needed." and calls == {}
