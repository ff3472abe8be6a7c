"""Two models in one application (configs/multi-model.yaml): the real vLLM CPU engine twice.

`tiny-llama` and `tiny-llama-short` are the same weights under two ids with
different engine settings (max_model_len 2048 vs 512), each its own
deployment. Served on free ports of their own, beside the dev server. Through the direct port, whichever replica the
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
LONG, SHORT = "tiny-llama", "tiny-llama-short"
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
        assert r.status_code == 200 and r.json()["models"] == {LONG: True, SHORT: True}


def test_models_lists_both(client):
    assert [m.id for m in client.models.list().data] == [LONG, SHORT]
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
