"""The embedded default model: a tiny Llama built offline, deterministically.

Nothing is downloaded: the byte-level BPE tokenizer is trained on `corpus.txt`
(shipped beside this file) and the weights are seeded random numbers. The model
is useless as a language model but real for the serving path: vLLM loads it with
the same code as any Llama checkpoint, it has a chat template, and it is fast on
a 2-core CPU. head_dim is 64 because vLLM's CPU attention rejects smaller heads.

The build is keyed by `BUILD_VERSION`: change anything below and bump it, so a
stale cache is never served under the same name.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

BUILD_VERSION = "v2"  # v2: the chat template renders tools, calls and their results
MODEL_NAME = "tiny-llama"

VOCAB_SIZE = 1024
HIDDEN_SIZE = 128
NUM_HEADS = 2  # head_dim = 128 / 2 = 64, the minimum vLLM's CPU attention accepts
NUM_LAYERS = 2
INTERMEDIATE_SIZE = 256
MAX_POSITIONS = 4096
SEED = 1234

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
# ChatML, with tools as Qwen2.5 (Hermes) renders them: the tools in a system message,
# calls as <tool_call>{"name", "arguments"}</tool_call> (what vLLM's `hermes` parser
# reads), results as <tool_response> in a user turn. Without tools it renders exactly
# the plain ChatML of v1. (transformers renders with trim_blocks: a newline right after
# a block tag is dropped, so none is written there.)
_TOOLS_PREAMBLE = (
    "<|im_start|>system\n"
    "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}\n\n{% endif %}"
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
    "{% for tool in tools %}{{ tool | tojson }}\n{% endfor %}</tools>\n\n"
    "For each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n'
)
CHAT_TEMPLATE = (
    "{% if tools %}" + _TOOLS_PREAMBLE + "{% endif %}"
    "{% for message in messages %}"
    "{% if tools and loop.first and message['role'] == 'system' %}"
    "{% elif message['role'] == 'assistant' %}"
    "<|im_start|>assistant\n{{ message['content'] or '' }}"
    "{% for call in message['tool_calls'] or [] %}"
    "{% if not loop.first or message['content'] %}{{ '\\n' }}{% endif %}"
    '<tool_call>\n{"name": "{{ call[\'function\'][\'name\'] }}", "arguments": '
    "{{ call['function']['arguments'] | tojson }}}\n</tool_call>"
    "{% endfor %}<|im_end|>\n"
    "{% elif message['role'] == 'tool' %}"
    "<|im_start|>user\n<tool_response>\n{{ message['content'] }}\n</tool_response><|im_end|>\n"
    "{% else %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def cache_root() -> Path:
    """Where built models live; `SERVING_MODEL_CACHE` overrides the default."""
    env = os.environ.get("SERVING_MODEL_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "serving" / "models"


def model_dir() -> Path:
    return cache_root() / f"{MODEL_NAME}-{BUILD_VERSION}"


def ensure_tiny_llama() -> Path:
    """Return the model folder, building it first if missing."""
    return ensure_built(model_dir(), _build)


def ensure_built(target: Path, build: Callable[[Path], None], ready_file: str = "config.json") -> Path:
    """Return `target`, made by `build(folder)` first if missing (`ready_file` in it says it is there).

    Safe to call from several processes at once (replicas starting together):
    a file lock serialises the build and the folder appears by atomic rename.
    """
    if (target / ready_file).exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / ready_file).exists():
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            build(tmp)
            os.rename(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


def _build(out: Path) -> None:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    corpus = (Path(__file__).parent / "corpus.txt").read_text(encoding="utf-8")

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Repeating the corpus gives the trainer enough pair counts to fill the vocabulary.
    tokenizer.train_from_iterator([corpus] * 4, trainer=trainer)

    hf_tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="<|im_end|>",
        pad_token="<pad>",
        additional_special_tokens=["<|im_start|>", "</s>"],
        model_max_length=MAX_POSITIONS,
    )
    hf_tokenizer.chat_template = CHAT_TEMPLATE
    hf_tokenizer.save_pretrained(out)

    ids = {t: tokenizer.token_to_id(t) for t in SPECIAL_TOKENS}
    config = LlamaConfig(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=HIDDEN_SIZE,
        intermediate_size=INTERMEDIATE_SIZE,
        num_hidden_layers=NUM_LAYERS,
        num_attention_heads=NUM_HEADS,
        num_key_value_heads=NUM_HEADS,
        max_position_embeddings=MAX_POSITIONS,
        bos_token_id=ids["<s>"],
        eos_token_id=[ids["<|im_end|>"], ids["</s>"]],
        pad_token_id=ids["<pad>"],
        tie_word_embeddings=False,
        torch_dtype="bfloat16",
    )
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    (out / "generation_config.json").write_text(
        json.dumps(
            {
                "bos_token_id": ids["<s>"],
                "eos_token_id": [ids["<|im_end|>"], ids["</s>"]],
                "pad_token_id": ids["<pad>"],
            },
            indent=2,
        )
    )
    (out / "BUILD").write_text(f"{MODEL_NAME} {BUILD_VERSION}\n")
