"""A tiny embedding model built offline, deterministically, for `/v1/embeddings` on vLLM's pooling runner.

The tiny Llama's tokenizer (serving/models/tiny_llama.py) with a seeded random
`LlamaModel` (no LM head) in the sentence-transformers layout that vLLM reads
to pick its pooling runner: `modules.json` lists a Transformer, a Pooling
module (last token, as decoder embedders such as e5-mistral pool) and a
Normalize module, so vLLM serves it as an embedding model without flags and
its vectors have unit length. `matryoshka_dimensions` in config.json lets a
request ask for 32 or 64 of the 128 dimensions (`dimensions`). The context is
512 tokens, so "too long" is cheap to test. Useless as embeddings (random
weights), real for the serving path.

The build is keyed by `BUILD_VERSION`, as the tiny Llama's.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from serving.models.tiny_llama import cache_root, ensure_built, ensure_tiny_llama

BUILD_VERSION = "v1"
MODEL_NAME = "tiny-embed"

HIDDEN_SIZE = 128
NUM_HEADS = 2  # head_dim 64, the minimum vLLM's CPU attention accepts
NUM_LAYERS = 2
INTERMEDIATE_SIZE = 256
MAX_POSITIONS = 512
MATRYOSHKA_DIMENSIONS = [32, 64, 128]
SEED = 4321


def model_dir() -> Path:
    return cache_root() / f"{MODEL_NAME}-{BUILD_VERSION}"


def ensure_tiny_embed() -> Path:
    """Return the model folder, building it (and the tiny Llama, for its tokenizer) first if missing."""
    return ensure_built(model_dir(), _build)


def _build(out: Path) -> None:
    import torch
    from transformers import LlamaConfig, LlamaModel

    chat_model = ensure_tiny_llama()
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (chat_model / name).exists():
            shutil.copyfile(chat_model / name, out / name)
    tokenizer_config = json.loads((out / "tokenizer_config.json").read_text())
    tokenizer_config.pop("chat_template", None)  # an embedding model has no chat
    tokenizer_config["model_max_length"] = MAX_POSITIONS
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2, sort_keys=True))

    chat_config = json.loads((chat_model / "config.json").read_text())
    config = LlamaConfig(
        vocab_size=chat_config["vocab_size"],
        hidden_size=HIDDEN_SIZE,
        intermediate_size=INTERMEDIATE_SIZE,
        num_hidden_layers=NUM_LAYERS,
        num_attention_heads=NUM_HEADS,
        num_key_value_heads=NUM_HEADS,
        max_position_embeddings=MAX_POSITIONS,
        bos_token_id=chat_config["bos_token_id"],
        eos_token_id=chat_config["eos_token_id"],
        pad_token_id=chat_config["pad_token_id"],
        torch_dtype="float32",
    )
    config.matryoshka_dimensions = MATRYOSHKA_DIMENSIONS
    torch.manual_seed(SEED)
    LlamaModel(config).save_pretrained(out, safe_serialization=True)

    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    (out / "modules.json").write_text(json.dumps(modules, indent=2))
    (out / "1_Pooling").mkdir()
    (out / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": HIDDEN_SIZE, "pooling_mode_lasttoken": True}, indent=2)
    )
    (out / "2_Normalize").mkdir()
    (out / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": MAX_POSITIONS, "do_lower_case": False}, indent=2)
    )
    (out / "BUILD").write_text(f"{MODEL_NAME} {BUILD_VERSION}\n")
