"""The stack on a real 3-node Ray cluster (tests/cluster.py): one network namespace per node.

Node 0 is the head (Ray's control plane, no CPUs, as the rendered manifests
have it); nodes 1 and 2 are workers with 2 CPUs and a custom resource each
(`node1`, `node2`) that configs use to pin replicas. Every node runs
`ray start --block` with the drain timeout the manifests render for these
configs (`serving_k8s.render.stop_times`) and the API keys in its
environment, as the pods get them from the Secret. Each test starts a cluster
of its own and, at its end, requires that nothing of it is left on the
machine: no process (Ray's or vLLM's), namespace or link.

* Two models on different nodes, the real vLLM engine on one: every node's
  direct ingress and Serve proxy answer both, `/v1/models` is the same
  everywhere, streams cross nodes both ways, a stored response made on one
  node is read and continued on the others.
* Node loss: a worker's whole process tree killed at once during load. Every
  node's direct ingress places requests on either worker's replica (request
  routing), so a request that entered at the surviving node may have been
  served by the lost one: it ends with an error event, never cut.
* Node drain as KubeRay does it: SIGTERM to a worker's `ray start --block`.
* Head loss (Ray's GCS fault tolerance is not configured): what the workers
  do, measured, and what it takes to serve again.

The figures each test prints (recovery times, requests lost) are the ones
docs/laptop-to-cluster.md, "What survives which failure", quotes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from openai import OpenAI

from loadtests import sse
from serving.config import parse_app_args
from serving_k8s.render import stop_times
from tests.cluster import Cluster, NodeSpec

API_KEY = "sk-cluster-test-key-0001"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
DIRECT, PROXY = 8000, 8001  # every node has its own ports: fixed numbers collide with nothing
GRACEFUL_S = 10
REQUEST_TIMEOUT_S = 30


def app_config(models: list[dict[str, Any]], ingress_replicas: int = 1) -> dict[str, Any]:
    """A cluster config as the renderer expects one (0.0.0.0, keys from the environment)."""
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": "0.0.0.0", "port": PROXY},
        "applications": [
            {
                "name": "llm",
                "route_prefix": "/",
                "import_path": "serving.deployments.app:build_app",
                "args": {
                    "ingress": {"mode": "direct", "host": "0.0.0.0", "port": DIRECT, "num_replicas": ingress_replicas},
                    "auth": {"api_keys_env": "SERVING_API_KEYS"},
                    "models": models,
                },
            }
        ],
    }


def sim_model(model_id: str = "sim-llm", decode_s: float = 0.02, **deployment: Any) -> dict[str, Any]:
    return {
        "id": model_id,
        "engine": "simulator",
        "engine_args": {"max_model_len": 2048, "decode_s_per_token": decode_s},
        "deployment": {"num_cpus": 0.5, "graceful_shutdown_timeout_s": GRACEFUL_S, **deployment},
    }


def node_env(config: dict[str, Any]) -> dict[str, str]:
    """What a worker pod of this config gets: the keys, and the drain timeout the manifests render."""
    cfg = parse_app_args(config["applications"][0]["args"])
    return {"SERVING_API_KEYS": API_KEY, "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": str(stop_times(cfg)["drain_s"])}


@pytest.fixture
def make_cluster() -> Iterator[Any]:
    made: list[Cluster] = []

    def make(config: dict[str, Any]) -> Cluster:
        env = node_env(config)
        specs = [NodeSpec(env=env)] + [NodeSpec(cpus=2, resources={f"node{i}": 1}, env=env) for i in (1, 2)]
        cluster = Cluster(specs)
        made.append(cluster)
        cluster.up()
        return cluster

    yield make
    for cluster in made:
        engines = [p.pid for node in cluster.nodes for p in node.processes("VLLM::")]
        cluster.down()
        left = cluster.leftovers()
        assert not left, f"left on the machine after the test: {left} (engines seen at the end: {engines})"


def deploy(cluster: Cluster, config: dict[str, Any], timeout_s: float = 300) -> None:
    """`serve deploy`, then wait until every worker's direct ingress and every node's proxy is ready."""
    head, w1, w2 = cluster.nodes
    ready = [w.url(DIRECT, "/ready") for w in (w1, w2)] + [n.url(PROXY, "/-/healthz") for n in cluster.nodes]
    cluster.deploy(config, timeout_s=timeout_s, ready=ready)


def replicas_on(node: Any, deployment: str) -> int:
    return len(node.processes(f"ServeReplica:llm:{deployment}"))


# -- two models on different nodes -------------------------------------------------


def test_two_models_on_different_nodes_answer_on_every_node(make_cluster):
    real = {
        "id": "tiny-llama",
        "source": "builtin:tiny-llama",
        "kv_cache_gib": 1,
        "engine_args": {"max_model_len": 2048, "dtype": "bfloat16"},
        "deployment": {"num_cpus": 1, "resources": {"node1": 0.1}, "graceful_shutdown_timeout_s": GRACEFUL_S},
    }
    config = app_config([real, sim_model(resources={"node2": 0.1})])
    cluster = make_cluster(config)
    head, w1, w2 = cluster.nodes
    deploy(cluster, config)

    # Pinned where the config says: the real engine on node 1 only, the simulator on node 2.
    assert replicas_on(w1, "llm-tiny-llama") == 1 and replicas_on(w2, "llm-sim-llm") == 1
    assert w1.processes("VLLM::EngineCore")
    assert not w2.processes("VLLM::") and not head.processes("VLLM::")

    # Every ingress of every node: both workers' direct ingress, and Serve's proxy on all three.
    bases = [w1.url(DIRECT), w2.url(DIRECT)] + [n.url(PROXY) for n in cluster.nodes]
    listings = {base: httpx.get(f"{base}/v1/models", headers=AUTH, timeout=10).json() for base in bases}
    first = listings[bases[0]]
    assert sorted(m["id"] for m in first["data"]) == ["sim-llm", "tiny-llama"]
    assert all(listing == first for listing in listings.values()), listings
    assert all(httpx.get(f"{b}/v1/models", timeout=10).status_code == 401 for b in bases)  # keys on every node

    for base in bases:
        client = OpenAI(base_url=f"{base}/v1", api_key=API_KEY, max_retries=0, timeout=60)
        for model in ("tiny-llama", "sim-llm"):
            messages = [{"role": "user", "content": "hello"}]
            whole = client.chat.completions.create(model=model, messages=messages, max_tokens=8)
            assert whole.choices[0].message.content and whole.usage.completion_tokens > 0, (base, model)
            chunks = list(
                client.chat.completions.create(
                    model=model,
                    messages=messages,
                    max_tokens=16,
                    stream=True,
                    stream_options={"include_usage": True},
                )
            )
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
            assert text and finish, (base, model)
            assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0, (base, model)

    # A request for the model the node it enters has no replica of: placed on the other node's
    # replica and forwarded there as bytes (request routing), not through a Serve handle. Until
    # the replicas' routing tables are filled (one registry refresh after they are ready), the
    # handle serves it, without the placement header.
    for base, model in ((w1.url(DIRECT), "sim-llm"), (w2.url(DIRECT), "tiny-llama")):
        body = {"model": model, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}
        deadline = time.monotonic() + 60
        while True:
            r = httpx.post(f"{base}/v1/chat/completions", json=body, headers=AUTH, timeout=60)
            assert r.status_code == 200, r.text
            served, entry = r.headers.get("x-serving-replica"), r.headers.get("x-serving-entry")
            if served or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert served and entry and served != entry, (base, model, dict(r.headers))

    # A stored response (/v1/responses) made on one node is read and continued on every other:
    # the app's one response store (a Ray actor), not the replica that answered.
    made_on = OpenAI(base_url=f"{w1.url(DIRECT)}/v1", api_key=API_KEY, max_retries=0, timeout=60)
    first = made_on.responses.create(model="tiny-llama", input="hello", max_output_tokens=4)
    for base in (w2.url(DIRECT), head.url(PROXY)):
        elsewhere = OpenAI(base_url=f"{base}/v1", api_key=API_KEY, max_retries=0, timeout=60)
        assert elsewhere.responses.retrieve(first.id).output_text == first.output_text, base
        follow = elsewhere.responses.create(
            model="sim-llm", input="and?", previous_response_id=first.id, max_output_tokens=2
        )
        assert follow.previous_response_id == first.id and follow.usage.input_tokens > 0, base


# -- node loss ----------------------------------------------------------------------


async def stream_outcome(client: httpx.AsyncClient, base: str, model: str, max_tokens: int) -> str:
    """One streaming chat: ok | error-event:<code> (with [DONE]) | cut:<why> | refused:<why>."""
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": max_tokens, "stream": True}
    try:
        async with client.stream("POST", f"{base}/v1/chat/completions", json=body, headers=AUTH) as r:
            if r.status_code != 200:
                return f"refused:{r.status_code}"
            events = [e.json() async for e in sse.aiter_events(r.aiter_bytes())]
    except httpx.ConnectError:
        return "refused:connect"
    except (httpx.TransportError, httpx.StreamError) as exc:
        return f"cut:{type(exc).__name__}"
    if len(events) < 2 or events[-1] != sse.DONE:
        return "cut:no-done" if not events or events[-1] != sse.DONE else "cut:empty"
    if "error" in events[-2]:
        return f"error-event:{events[-2]['error'].get('code')}"
    return "ok" if events[-2]["choices"][0]["finish_reason"] else "cut:no-finish"


def deployment_status(cluster: Cluster, name: str) -> dict[str, Any]:
    return cluster.serve_status().get("applications", {}).get("llm", {}).get("deployments", {}).get(name, {})


def test_node_loss_during_load(make_cluster):
    """A worker's whole process tree dies at once (a lost pod) while both paths carry streams."""
    config = app_config([sim_model(autoscaling={"min_replicas": 2, "max_replicas": 2})], ingress_replicas=2)
    cluster = make_cluster(config)
    head, w1, w2 = cluster.nodes
    deploy(cluster, config)
    assert replicas_on(w1, "llm-sim-llm") == 1 and replicas_on(w2, "llm-sim-llm") == 1, "not spread over the workers"
    events: list[tuple[str, float, float, str]] = []  # (target, start, end, outcome)
    kill_at = 0.0
    back: dict[str, float] = {}

    async def client_loop(target: str, base: str, stop: asyncio.Event) -> None:
        async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S) as client:
            while not stop.is_set():
                start = time.monotonic()
                outcome = await asyncio.wait_for(stream_outcome(client, base, "sim-llm", 100), REQUEST_TIMEOUT_S + 5)
                events.append((target, start, time.monotonic(), outcome))
                if outcome != "ok":
                    await asyncio.sleep(0.5)

    async def chaos(stop: asyncio.Event) -> None:
        nonlocal kill_at
        await asyncio.sleep(6)
        kill_at = time.monotonic()
        await asyncio.to_thread(w2.kill)
        deadline = kill_at + 150
        while time.monotonic() < deadline and "replicas" not in back:
            await asyncio.sleep(1)
            status = await asyncio.to_thread(deployment_status, cluster, "llm-sim-llm")
            if status.get("status") == "HEALTHY" and await asyncio.to_thread(replicas_on, w1, "llm-sim-llm") == 2:
                back["replicas"] = time.monotonic()
        await asyncio.sleep(5)  # load on the recovered deployment
        stop.set()

    async def main() -> None:
        stop = asyncio.Event()
        targets = [("proxy", head.url(PROXY))] * 4 + [("w1", w1.url(DIRECT))] * 2 + [("w2", w2.url(DIRECT))] * 2
        await asyncio.gather(chaos(stop), *(client_loop(t, b, stop) for t, b in targets))

    asyncio.run(main())
    proxy_ok_after = [e[2] for e in events if e[0] == "proxy" and e[1] > kill_at and e[3] == "ok"]
    if proxy_ok_after:
        back["proxy"] = min(proxy_ok_after)
    failed = [e for e in events if e[3] != "ok"]
    in_flight = [e for e in failed if e[1] <= kill_at <= e[2]]
    print(
        f"\nnode loss: {len(events)} requests, {len(failed)} failed: {len(in_flight)} in flight at the kill "
        f"({sorted({e[0] + ' ' + e[3] for e in in_flight})}, the last ended "
        f"{max(e[2] for e in in_flight) - kill_at:.1f} s after the kill), {len(failed) - len(in_flight)} after it "
        f"({sorted({e[0] + ' ' + e[3] for e in failed if e[1] > kill_at})}); proxy path serving again "
        f"{back.get('proxy', float('nan')) - kill_at:.1f} s after the kill, both replicas running (on node 1) "
        f"after {back.get('replicas', float('nan')) - kill_at:.1f} s"
    )
    assert not [e for e in failed if e[1] < kill_at and e[2] < kill_at], "failures before the kill"
    # The surviving node's direct ingress places requests on either node's replica (request routing):
    # those it had forwarded to the lost node end with an error event, never cut; none after the kill fails.
    w1_lost = [e for e in failed if e[0] == "w1"]
    assert all(e in in_flight and e[3].startswith("error-event:") for e in w1_lost), w1_lost
    assert in_flight, "the kill hit no request in flight: the test tested nothing"
    assert all(e[2] - e[1] < REQUEST_TIMEOUT_S for e in events), "a request hung past its timeout"
    # Through the proxy: only what the dead node held, then served by the survivors.
    late = [e for e in failed if e[0] == "proxy" and e[1] > kill_at + 20]
    assert not late, f"the proxy path still failed 20 s after the kill: {late}"
    assert "replicas" in back, "Serve did not restore both replicas on the remaining node within 150 s"


