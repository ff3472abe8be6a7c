"""No vLLM engine process outlives its replica, however the replica ends (serving/deployments/engine_watchdog.py).

The test starts a dev stack of its own (free ports), notes the replica's engine
processes, SIGKILLs the replica, and requires every one of those engine
processes gone within 10 s. Before the watchdog that left the engine core and
its worker running, reparented to init, ~2 GB each. (A dead raylet and "every
Ray process killed" are covered with stand-ins in tests/unit/test_engine_watchdog.py;
against the real stack they passed alone but not yet reliably inside the full
suite, see the issue notes.)
"""

from __future__ import annotations

import signal
import time

import psutil
import pytest

from loadtests.servers import ServeProcess, free_ports
from tests.e2e.conftest import dev_config, start_stack

REPLICA = "ServeReplica:llm:llm-tiny-llama"
ENGINES = ("VLLM::EngineCore", "VLLM::Worker")


@pytest.fixture
def stack(tmp_path):
    direct, proxy = free_ports(2)
    server = start_stack(dev_config(direct, proxy), tmp_path / "serve.log")
    yield server
    try:
        server.stop(timeout_s=20)
    finally:
        for p in server.descendants(*ENGINES, "ray::", "raylet", "gcs_server"):
            p.kill()


def kill(procs: list[psutil.Process]) -> None:
    for p in procs:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.Error:
            pass


def assert_gone_within(procs: list[psutil.Process], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        alive = [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        if not alive:
            return
        if time.monotonic() > deadline:
            kill(alive)
            pytest.fail(f"engine processes outlived their replica by {timeout_s:g} s: {[p.pid for p in alive]}")
        time.sleep(0.2)


def engines_of(server: ServeProcess) -> list[psutil.Process]:
    engines = server.engine_processes()
    assert {e.name() for e in engines} >= {"VLLM::EngineCore"}, engines
    return engines


def test_sigkill_of_the_replica(stack):
    engines = engines_of(stack)
    (replica,) = stack.descendants(REPLICA)
    replica.send_signal(signal.SIGKILL)
    assert_gone_within(engines, 10)
