"""Tenant budgets on a real Serve stack: one budget across every replica, and what happens without its holder.

Three simulated replicas behind one direct port (direct mode, request routing):
each request enters at whichever replica its new connection landed on, and is
placed and forwarded from there. Before, limits held per replica, so a tenant
got its limit times the replicas its traffic reached; now every replica leases
from the app's budget-holder actor (serving/api/budgets.py,
serving/deployments/budget_holder.py). The tenant's usage, summed over the
replicas' metrics, is what its responses said. Then the actor is stopped (SIGSTOP: a
holder that does not answer, as a hung or partitioned one): a tenant whose
budget fails closed gets 503 `budget_unavailable` with Retry-After, one that
fails open is served under per-replica limits, and once the holder answers
again both are served.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter

import httpx

from loadtests.servers import free_ports
from serving.api.forwarded import ENTRY_HEADER
from tests.e2e.conftest import start_stack
from tests.e2e.test_metrics import total, wait_for

DIRECT, PROXY = free_ports(2)
APP, MODEL = "tenants", "sim-tenants"
KEYS = {"team": "sk-e2e-team-key-00001", "closed": "sk-e2e-closed-key-0001", "open": "sk-e2e-open-key-000001"}
RPM = 30


def config(key_dir) -> dict:
    tenants = []
    for name, key in KEYS.items():
        path = key_dir / f"{name}.keys"
        path.write_text(f"# {name}\n{key}\n")
        tenant = {"name": name, "keys_file": str(path), "requests_per_minute": RPM if name == "team" else 6000}
        if name == "open":
            tenant["on_budget_unreachable"] = "open"
        tenants.append(tenant)
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": "127.0.0.1", "port": PROXY},
        "applications": [
            {
                "name": APP,
                "route_prefix": "/",
                "import_path": "serving.deployments.app:build_app",
                "args": {
                    "ingress": {"mode": "direct", "host": "127.0.0.1", "port": DIRECT},
                    "auth": {"tenants": tenants},
                    "models": [
                        {
                            "id": MODEL,
                            "engine": "simulator",
                            "engine_args": {"decode_s_per_token": 0.002, "max_model_len": 2048},
                            "deployment": {
                                "num_cpus": 0.05,
                                "graceful_shutdown_timeout_s": 5,
                                "autoscaling": {"min_replicas": 3, "max_replicas": 3},
                            },
                        }
                    ],
                },
            }
        ],
    }


def chat(tenant: str) -> httpx.Response:
    # A new connection each time: the kernel spreads them over the three replicas' shared port.
    return httpx.post(
        f"http://127.0.0.1:{DIRECT}/v1/chat/completions",
        # long enough for whole cache blocks: a repeat on one replica reports cached prompt tokens
        json={"model": MODEL, "messages": [{"role": "user", "content": "hi " * 40}], "max_tokens": 2},
        headers={"Authorization": f"Bearer {KEYS[tenant]}"},
        timeout=30,
    )


HOLDER_PID = """
import sys, ray
ray.init(address=sys.argv[1], namespace="serving", log_to_driver=False)
print(ray.get(ray.get_actor(sys.argv[2], namespace="serving").pid.remote()))
"""


def test_a_tenant_budget_holds_across_replicas_and_its_holder_failing_is_its_choice(tmp_path):
    with start_stack(config(tmp_path), tmp_path / "serve.log") as server:
        # -- one budget for the app, whatever replica a request entered at or was served by
        t0 = time.monotonic()
        answers = [chat("team") for _ in range(3 * RPM)]
        elapsed = time.monotonic() - t0
        ok = [r for r in answers if r.status_code == 200]
        refused = [r for r in answers if r.status_code == 429]
        assert len(ok) + len(refused) == len(answers), Counter(r.status_code for r in answers)
        # Charged where each entered: the replica its connection landed on (the same prompt is then placed
        # on one replica by cache affinity, so where they were served says little).
        entered = Counter(r.headers[ENTRY_HEADER] for r in ok)
        print(f"{len(ok)} of {len(answers)} admitted in {elapsed:.1f}s; entered at {dict(entered)}")
        # The bucket refills at RPM/60 per second while the test runs; per replica it would admit 3 x RPM.
        assert len(ok) <= RPM + RPM / 60 * elapsed + 1, (len(ok), elapsed)
        assert len(ok) >= RPM - 1, len(ok)  # and the budget is all usable
        assert len(entered) == 3, entered
        err = refused[0].json()["error"]
        assert err["code"] == "rate_limit_exceeded" and "requests per minute" in err["message"]
        assert int(refused[0].headers["retry-after"]) >= 1

        # -- usage per tenant, summed over every replica's metrics, is what the responses said
        prompt = sum(r.json()["usage"]["prompt_tokens"] for r in ok)
        completion = sum(r.json()["usage"]["completion_tokens"] for r in ok)
        cached = sum(r.json()["usage"]["prompt_tokens_details"]["cached_tokens"] for r in ok)
        assert cached > 0

        def usage(samples):
            return (
                total(samples, "ray_serving_prompt_tokens_total", tenant="team", model=MODEL),
                total(samples, "ray_serving_prompt_cached_tokens_total", tenant="team", model=MODEL),
                total(samples, "ray_serving_completion_tokens_total", tenant="team", model=MODEL),
                total(samples, "ray_serving_requests_total", tenant="team", status="200"),
                total(samples, "ray_serving_requests_total", tenant="team", status="429"),
            )

        want = (prompt, cached, completion, len(ok), len(refused))
        seen = usage(wait_for(server, lambda s: usage(s) == want, 60))
        assert seen == want, seen

        # -- the holder hung (stopped, as a partitioned or stuck one looks): closed refuses, open serves
        assert chat("closed").status_code == 200 and chat("open").status_code == 200
        env = {**os.environ, "RAY_AUTH_MODE": "token"}
        found = subprocess.run(
            [sys.executable, "-c", HOLDER_PID, server.gcs_address(), f"serving-budgets:{APP}"],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
        assert found.returncode == 0, found.stderr[-2000:]
        holder = int(found.stdout.strip().splitlines()[-1])
        os.kill(holder, signal.SIGSTOP)
        try:
            time.sleep(5)  # what the replicas held goes back after 2 s idle: it cannot, and is dropped
            closed = [chat("closed") for _ in range(6)]
            opened = [chat("open") for _ in range(6)]
        finally:
            os.kill(holder, signal.SIGCONT)
        codes = Counter(r.status_code for r in closed)
        assert codes[503] >= 1, codes
        refusal = next(r for r in closed if r.status_code == 503)
        assert refusal.json()["error"]["code"] == "budget_unavailable", refusal.text
        assert int(refusal.headers["retry-after"]) >= 1
        assert all(r.status_code == 200 for r in opened), [r.status_code for r in opened]

        # -- and back: the next lease after the retry period reaches it again
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if all(chat("closed").status_code == 200 for _ in range(3)):
                break
            time.sleep(1)
        else:
            raise AssertionError("the budget holder did not come back")