# -- node drain as KubeRay does it -------------------------------------------------


def test_node_drain_as_kuberay_does(make_cluster):
    """SIGTERM to a worker's `ray start --block`: Ray drains the node for the rendered drain timeout."""
    model = sim_model(decode_s=0.1, autoscaling={"min_replicas": 2, "max_replicas": 2})
    config = app_config([model], ingress_replicas=2)
    cluster = make_cluster(config)
    head, w1, w2 = cluster.nodes
    deploy(cluster, config)
    assert replicas_on(w1, "llm-sim-llm") == 1 and replicas_on(w2, "llm-sim-llm") == 1, "not spread over the workers"
    drain_s = float(node_env(config)["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"])
    results: dict[tuple[str, int, int], str] = {}
    late: list[str] = []
    gone_after: list[float] = []

    async def main() -> None:
        async with httpx.AsyncClient(timeout=120) as client:

            async def one(target: str, base: str, max_tokens: int, i: int) -> None:
                results[(target, max_tokens, i)] = await stream_outcome(client, base, "sim-llm", max_tokens)

            # 400 tokens at 0.1 s: 40 s, longer than the replica's graceful timeout and the node's drain.
            bases = {"proxy": head.url(PROXY), "w2": w2.url(DIRECT), "w1": w1.url(DIRECT)}
            streams = [one(t, b, n, i) for t, b in bases.items() for n in (400, 30) for i in range(2)]
            tasks = [asyncio.create_task(s) for s in streams]
            await asyncio.sleep(2)
            term = time.monotonic()
            w2.terminate()

            async def watch_node() -> None:
                while w2.pids() and time.monotonic() < term + drain_s + 30:
                    await asyncio.sleep(0.5)
                if not w2.pids():
                    gone_after.append(time.monotonic() - term)

            async def new_requests() -> None:  # arriving during the drain, through the head's proxy
                while time.monotonic() < term + drain_s + 5:
                    late.append(await stream_outcome(client, head.url(PROXY), "sim-llm", 10))
                    await asyncio.sleep(1)

            await asyncio.gather(*tasks, watch_node(), new_requests())

    asyncio.run(main())
    print(f"\nnode drain ({drain_s:g} s): {dict(sorted(results.items()))}; node gone after {gone_after}; late: {late}")
    assert gone_after and gone_after[0] < drain_s + 15, f"the drained node's processes outlived the drain: {gone_after}"
    for (target, max_tokens, _), outcome in results.items():
        if max_tokens == 30:
            assert outcome == "ok", (target, max_tokens, outcome)  # short ones finish within the drain
        else:
            # A long stream served on the draining node (its replica, whichever node it entered at,
            # or relayed by its ingress replica) finishes or ends with the drain's error event and
            # [DONE], never cut.
            assert outcome in ("ok", "error-event:server_shutting_down"), (target, max_tokens, outcome)
    assert any(r.startswith("error-event:server_shutting_down") for r in results.values()), results
    assert late and all(r == "ok" for r in late), f"requests arriving during the drain failed: {late}"


