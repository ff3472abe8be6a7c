"""LoRA adapters on the real vLLM engine (punica_cpu), in this process (no Serve: the engine alone).

The adapters are the tiny Llama's, built offline per name (serving/models/tiny_lora.py). What must hold:
each adapter changes the greedy output, the same adapter gives the same tokens (also after it was evicted
and loaded again), and an adapter that does not exist or cannot load is refused with a 4xx error while the
engine serves on: vLLM's engine core died when handed a LoRA folder that did not exist (measured), so
serving/engine/adapters.py checks every adapter before vLLM sees it.
"""

from __future__ import annotations

import json
import shutil

import pytest

from serving.config import LoraConfig, ModelConfig
from serving.engine.adapters import InvalidAdapterError
from serving.engine.base import EngineRequest, GenerationParams
from serving.engine.factory import make_engine
from serving.errors import ModelNotFoundError
from serving.models.tiny_lora import ensure_tiny_lora

PROMPT = "The quick brown fox"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    for name in ("sql", "chat", "legal"):
        shutil.copytree(ensure_tiny_lora(name), root / name)
    # An adapter of another model (weights for a module this one does not have): vLLM's own load refuses it.
    bad = root / "other-model"
    shutil.copytree(ensure_tiny_lora("sql"), bad)
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(bad / "adapter_model.safetensors"))
    save_file({k.replace("v_proj", "w_gate"): v for k, v in tensors.items()}, str(bad / "adapter_model.safetensors"))
    config = json.loads((bad / "adapter_config.json").read_text())
    (bad / "adapter_config.json").write_text(json.dumps({**config, "target_modules": ["q_proj", "w_gate"]}))
    missing = root / "no-config"
    shutil.copytree(ensure_tiny_lora("chat"), missing)
    (missing / "adapter_config.json").unlink()
    (root / "rank-too-big").mkdir()
    shutil.copy(ensure_tiny_lora("chat") / "adapter_model.safetensors", root / "rank-too-big")
    config = json.loads((ensure_tiny_lora("chat") / "adapter_config.json").read_text())
    (root / "rank-too-big" / "adapter_config.json").write_text(json.dumps({**config, "r": 64}))
    return root


@pytest.fixture(scope="module")
async def engine(store):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
        cfg = ModelConfig(
            id="tiny-llama",
            source="builtin:tiny-llama",
            engine_args={"dtype": "float32", "max_model_len": 512},
            lora=LoraConfig(adapters={"pinned": "builtin:tiny-lora/pinned"}, store=f"file://{store}", max_loaded=2,
                            max_loras=2, max_rank=16),
        )  # fmt: skip
        made = make_engine(cfg)
        await made.start()
    yield made
    await made.shutdown()


async def greedy(engine, adapter: str | None, max_tokens: int = 16) -> str:
    request = EngineRequest(
        f"r-{adapter}-{id(engine)}",
        GenerationParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True),
        prompt=PROMPT,
        adapter=adapter,
    )
    text = ""
    async for out in engine.generate(request):
        text += out.choices[0].text
    return text


async def test_each_adapter_changes_the_output_and_repeats_itself(engine):
    base = await greedy(engine, None)
    sql, chat = await greedy(engine, "sql"), await greedy(engine, "chat")
    assert len({base, sql, chat}) == 3
    assert await greedy(engine, "chat") == chat
    pinned = await greedy(engine, "pinned")  # a static adapter, built offline by the builtin source
    assert pinned not in (base, sql, chat)
    # max_loaded 2: sql was evicted (by chat, then pinned); loaded again, it answers the same
    assert "sql" not in engine.adapters()
    assert await greedy(engine, "sql") == sql
    assert await greedy(engine, None) == base  # the base model is untouched by its adapters
    stats = await engine.stats()
    assert stats["lora_loads"] >= 4 and stats["lora_evictions"] >= 2 and stats["lora_loaded"] == 2


@pytest.mark.parametrize(
    "name, error, words",
    [
        ("nope", ModelNotFoundError, "does not exist"),
        ("no-config", ModelNotFoundError, "does not exist"),
        ("other-model", InvalidAdapterError, "cannot be loaded: While loading <adapter>, expected target modules"),
        ("rank-too-big", InvalidAdapterError, "rank 64"),
    ],
)
async def test_a_missing_or_bad_adapter_is_refused_and_the_engine_serves_on(engine, name, error, words):
    with pytest.raises(error) as err:
        await greedy(engine, name)
    assert words in err.value.message and err.value.param == "model"
    assert "/" not in err.value.message.replace("tiny-llama:", "")  # no server paths in a client's error
    await engine.check_health()
    assert len(await greedy(engine, "legal", 4)) > 0 and len(await greedy(engine, None, 4)) > 0
