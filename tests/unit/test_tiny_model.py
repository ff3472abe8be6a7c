"""The embedded tiny Llama: built offline, deterministic, loadable, cached.

Two builds (a few seconds each on CPU) are shared by the whole module.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from serving.models import tiny_llama
from serving.models.tiny_llama import BUILD_VERSION, MODEL_NAME, ensure_tiny_llama

DETERMINISTIC_FILES = [
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "config.json",
    "generation_config.json",
]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def two_builds(tmp_path_factory) -> tuple[Path, Path]:
    paths = []
    for name in ("cache-a", "cache-b"):
        root = tmp_path_factory.mktemp(name)
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("SERVING_MODEL_CACHE", str(root))
            path = ensure_tiny_llama()
        assert path == root / f"{MODEL_NAME}-{BUILD_VERSION}"
        paths.append(path)
    return paths[0], paths[1]


@pytest.fixture(scope="module")
def model_path(two_builds) -> Path:
    return two_builds[0]


def test_cache_root_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("SERVING_MODEL_CACHE", str(tmp_path))
    assert tiny_llama.cache_root() == tmp_path
    assert tiny_llama.model_dir() == tmp_path / f"{MODEL_NAME}-{BUILD_VERSION}"
    monkeypatch.delenv("SERVING_MODEL_CACHE")
    assert tiny_llama.cache_root() == Path.home() / ".cache" / "serving" / "models"


def test_build_writes_expected_files(model_path):
    names = set(os.listdir(model_path))
    assert set(DETERMINISTIC_FILES) | {"BUILD"} <= names
    assert (model_path / "BUILD").read_text() == f"{MODEL_NAME} {BUILD_VERSION}\n"


def test_no_temp_dirs_left_behind(model_path):
    leftovers = [p.name for p in model_path.parent.iterdir() if p.is_dir() and p != model_path]
    assert leftovers == []


@pytest.mark.parametrize("name", DETERMINISTIC_FILES)
def test_build_is_deterministic(two_builds, name):
    a, b = two_builds
    assert (a / name).read_bytes() == (b / name).read_bytes(), f"{name} differs between builds"


def test_weights_are_deterministic_digest(two_builds):
    a, b = two_builds
    assert _digest(a / "model.safetensors") == _digest(b / "model.safetensors")
    assert _digest(a / "tokenizer.json") == _digest(b / "tokenizer.json")


def test_config_shape(model_path):
    cfg = json.loads((model_path / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    assert head_dim >= 64  # vLLM's CPU attention rejects smaller heads
    assert cfg["hidden_size"] // cfg["num_attention_heads"] >= 64
    assert cfg["hidden_size"] % cfg["num_attention_heads"] == 0
    assert cfg["num_attention_heads"] % cfg["num_key_value_heads"] == 0
    assert cfg["max_position_embeddings"] >= 2048  # configs/dev.yaml uses max_model_len 2048
    assert cfg["tie_word_embeddings"] is False


def test_weights_match_config(model_path):
    from safetensors import safe_open

    cfg = json.loads((model_path / "config.json").read_text())
    with safe_open(str(model_path / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        embed = f.get_slice("model.embed_tokens.weight").get_shape()
        head = f.get_slice("lm_head.weight").get_shape()
        dtype = f.get_slice("model.embed_tokens.weight").get_dtype()
    assert embed == [cfg["vocab_size"], cfg["hidden_size"]]
    assert head == [cfg["vocab_size"], cfg["hidden_size"]]
    assert dtype == "BF16"
    assert sum(k.endswith("self_attn.q_proj.weight") for k in keys) == cfg["num_hidden_layers"]


@pytest.fixture(scope="module")
def tokenizer(model_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_path))


def test_tokenizer_matches_config(tokenizer, model_path):
    cfg = json.loads((model_path / "config.json").read_text())
    gen = json.loads((model_path / "generation_config.json").read_text())
    assert len(tokenizer) == cfg["vocab_size"]
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tokenizer.eos_token == "<|im_end|>"
    assert im_end in cfg["eos_token_id"]
    assert gen["eos_token_id"] == cfg["eos_token_id"]
    assert tokenizer.pad_token_id == cfg["pad_token_id"] == gen["pad_token_id"]
    assert tokenizer.bos_token_id == cfg["bos_token_id"] == gen["bos_token_id"]
    assert all(i < cfg["vocab_size"] for i in cfg["eos_token_id"])


def test_tokenizer_round_trips_text(tokenizer):
    text = "Hello, world! Ünïcødé 日本語 and   spaces\n"
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids) == text


def test_chat_template_renders(tokenizer):
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == ("<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    no_prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    assert not no_prompt.endswith("<|im_start|>assistant\n")
    ids = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    if isinstance(ids, dict) or hasattr(ids, "input_ids"):
        ids = ids["input_ids"]
    assert ids.count(tokenizer.convert_tokens_to_ids("<|im_start|>")) == 3  # special tokens stay single ids
    assert tokenizer.decode(ids) == text


def test_ensure_is_idempotent(monkeypatch, model_path):
    monkeypatch.setenv("SERVING_MODEL_CACHE", str(model_path.parent))
    before = {p.name: p.stat().st_mtime_ns for p in model_path.iterdir()}

    def no_rebuild(out):
        raise AssertionError("ensure_tiny_llama rebuilt an existing model")

    monkeypatch.setattr(tiny_llama, "_build", no_rebuild)
    assert ensure_tiny_llama() == model_path
    assert ensure_tiny_llama() == model_path
    after = {p.name: p.stat().st_mtime_ns for p in model_path.iterdir()}
    assert after == before


def test_failed_build_leaves_nothing(monkeypatch, tmp_path):
    monkeypatch.setenv("SERVING_MODEL_CACHE", str(tmp_path))

    def broken(out):
        (out / "partial").write_text("x")
        raise RuntimeError("disk full")

    monkeypatch.setattr(tiny_llama, "_build", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        ensure_tiny_llama()
    assert [p for p in tmp_path.iterdir() if p.is_dir()] == []
    assert not tiny_llama.model_dir().exists()


def test_chat_template_renders_tools_calls_and_results(tokenizer):
    """Qwen2.5's (Hermes) format, which vLLM's `hermes` parser reads back (tests/unit/test_vllm_tool_parser.py)."""
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ]
    text = tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\nbe brief\n\n# Tools\n")
    assert (
        '\n<tools>\n{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}\n</tools>'
        in text
    )
    assert text.count("<|im_start|>system") == 1  # the system message went into the tools preamble
    assert (
        '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\n<tool_response>\nsunny\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
    ) in text
    # without tools, a call-free conversation renders exactly as before (v1's plain ChatML)
    plain = tokenizer.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
    assert (
        plain == "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nweather?<|im_end|>\n<|im_start|>assistant\n"
    )
