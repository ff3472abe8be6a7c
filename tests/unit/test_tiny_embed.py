"""The tiny embedding model: built offline, deterministic, in the layout vLLM's pooling runner reads.

That vLLM serves it (pooling runner, last-token pooling, unit vectors, Matryoshka
dimensions) is the engine's test; here, what the build writes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from serving.models import tiny_embed
from serving.models.tiny_embed import BUILD_VERSION, MATRYOSHKA_DIMENSIONS, MODEL_NAME, ensure_tiny_embed


@pytest.fixture(scope="module")
def two_builds(tmp_path_factory) -> tuple[Path, Path]:
    paths = []
    for name in ("embed-a", "embed-b"):
        root = tmp_path_factory.mktemp(name)
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("SERVING_MODEL_CACHE", str(root))
            paths.append(ensure_tiny_embed())
            assert paths[-1] == root / f"{MODEL_NAME}-{BUILD_VERSION}" == tiny_embed.model_dir()
    return paths[0], paths[1]


def test_two_builds_are_identical(two_builds):
    a, b = two_builds
    for name in ("model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json", "modules.json"):
        assert hashlib.sha256((a / name).read_bytes()).digest() == hashlib.sha256((b / name).read_bytes()).digest(), (
            name
        )


def test_the_layout_says_embedding_model_last_token_pooling_normalized(two_builds):
    path = two_builds[0]
    config = json.loads((path / "config.json").read_text())
    assert config["architectures"] == ["LlamaModel"]  # no LM head: vLLM's embedding runner
    assert config["matryoshka_dimensions"] == MATRYOSHKA_DIMENSIONS
    assert config["hidden_size"] // config["num_attention_heads"] >= 64  # vLLM's CPU attention
    modules = [m["type"].rsplit(".", 1)[1] for m in json.loads((path / "modules.json").read_text())]
    assert modules == ["Transformer", "Pooling", "Normalize"]
    assert json.loads((path / "1_Pooling" / "config.json").read_text())["pooling_mode_lasttoken"] is True
    assert "chat_template" not in json.loads((path / "tokenizer_config.json").read_text())


def test_distinct_texts_embed_differently_and_the_same_text_the_same(two_builds):
    import torch
    from transformers import AutoModel, AutoTokenizer

    path = two_builds[0]
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path)

    def embed(text: str) -> torch.Tensor:
        ids = tokenizer(text, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            return torch.nn.functional.normalize(model(ids).last_hidden_state[0, -1], dim=0)

    a, again, b = embed("the cat sat on the mat"), embed("the cat sat on the mat"), embed("a tax form for 2026")
    assert torch.equal(a, again)
    assert float(a @ b) < 0.999
