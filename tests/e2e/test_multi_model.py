"""Three models in one application (configs/multi-model.yaml): the real vLLM CPU engine three times.

`tiny-llama` and `tiny-llama-short` are the same weights under two ids with
different engine settings (max_model_len 2048 vs 512), each its own
deployment; `tiny-embed` is an embedding model on vLLM's pooling runner
(/v1/embeddings, asked with the official openai SDK as RAG code asks). Served on free ports of their own, beside the dev server. Through the direct port, whichever replica the
kernel hands the connection to answers for both ids (the other model's
requests are forwarded through a Ray Serve handle); through the proxy port the
ingress deployment routes by model.
"""

from __future__ import annotations

import httpx
import openai
import pytest
from openai import OpenAI

from loadtests.servers import ROOT, free_ports
from tests.e2e.conftest import dev_config, start_stack

DIRECT_PORT, PROXY_PORT = free_ports(2)
DIRECT_URL, PROXY_URL = f"http://127.0.0.1:{DIRECT_PORT}", f"http://127.0.0.1:{PROXY_PORT}"
LONG, SHORT, EMBED = "tiny-llama", "tiny-llama-short", "tiny-embed"
NO_EOS = {"ignore_eos": True}


def multi_model_config() -> dict:
    return dev_config(DIRECT_PORT, PROXY_PORT, ROOT / "configs" / "multi-model.yaml")


@pytest.fixture(scope="module")
def multi_server(tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "serve-multi-model.log"
    with start_stack(multi_model_config(), log, timeout_s=600) as server:
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
    assert [m.id for m in models] == [LONG, SHORT, EMBED]
    assert [m.task for m in models] == ["generate", "generate", "embed"]  # type: ignore[attr-defined]
    assert client.models.retrieve(SHORT).id == SHORT


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
