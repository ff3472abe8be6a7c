"""No vLLM engine process outlives its replica, however the replica ends (serving/deployments/engine_watchdog.py).

Each test starts a dev stack of its own (free ports), notes the replica's
engine processes, ends the replica in one of the ways that skip its shutdown,
and requires every one of those engine processes gone within `GONE_WITHIN_S`:

* SIGKILL of the replica (its raylet lives);
* what `ray stop --force` does: SIGKILL to every Ray process at once (the
  process list of `ray stop`, `ray.autoscaler._private.constants.RAY_PROCESSES`),
  here only to this stack's own processes, so that another Ray cluster on the
  machine (a developer's) is left alone;
* SIGKILL of the raylet alone: the replica is orphaned and lives on.

Before the watchdog each left the engine core and its worker running,
reparented to init, ~2 GB each. Measured on an idle machine: 0.4 s after a
SIGKILL of the replica, 4.0 s after `ray stop --force` and after the raylet's
SIGKILL (the watchdog's poll, then the engines ignore SIGTERM for its grace of
3 s). Under the full suite a CI run saw more than 10 s for the last two; the
bound is 20 s: without the watchdog they never go.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterable

import psutil
import pytest
from ray.autoscaler._private.constants import RAY_PROCESSES

from loadtests.servers import ServeProcess, free_ports
from tests.e2e.conftest import REPLICA, dev_config, start_stack

ENGINES = ("VLLM::EngineCore", "VLLM::Worker")
GONE_WITHIN_S = 20


@pytest.fixture
def stack(tmp_path):
    direct, proxy = free_ports(2)
    server = start_stack(dev_config(direct, proxy), tmp_path / "serve.log")
    # Every process of the stack, taken before a test ends any of them: a dead raylet
    # leaves its workers reparented to init, no longer the server's descendants.
    server.seen = []
    yield server
    try:
        server.stop(timeout_s=20)
    finally:
        kill([*server.seen, *server.descendants(*ENGINES, "ray::", "raylet", "gcs_server")])


def everything_of(server: ServeProcess) -> list[psutil.Process]:
    procs = psutil.Process(server.proc.pid).children(recursive=True)
    server.seen += procs
    return procs


def kill(procs: Iterable[psutil.Process]) -> None:
    for p in procs:
        try:
            if p.is_running():  # psutil checks the start time: a reused pid is not ours
                p.send_signal(signal.SIGKILL)
        except psutil.Error:
            pass


def assert_gone_within(procs: list[psutil.Process], timeout_s: float) -> None:
    start = time.monotonic()
    deadline = start + timeout_s
    while True:
        alive = [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        if not alive:
            print(f"\nengine processes gone {time.monotonic() - start:.1f} s after the replica's end")
            return
        if time.monotonic() > deadline:
            kill(alive)
            pytest.fail(
                f"engine processes outlived their replica by {timeout_s:g} s: {[p.pid for p in alive]}"
                f" (their watchdog: {watchdog_state()})"
            )
        time.sleep(0.2)


_WATCHDOGS: list[psutil.Process] = []


def watchdog_state() -> str:
    states = []
    for w in _WATCHDOGS:
        try:
            states.append(f"pid {w.pid} {w.status()} ppid {w.ppid()}")
        except psutil.Error as exc:
            states.append(f"pid {w.pid} gone ({type(exc).__name__})")
    return ", ".join(states) or "none seen"


def engines_of(server: ServeProcess) -> list[psutil.Process]:
    engines = server.engine_processes()
    assert {e.name() for e in engines} >= {"VLLM::EngineCore"}, engines
    (replica,) = server.descendants(REPLICA)
    watchdogs = [p for p in replica.children() if "serving.deployments.engine_watchdog" in " ".join(p.cmdline())]
    assert len(watchdogs) == 1, f"the replica runs no engine watchdog: {replica.children()}"
    _WATCHDOGS[:] = watchdogs
    return engines


def test_sigkill_of_the_replica(stack):
    engines = engines_of(stack)
    everything_of(stack)
    (replica,) = stack.descendants(REPLICA)
    replica.send_signal(signal.SIGKILL)
    assert_gone_within(engines, GONE_WITHIN_S)


def is_ray_process(p: psutil.Process) -> bool:
    """`ray stop`'s own test: the executable name (first 15 characters) or the command line holds a keyword."""
    try:
        name, args = p.name()[:15], " ".join(p.cmdline())
    except psutil.Error:
        return False
    return any((keyword in name) if by_name else (keyword in args) for keyword, by_name in RAY_PROCESSES)


def test_ray_stop_force(stack):
    engines = engines_of(stack)
    ray_procs = [p for p in everything_of(stack) if is_ray_process(p)]
    texts = [p.name() + " " + " ".join(p.cmdline()) for p in ray_procs]
    assert all(any(k in t for t in texts) for k in ("raylet", "gcs_server", REPLICA)), texts
    assert not set(engines) & set(ray_procs), "ray stop does not target the engine processes themselves"
    kill(ray_procs)
    assert_gone_within(engines, GONE_WITHIN_S)


def test_raylet_killed(stack):
    engines = engines_of(stack)
    (raylet,) = [p for p in everything_of(stack) if p.name() == "raylet"]
    raylet.send_signal(signal.SIGKILL)
    assert_gone_within(engines, GONE_WITHIN_S)


def name_of(p: psutil.Process) -> str:
    try:
        return p.name()
    except psutil.Error:  # gone meanwhile
        return ""


def vllm_processes() -> dict[int, psutil.Process]:
    return {p.pid: p for p in psutil.process_iter() if name_of(p) in ENGINES}


def starting_engine(server: ServeProcess, not_in: set[int], timeout_s: float = 300) -> list[psutil.Process]:
    """A new engine's processes once its worker runs (the engine core has done its handshake and
    loads the model: what it does for seconds before the replica is ready)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        engines = [p for p in server.engine_processes() if name_of(p) in ENGINES and p.pid not in not_in]
        if any(name_of(p) == "VLLM::Worker" for p in engines):
            time.sleep(2)
            return engines
        time.sleep(0.05)
    raise AssertionError("no engine started")


def test_sigkill_of_the_replica_while_its_engine_starts_and_a_stop_during_its_restart(tmp_path):
    """A replica killed between its engine's first process and /ready; then the stack stopped while
    Serve's replacement starts its engine. A CI run saw the second leave an engine running,
    reparented to init: the replica's watchdog started only once its engine was up."""
    before = set(vllm_processes())  # the e2e dev stack's, in a full run
    direct, proxy = free_ports(2)
    data = dev_config(direct, proxy)
    server = ServeProcess.from_dict(data, f"http://127.0.0.1:{direct}/ready", tmp_path / "serve.log").launch()
    server.seen = []
    try:
        engines = starting_engine(server, before)
        (replica,) = server.descendants(REPLICA)
        everything_of(server)
        replica.send_signal(signal.SIGKILL)
        assert_gone_within(engines, GONE_WITHIN_S)
        starting_engine(server, before | {p.pid for p in engines})  # Serve's replacement, starting
        server.stop(timeout_s=20)
        deadline = time.monotonic() + GONE_WITHIN_S
        while (left := set(vllm_processes()) - before) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not left, f"engine processes outlived the stack: {sorted(left)}"
    finally:
        try:
            server.stop(timeout_s=20)
        finally:
            kill([*server.seen, *server.descendants(*ENGINES, "ray::", "raylet", "gcs_server")])
            kill(p for pid, p in vllm_processes().items() if pid not in before)
