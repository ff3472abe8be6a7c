"""LoRA adapters through the API, on the simulated engine (the real engine: tests/e2e/test_lora_engine.py).

The simulator finds, checks and loads adapters with the same code as the vLLM
engine (serving/engine/adapters.py); what it does not do is read the weights.
So these folders hold a PEFT config and a placeholder weights file.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import openai
import pytest

from serving.config import ConfigError, LoraConfig, parse_app_args
from tests.inprocess import MODEL, simulated_app


def adapter_folder(root: Path, name: str, rank: int = 8, config: str | None = None) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    text = config if config is not None else json.dumps({"peft_type": "LORA", "r": rank, "target_modules": ["q_proj"]})
    (folder / "adapter_config.json").write_text(text)
    (folder / "adapter_model.safetensors").write_bytes(b"\0" * 16)
    return folder


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("SERVING_ADAPTER_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "store"
    for name in ("sql", "chat", "legal"):
        adapter_folder(root, name)
    return root


async def app_with(lora: LoraConfig, **engine_args):
    return await simulated_app({"lora_load_s": 0.01, **engine_args}, lora=lora)


async def say(app, model: str, text: str = "hello there", **kw) -> openai.types.chat.ChatCompletion:
    return await app.client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": text}], max_tokens=12, temperature=0, **kw
    )


async def test_models_lists_each_adapter_with_its_parent(store, tmp_path):
    static = adapter_folder(tmp_path / "static", "pinned")
    app = await app_with(LoraConfig(adapters={"pinned": str(static)}, store=f"file://{store}"))
    try:
        cards = {m.id: m for m in (await app.client.models.list()).data}
        assert list(cards) == [MODEL, f"{MODEL}:pinned", f"{MODEL}:chat", f"{MODEL}:legal", f"{MODEL}:sql"]
        assert cards[f"{MODEL}:sql"].parent == MODEL and cards[MODEL].parent is None
        one = await app.client.models.retrieve(f"{MODEL}:legal")
        assert one.parent == MODEL
    finally:
        await app.aclose()


async def test_an_adapter_is_a_model_its_answers_differ_and_are_repeatable(store):
    app = await app_with(LoraConfig(store=str(store)))
    try:
        base = await say(app, MODEL)
        sql = await say(app, f"{MODEL}:sql")
        chat = await say(app, f"{MODEL}:chat")
        assert sql.model == f"{MODEL}:sql" and base.model == MODEL
        texts = {base.choices[0].message.content, sql.choices[0].message.content, chat.choices[0].message.content}
        assert len(texts) == 3
        again = await say(app, f"{MODEL}:sql")
        assert again.choices[0].message.content == sql.choices[0].message.content
        # streamed and completions too
        stream = await app.client.chat.completions.create(
            model=f"{MODEL}:sql", messages=[{"role": "user", "content": "hello there"}], max_tokens=12,
            temperature=0, stream=True,
        )  # fmt: skip
        chunks = [c async for c in stream]
        assert {c.model for c in chunks} == {f"{MODEL}:sql"}
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == sql.choices[0].message.content
        done = await app.client.completions.create(model=f"{MODEL}:chat", prompt="hi", max_tokens=4)
        assert done.model == f"{MODEL}:chat"
        stats = await app.stats()
        assert stats["lora_loads"] == 2 and stats["lora_hits"] >= 3 and stats["lora_loaded"] == 2
    finally:
        await app.aclose()


async def test_unknown_adapters_are_404_and_bad_ones_400_and_the_model_serves_on(store, tmp_path):
    adapter_folder(store, "garbled", config="{not json")
    adapter_folder(store, "too-big", rank=64)
    empty = store / "no-weights"
    empty.mkdir()
    (empty / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8}))
    static = adapter_folder(tmp_path / "static", "pinned")
    gone = str(tmp_path / "gone")
    app = await app_with(LoraConfig(adapters={"pinned": str(static), "gone": gone}, store=str(store), max_rank=16))
    try:
        with pytest.raises(openai.BadRequestError) as bad:  # listed, but its files are not there
            await say(app, f"{MODEL}:gone")
        assert bad.value.body["code"] == "invalid_adapter" and "missing" in bad.value.body["message"]
        assert gone not in bad.value.body["message"]  # no server paths in errors
        for model in (f"{MODEL}:nope", f"{MODEL}:..", "other:sql", f"{MODEL}:a/b"):
            with pytest.raises(openai.NotFoundError) as err:
                await say(app, model)
            assert err.value.body["code"] == "model_not_found", model
        for name, why in (("garbled", "JSON"), ("too-big", "rank 64"), ("no-weights", "no weights")):
            with pytest.raises(openai.BadRequestError) as bad:
                await say(app, f"{MODEL}:{name}")
            assert bad.value.body["code"] == "invalid_adapter" and bad.value.body["param"] == "model"
            assert why in bad.value.body["message"], bad.value.body
        assert (await say(app, f"{MODEL}:pinned")).model == f"{MODEL}:pinned"
        assert (await say(app, MODEL)).choices[0].message.content
        assert (await app.stats())["lora_failures"] == 5  # gone, nope (not in the store) and the three bad ones
    finally:
        await app.aclose()


async def test_loaded_adapters_are_bounded_least_recently_used_out(store):
    app = await app_with(LoraConfig(store=str(store), max_loaded=2, max_loras=1))
    try:
        for name in ("sql", "chat", "sql", "legal", "sql", "chat"):
            await say(app, f"{MODEL}:{name}")
        stats = await app.stats()
        # sql, chat loaded; sql hit; legal evicts chat; sql hit; chat evicts legal
        assert (stats["lora_loads"], stats["lora_hits"], stats["lora_evictions"]) == (4, 2, 2)
        assert app.engine.adapters() == ["sql", "chat"]
    finally:
        await app.aclose()


async def test_concurrent_first_requests_load_an_adapter_once(store):
    app = await app_with(LoraConfig(store=str(store)), lora_load_s=0.2)
    try:
        answers = await asyncio.gather(*(say(app, f"{MODEL}:legal", f"prompt {i}") for i in range(8)))
        assert all(a.model == f"{MODEL}:legal" for a in answers)
        stats = await app.stats()
        assert stats["lora_loads"] == 1 and stats["lora_hits"] == 7
    finally:
        await app.aclose()


async def test_a_file_store_is_copied_into_the_local_cache(store, tmp_path):
    app = await app_with(LoraConfig(store=f"file://{store}"))
    try:
        await say(app, f"{MODEL}:sql")
        copies = list((tmp_path / "cache").glob("sql-*"))
        assert (
            len(copies) == 1
            and (copies[0] / "adapter_config.json").read_bytes() == (store / "sql" / "adapter_config.json").read_bytes()
        )
    finally:
        await app.aclose()


@pytest.mark.parametrize(
    "lora, error",
    [
        ({"store": "s3://bucket/adapters"}, "s3:// is not served yet"),
        ({"store": "file://relative/path"}, "absolute path"),
        ({"adapters": {"bad/name": "/x"}}, "adapter name"),
        ({"max_loras": 8, "max_loaded": 4}, "max_loras (8) must be <= max_loaded (4)"),
        ({"max_rank": 12}, "max_rank"),
        ({"adapters": {"x": "builtin:tiny-llama"}}, "builtin:tiny-lora/<name>"),
    ],
)
def test_lora_config_errors_name_the_key(lora, error):
    with pytest.raises(ConfigError) as err:
        parse_app_args({"models": [{"id": "m", "lora": lora}]})
    assert "models.0.lora" in str(err.value) and error in str(err.value)


def test_lora_only_on_generating_models_and_its_engine_args_from_it():
    with pytest.raises(ConfigError, match="adapters are served on generating models"):
        parse_app_args({"models": [{"id": "e", "task": "embed", "lora": {}}]})
    with pytest.raises(ConfigError, match="set from `lora`"):
        parse_app_args({"models": [{"id": "m", "lora": {}, "engine_args": {"max_loras": 2}}]})
    with pytest.raises(ConfigError, match="vllm and simulator engines only"):
        parse_app_args({"models": [{"id": "m", "engine": "pkg.mod:Engine", "lora": {}}]})
    with pytest.raises(ConfigError, match=r"adapter ids \['m:x'\] of model 'm' are also model ids"):
        parse_app_args({"models": [{"id": "m", "lora": {"adapters": {"x": "/a"}}}, {"id": "m:x"}]})


async def test_a_card_is_only_for_an_adapter_that_exists(store):
    app = await app_with(LoraConfig(store=str(store)))
    try:
        assert (await app.client.models.retrieve(f"{MODEL}:sql")).parent == MODEL
        with pytest.raises(openai.NotFoundError):
            await app.client.models.retrieve(f"{MODEL}:not-in-the-store")
    finally:
        await app.aclose()


async def test_a_failed_adapter_is_refused_again_without_another_load(store, monkeypatch):
    from serving.engine import adapters

    adapter_folder(store, "garbled", config="{not json")
    app = await app_with(LoraConfig(store=str(store)))
    try:
        calls = []
        real = adapters.check_adapter
        monkeypatch.setattr(adapters, "check_adapter", lambda *a: calls.append(a) or real(*a))
        for _ in range(3):
            with pytest.raises(openai.BadRequestError):
                await say(app, f"{MODEL}:garbled")
        assert len(calls) == 1 and (await app.stats())["lora_failures"] == 3
        monkeypatch.setattr(adapters, "FAILED_TTL_S", 0.0)  # once the time is up, tried again
        with pytest.raises(openai.BadRequestError):
            await say(app, f"{MODEL}:garbled")
        assert len(calls) == 2
    finally:
        await app.aclose()


async def test_room_is_made_before_a_load_so_the_engine_never_holds_more_than_max_loaded(store):
    """vLLM's cache is as large as ours: a load into a full one would drop an adapter of its own choosing."""
    app = await app_with(LoraConfig(store=str(store), max_loaded=2, max_loras=1))
    cache = app.engine._adapters
    held: set[str] = set()
    peak = 0
    real_load, real_unload = cache._load, cache._unload

    async def load(name, folder):
        nonlocal peak
        held.add(name)
        peak = max(peak, len(held))
        return await real_load(name, folder)

    async def unload(handle):
        held.discard(handle)
        await real_unload(handle)

    cache._load, cache._unload = load, unload
    try:
        await asyncio.gather(*(say(app, f"{MODEL}:{n}", f"q{i}") for i, n in enumerate(["sql", "chat", "legal"] * 3)))
        assert peak <= 2 and len(held) <= 2
    finally:
        await app.aclose()
