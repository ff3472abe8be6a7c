"""LoRA adapters for the tiny Llama, built offline and deterministically (PEFT's on-disk format, without PEFT).

Each adapter is seeded by its name, so `ensure_tiny_lora("sql")` is the same
files on every machine and differs from `ensure_tiny_lora("chat")`. Rank 8 on
the attention's q_proj and v_proj of both layers, with B drawn large enough
(std `B_STD`) that greedy output changes measurably against the base model:
what tests of adapter loading and routing need. Useless as fine-tunes.

The build is keyed by `BUILD_VERSION` and by the tiny Llama's own build.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from serving.models import tiny_llama
from serving.models.tiny_llama import cache_root, ensure_built, ensure_tiny_llama

BUILD_VERSION = "v1"
RANK = 8
ALPHA = 16
TARGET_MODULES = ("q_proj", "v_proj")
B_STD = 0.5
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")


def adapter_dir(name: str) -> Path:
    return cache_root() / f"{tiny_llama.MODEL_NAME}-{tiny_llama.BUILD_VERSION}-lora-{name}-{BUILD_VERSION}"


def ensure_tiny_lora(name: str) -> Path:
    """The adapter folder for `name` (lowercase letters, digits, _ and -), built first if missing."""
    if not _NAME.fullmatch(name):
        raise ValueError(f"adapter name {name!r}: lowercase letters, digits, _ and - (at most 64)")
    return ensure_built(adapter_dir(name), lambda out: _build(out, name), ready_file="adapter_config.json")


def _build(out: Path, name: str) -> None:
    import torch
    from safetensors.torch import save_file

    base = ensure_tiny_llama()
    config = json.loads((base / "config.json").read_text())
    hidden = config["hidden_size"]
    head_dim = hidden // config["num_attention_heads"]
    out_features = {"q_proj": hidden, "v_proj": config["num_key_value_heads"] * head_dim}
    seed = int.from_bytes(hashlib.blake2b(name.encode(), digest_size=4).digest(), "big")
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(config["num_hidden_layers"]):
        for module in TARGET_MODULES:
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{module}"
            a = torch.randn(RANK, hidden, generator=generator) / hidden**0.5
            b = torch.randn(out_features[module], RANK, generator=generator) * B_STD
            tensors[f"{prefix}.lora_A.weight"] = a.contiguous()
            tensors[f"{prefix}.lora_B.weight"] = b.contiguous()
    save_file(tensors, str(out / "adapter_model.safetensors"))
    adapter_config = {
        "base_model_name_or_path": tiny_llama.MODEL_NAME,
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": RANK,
        "lora_alpha": ALPHA,
        "lora_dropout": 0.0,
        "target_modules": list(TARGET_MODULES),
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "modules_to_save": None,
        "use_rslora": False,
        "use_dora": False,
    }
    (out / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2, sort_keys=True))
    (out / "BUILD").write_text(f"{tiny_llama.MODEL_NAME}-{tiny_llama.BUILD_VERSION} lora {name} {BUILD_VERSION}\n")
