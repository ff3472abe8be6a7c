"""Three models in one application (configs/multi-model.yaml): the real vLLM CPU engine three times.

`tiny-llama` and `tiny-llama-short` are the same weights under two ids with
different engine settings (max_model_len 2048 vs 512), each its own
deployment; `tiny-embed` is an embedding model on vLLM's pooling runner
(/v1/embeddings, asked with the official openai SDK as RAG code asks), and
`tiny-llama-short` serves LoRA adapters (two static, two from a store made
here). Served on free ports of their own. Through the direct port, whichever replica the
kernel hands the connection to answers for both ids (the other model's
requests are forwarded through a Ray Serve handle); through the proxy port the
ingress deployment routes by model.
"""

from __future__ import annotations

import shutil

import httpx
import openai
import pytest
from openai import OpenAI

from loadtests.servers import ROOT, free_ports
from serving.models.tiny_lora import ensure_tiny_lora
from tests.e2e.conftest import dev_config, start_stack

DIRECT_PORT, PROXY_PORT = free_ports(2)
DIRECT_URL, PROXY_URL = f"http://127.0.0.1:{DIRECT_PORT}", f"http://127.0.0.1:{PROXY_PORT}"
LONG, SHORT, EMBED = "tiny-llama", "tiny-llama-short", "tiny-embed"
ADAPTERS = (f"{SHORT}:chat", f"{SHORT}:sql")  # configs/multi-model.yaml's static adapters, as listed (sorted)
NO_EOS = {"ignore_eos": True}


def multi_model_config() -> dict:
    return dev_config(DIRECT_PORT, PROXY_PORT, ROOT / "configs" / "multi-model.yaml")


@pytest.fixture(scope="module")
def multi_server(tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "serve-multi-model.log"
    data = multi_model_config()
    # A store beside the config's two static adapters: one adapter, and one whose weights are not a
    # LoRA of this model (its load fails in vLLM: a 400, the replica serves on).
    store = tmp_path_factory.mktemp("adapters")
    shutil.copytree(ensure_tiny_lora("legal"), store / "legal")
    shutil.copytree(ensure_tiny_lora("legal"), store / "broken")
    (store / "broken" / "adapter_model.safetensors").write_bytes(b"not safetensors")
    short = data["applications"][0]["args"]["models"][1]
    assert short["id"] == SHORT
    short["lora"]["store"] = f"file://{store}"
    with start_stack(data, log, timeout_s=600) as server:
        yield server


@pytest.fixture(scope="module", params=["direct", "proxy"])
def client(request, multi_server):
    url = {"direct": DIRECT_URL, "proxy": PROXY_URL}[request.param]
    # A fresh connection per request: on the direct port each one may land on either model's replica.
    http = httpx.Client(limits=httpx.Limits(max_keepalive_connections=0))
    yield OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120, http_client=http)
    http.close()


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from serving.models.tiny_llama import model_dir

    return AutoTokenizer.from_pretrained(model_dir())


def test_ready_lists_both_models(multi_server):
    for url in (DIRECT_URL, PROXY_URL):
        r = httpx.get(f"{url}/ready", timeout=30)
        assert r.status_code == 200 and r.json()["models"] == {LONG: True, SHORT: True, EMBED: True}


def test_models_lists_both(client):
    models = client.models.list().data
    assert [m.id for m in models] == [LONG, SHORT, *ADAPTERS, f"{SHORT}:broken", f"{SHORT}:legal", EMBED]
    assert [m.task for m in models] == ["generate"] * 6 + ["embed"]  # type: ignore[attr-defined]
    assert [m.parent for m in models] == [None, None] + [SHORT] * 4 + [None]  # type: ignore[attr-defined]
    assert client.models.retrieve(SHORT).id == SHORT
    assert client.models.retrieve(f"{SHORT}:sql").parent == SHORT  # type: ignore[attr-defined]


def greedy(client, model: str, stream: bool = False) -> str:
    kw = {"messages": [{"role": "user", "content": "Tell me a story"}], "max_tokens": 12, "temperature": 0}
    if stream:
        chunks = list(client.chat.completions.create(model=model, stream=True, extra_body=NO_EOS, **kw))
        assert {c.model for c in chunks} == {model}
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    r = client.chat.completions.create(model=model, extra_body=NO_EOS, **kw)
    assert r.model == model and r.usage.completion_tokens == 12
    return r.choices[0].message.content


def test_lora_adapters_change_the_answer_from_every_entry_point(client):
    """Fresh connections: on the direct port a request lands on any model's replica and reaches the base
    model's replica (local, forwarded, or through a handle); the adapter goes with it."""
    base = greedy(client, SHORT)
    answers = {name: greedy(client, name) for name in (*ADAPTERS, f"{SHORT}:legal")}
    assert len({base, *answers.values()}) == 4, answers
    for _ in range(2):
        for name, text in answers.items():
            assert greedy(client, name) == text and greedy(client, name, stream=True) == text
    assert greedy(client, SHORT) == base
    done = client.completions.create(model=ADAPTERS[0], prompt="Once upon a time", max_tokens=4, extra_body=NO_EOS)
    assert done.model == ADAPTERS[0] and done.usage.completion_tokens == 4


