"""LoRA adapters for the tiny Llama: built offline, deterministic per name, in PEFT's layout.

That vLLM loads them and that each changes greedy output is the adapter tests' job
on the real engine (measured once by hand: 16 of 16 greedy tokens differed from the
base model for each of two adapters, and an adapter gave the same tokens twice).
"""

from __future__ import annotations

import hashlib
import json

import pytest

from serving.models.tiny_lora import RANK, TARGET_MODULES, adapter_dir, ensure_tiny_lora


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SERVING_MODEL_CACHE", str(tmp_path))
    return tmp_path


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_same_name_same_files_other_name_other_weights(cache, tmp_path_factory, monkeypatch):
    a = ensure_tiny_lora("alpha")
    assert a == adapter_dir("alpha") and a.parent == cache
    b = ensure_tiny_lora("beta")
    other = tmp_path_factory.mktemp("other-cache")
    monkeypatch.setenv("SERVING_MODEL_CACHE", str(other))
    again = ensure_tiny_lora("alpha")
    assert again.parent == other
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        assert digest(a / name) == digest(again / name), name
    assert digest(a / "adapter_model.safetensors") != digest(b / "adapter_model.safetensors")


def test_peft_layout(cache):
    from safetensors import safe_open

    path = ensure_tiny_lora("alpha")
    config = json.loads((path / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == RANK and config["target_modules"] == list(TARGET_MODULES)
    with safe_open(str(path / "adapter_model.safetensors"), "pt") as f:
        keys = set(f.keys())
        shapes = {k: tuple(f.get_tensor(k).shape) for k in keys}
    assert len(keys) == 2 * 2 * len(TARGET_MODULES)  # 2 layers, A and B each
    a_key = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    assert shapes[a_key] == (RANK, 128) and shapes[a_key.replace("lora_A", "lora_B")] == (128, RANK)


@pytest.mark.parametrize("bad", ["", "Upper", "../x", "a" * 65, "has space"])
def test_names_are_checked(cache, bad):
    with pytest.raises(ValueError):
        ensure_tiny_lora(bad)