# -- head loss ------------------------------------------------------------------------


def test_head_loss_without_gcs_fault_tolerance(make_cluster):
    """The head's processes die (GCS and all) and the head comes back; Ray's GCS FT is not configured.

    Measured: the workers' direct ingress keeps serving while the GCS is away;
    Serve's proxy path does not; after `gcs_rpc_server_reconnect_timeout_s` (60 s)
    the workers' raylets exit and the nodes end. A returning head is a new cluster:
    the workers restart (as KubeRay restarts their pods), the config is deployed
    again (as the RayService does), and the model serves again.
    """
    config = app_config([sim_model(autoscaling={"min_replicas": 2, "max_replicas": 2})], ingress_replicas=2)
    cluster = make_cluster(config)
    head, w1, w2 = cluster.nodes
    deploy(cluster, config)

    def probe(base: str) -> str:
        body = {"model": "sim-llm", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
        try:
            return str(httpx.post(f"{base}/v1/chat/completions", json=body, headers=AUTH, timeout=3).status_code)
        except httpx.HTTPError as exc:
            return type(exc).__name__

    lost_at = time.monotonic()
    head.kill()
    during = {"direct": [], "proxy": []}
    while time.monotonic() < lost_at + 15:
        during["direct"] += [probe(w1.url(DIRECT)), probe(w2.url(DIRECT))]
        during["proxy"].append(probe(w1.url(PROXY)))
    cluster.restart_node(head)
    workers_ended: dict[int, float] = {}
    while len(workers_ended) < 2 and time.monotonic() < lost_at + 150:
        for worker in (w1, w2):
            if worker.index not in workers_ended and not worker.pids():
                workers_ended[worker.index] = time.monotonic() - lost_at
        time.sleep(0.5)
    assert len(workers_ended) == 2, f"workers still running 150 s after their head died: {workers_ended}"
    for worker in (w1, w2):
        cluster.restart_node(worker)
    deploy(cluster, config)
    served_at = time.monotonic() - lost_at
    print(
        f"\nhead loss: while it was away the direct ingress answered {sorted(set(during['direct']))}, "
        f"the proxy path {sorted(set(during['proxy']))}; workers ended {sorted(round(t) for t in workers_ended.values())} s "
        f"after the loss; serving again {served_at:.0f} s after it (workers restarted, config deployed again)"
    )
    assert set(during["direct"]) == {"200"}, during["direct"]
    assert probe(w1.url(DIRECT)) == "200" and probe(head.url(PROXY)) == "200"