def test_lora_errors_and_the_replica_serves_on(client):
    for missing in (f"{SHORT}:nope", f"{LONG}:sql", f"{SHORT}:../legal"):
        with pytest.raises(openai.NotFoundError) as err:
            greedy(client, missing)
        assert err.value.body["code"] == "model_not_found", missing
    for _ in range(2):
        with pytest.raises(openai.BadRequestError) as bad:
            greedy(client, f"{SHORT}:broken")
        assert (bad.value.body["code"], bad.value.body["param"]) == ("invalid_adapter", "model")
    assert greedy(client, ADAPTERS[1]) and greedy(client, SHORT)


@pytest.mark.parametrize("model", [LONG, SHORT])
def test_each_model_answers(client, model):
    # Several fresh connections: on the direct port both replicas (local engine and forwarding) serve.
    for i in range(4):
        r = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": f"hello {i}"}], max_tokens=5, extra_body=NO_EOS
        )
        assert r.model == model and r.usage.completion_tokens == 5
    c = client.completions.create(model=model, prompt="Once upon a time", max_tokens=4, extra_body=NO_EOS)
    assert c.model == model and c.usage.completion_tokens == 4


@pytest.mark.parametrize("model", [LONG, SHORT])
def test_each_model_streams(client, model):
    for _ in range(2):
        chunks = list(
            client.chat.completions.create(
                model=model,
                messages=[{"role": "user", "content": "count"}],
                max_tokens=6,
                stream=True,
                stream_options={"include_usage": True},
                extra_body=NO_EOS,
            )
        )
        assert all(c.model == model for c in chunks)
        assert chunks[-1].usage.completion_tokens == 6


def test_max_model_len_differs_per_model(client, tokenizer):
    # About 700 prompt tokens: too long for tiny-llama-short (512), fine for tiny-llama (2048).
    words = " ".join(["river", "stone", "light", "cloud"] * 200)
    ids = tokenizer.encode(words)[:700]
    prompt = tokenizer.decode(ids)
    n = len(tokenizer.encode(prompt))
    assert 600 <= n <= 800
    r = client.completions.create(model=LONG, prompt=prompt, max_tokens=5, extra_body=NO_EOS)
    assert r.usage.completion_tokens == 5 and r.usage.prompt_tokens >= 600
    with pytest.raises(openai.BadRequestError) as exc:
        client.completions.create(model=SHORT, prompt=prompt, max_tokens=5)
    assert exc.value.code == "context_length_exceeded"
    assert "maximum context length is 512" in exc.value.message
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model=SHORT, messages=[{"role": "user", "content": prompt}], max_tokens=5, stream=True
        )
    # The short model still serves prompts that fit.
    ok = client.completions.create(model=SHORT, prompt=tokenizer.decode(ids[:300]), max_tokens=5, extra_body=NO_EOS)
    assert ok.usage.completion_tokens == 5


def test_embeddings_from_every_entry_point(client):
    """Fresh connections: on the direct port each lands on any model's replica, and the embedding
    model's replica serves every request (local, or forwarded to it)."""
    import math

    first = None
    for _ in range(4):
        r = client.embeddings.create(model=EMBED, input=["the cat sat", "a tax form"])
        assert r.model == EMBED and [d.index for d in r.data] == [0, 1] and r.usage.prompt_tokens > 0
        vectors = [d.embedding for d in r.data]
        assert all(len(v) == 128 and abs(math.sqrt(sum(x * x for x in v)) - 1) < 1e-3 for v in vectors)
        first = first or vectors
        assert vectors[0] == pytest.approx(first[0], abs=1e-4)
    assert sum(a * b for a, b in zip(*first, strict=True)) < 0.999
    short = client.embeddings.create(model=EMBED, input=[[5, 6, 7]], dimensions=64, encoding_format="float")
    assert len(short.data[0].embedding) == 64


def test_embeddings_errors(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model=EMBED, input="word " * 600)
    assert err.value.body["code"] == "context_length_exceeded" and err.value.body["param"] == "input"
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model=EMBED, input="x", dimensions=50)
    assert err.value.body["param"] == "dimensions"
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model=LONG, input="x")
    assert err.value.body["code"] == "model_not_embedding"
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=EMBED, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert err.value.body["code"] == "model_not_generative"


def test_adapter_loads_hits_and_failures_are_metrics_per_replica(multi_server):
    from tests.e2e.test_metrics import total, wait_for

    client = OpenAI(base_url=f"{DIRECT_URL}/v1", api_key="unused", max_retries=0, timeout=120)
    for name in (*ADAPTERS, *ADAPTERS):
        greedy(client, name)
    with pytest.raises(openai.BadRequestError):
        greedy(client, f"{SHORT}:broken")

    def seen(samples) -> bool:
        return (
            total(samples, "ray_serving_lora_loads_total", model=SHORT) >= 2
            and total(samples, "ray_serving_lora_hits_total", model=SHORT) >= 2
            and total(samples, "ray_serving_lora_failures_total", model=SHORT) >= 1
            and total(samples, "ray_serving_engine_lora_loaded", model=SHORT) >= 2
        )

    samples = wait_for(multi_server, seen, timeout_s=60)
    assert seen(samples), {k: v for k, v in samples.items() if "lora" in k}
    replicas = {lab.get("replica") for lab, _ in samples["ray_serving_lora_loads_total"] if lab.get("model") == SHORT}
    assert len(replicas) == 1 and None not in replicas  # per replica (one replica of the model here)
    assert total(samples, "ray_serving_lora_loads_total", model=LONG) == 0  # a model without adapters
