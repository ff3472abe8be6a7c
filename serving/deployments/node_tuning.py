"""CPU placement on the replica's node: Ray's control plane yields, vLLM's scheduler shares its worker's core.

`EngineCorePlacement` (end of this file) is the larger win on CPU hosts.
Below: keep Ray's control plane off the token path's CPU (its proxy and ingress
too, in direct mode).

Measured on 2 cores (loadtests/PERFORMANCE.md): under load, the vLLM worker is
CPU-bound on its pinned core, and Ray's background processes (GCS, raylet,
dashboard, Serve controller, proxy) took ~13% of a core from it at random
moments, worth 5-10% of output tokens/s. Lowering their scheduling priority
(nice +10, allowed without privileges for processes of the same user) lets them
run whenever the data path leaves room. In `proxy` mode the proxy and ingress
are on the data path, so they are left alone. The raylet is left alone too: the
workers it starts inherit its niceness (see CONTROL_PLANE).

Ray's own workers (controller, proxy, replicas) start at nice 15; Ray's daemons
and agents at 0. In direct mode the LLM-server replica runs at
`ingress.replica_niceness` (0) instead (serving/deployments/app.py), so the order under load
is: engine, replica and raylet (0), Ray's other daemons and agents (10), Ray's workers (15).
"""

from __future__ import annotations

import logging
import os

logger = logging.getLogger(__name__)

# Matched against a process's program (`program`), never its other arguments: the raylet's argv names
# the dashboard agent, the runtime_env agent and the GCS, and a starting worker's names the raylet.
# Matched anywhere, the raylet was reniced, and it forks every worker of its node: a child keeps its
# parent's niceness (Ray's RAY_worker_niceness adds to it), so every replica started after a node's
# first ones ran at nice 10, not `ingress.replica_niceness` (0), and Ray's own workers at 19, not 15
# (seen: 2-4 of 8 simulated replicas of one `serve run`, and all 4 LLM replicas in the multi-node
# harness, where the tenant bench's client, at nice 0, then took the CPU they needed). The raylet
# is left alone for that reason.
CONTROL_PLANE = (
    "gcs_server", "dashboard", "DashboardAgent", "RuntimeEnvAgent",
    "ServeController", "log_monitor", "monitor.py", "runtime_env",
)  # fmt: skip
DIRECT_ONLY = ("ProxyActor", ":ingress")
NICENESS = 10
# Ray's worker programs before the worker sets its title (`ray::<actor>`): it may become an LLM
# replica. setup_worker.py first when its actor has a runtime_env (every LLM replica in direct mode).
STARTING_WORKER = ("default_worker.py", "setup_worker.py")


def program(argv: list[str]) -> str:
    """What a process runs: its title or binary (argv[0]), or for a Python interpreter its script."""
    if not argv:
        return ""
    if os.path.basename(argv[0]).startswith("python"):
        return next((a for a in argv[1:] if not a.startswith("-")), argv[0])
    return argv[0]


def deprioritize_ray_control_plane(direct_ingress: bool) -> list[int]:
    """Renice this node's Ray control-plane processes; returns the pids changed."""
    import psutil

    patterns = CONTROL_PLANE + (DIRECT_ONLY if direct_ingress else ())
    uid = os.getuid()
    changed = []
    for proc in psutil.process_iter(["uids", "cmdline", "name"]):
        try:
            if proc.info["uids"] is None or proc.info["uids"].real != uid or proc.pid == os.getpid():
                continue
            what = program(proc.info["cmdline"] or [proc.info["name"] or ""])
            if "VLLM::" in what or what.endswith(STARTING_WORKER) or not any(p in what for p in patterns):
                continue
            if proc.nice() < NICENESS:
                proc.nice(NICENESS)
                changed.append(proc.pid)
        except (psutil.Error, OSError):
            continue
    if changed:
        logger.info("lowered the CPU priority of %d Ray control-plane processes", len(changed))
    return changed


ENGINE_CORE = "VLLM::EngineCore"
ENGINE_WORKER = "VLLM::Worker"
PLACEMENT_INTERVAL_S = 0.5


def has_title(proc, name: str) -> bool:
    """Whether the process's name or command line contains `name` (vLLM titles its processes)."""
    import psutil

    try:
        return name in proc.name() + " " + " ".join(proc.cmdline())
    except psutil.Error:
        return False


class EngineCorePlacement:
    """CPU hosts: under load, bind vLLM's scheduler process (EngineCore) to its worker's core.

    vLLM on CPU binds its worker to cores (OMP thread binding) and leaves the
    EngineCore free to float. The two run in lockstep: the core schedules a step
    while the worker waits, the worker runs the model while the core waits, and
    each waits by spinning with sched_yield. On separate cores, that spinning holds
    a second core at every step, which the frontend, the clients and Ray need once
    many streams are open. On one core, the CPU goes from one side to the other.
    A handoff on one core is slower, though (~0.15 ms: the scheduler does not
    always switch at a yield), which costs a single stream 25% of its tokens/s
    with the tiny model. So the replica follows the load
    (`ModelConfig.colocate_engine_core_at`). Measured on 2 cores, same server,
    default vs bound (loadtests/PERFORMANCE.md, "Engine core placement:
    EngineCore on its worker's core under load"): 1048 vs 800 tok/s at 1 stream,
    5452 vs 5128 at 8, 7552 vs 8520 at 16, 11546 vs 15262 at 64.

    Nothing to do when the worker is not bound to a subset of the cores (GPU
    hosts, binding turned off): `active` is False then.
    """

    def __init__(self, replica_pid: int | None = None):
        import psutil

        self.cores: list[int] = []
        self.target: set[int] = set()
        self.free: set[int] = set()
        self.colocated = False
        try:
            children = psutil.Process(replica_pid or os.getpid()).children(recursive=True)
            workers = sorted((p for p in children if has_title(p, ENGINE_WORKER)), key=lambda p: p.pid)
            cores = [p.pid for p in children if has_title(p, ENGINE_CORE)]
            if not workers or not cores:
                return
            # The worker's main thread: OMP binds it to the first core of its team.
            worker_cpus = os.sched_getaffinity(workers[0].pid)
            self.free = os.sched_getaffinity(cores[0])
        except (psutil.Error, OSError):
            return
        if worker_cpus < self.free:
            self.cores, self.target = cores, {min(worker_cpus)}

    @property
    def active(self) -> bool:
        return bool(self.cores)

    def _bind(self, cpus: set[int]) -> bool:
        import psutil

        for pid in self.cores:
            try:
                if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                    raise psutil.NoSuchProcess(pid)
                # Affinity is per thread; threads started later inherit their creator's.
                for tid in os.listdir(f"/proc/{pid}/task"):
                    try:
                        os.sched_setaffinity(int(tid), cpus)
                    except ProcessLookupError:
                        pass  # a thread that just ended
            except (psutil.NoSuchProcess, FileNotFoundError):
                # The engine died (the health check replaces the replica): nothing left to place.
                logger.info("vLLM EngineCore %d is gone; engine core placement stops", pid)
                self.cores = []
                return False
            except (OSError, ValueError) as e:
                logger.warning("could not bind the vLLM EngineCore (pid %d) to CPUs %s: %s", pid, sorted(cpus), e)
                self.cores = []  # do not retry (and warn) every 0.5 s
                return False
        return True

    def colocate(self) -> None:
        if self.active and not self.colocated and self._bind(self.target):
            self.colocated = True
            logger.info("vLLM EngineCore %s bound to CPU %s, its worker's core", self.cores, sorted(self.target))

    def release(self) -> None:
        if self.active and self.colocated and self._bind(self.free):
            self.colocated = False
            logger.info("vLLM EngineCore %s released to CPUs %s", self.cores, sorted(self.free))

    def follow(self, in_flight: int, threshold: int) -> None:
        """Colocate at `threshold` requests in flight or more, release at half of it or fewer."""
        if in_flight >= threshold:
            self.colocate()
        elif in_flight <= threshold // 2:
            self.release()


async def place_engine_core_by_load(placement: EngineCorePlacement, in_flight, threshold: int, stop) -> None:
    """Until `stop` (an asyncio.Event) is set, apply `placement.follow` to `in_flight()` every 0.5 s."""
    import asyncio

    while not stop.is_set():
        placement.follow(in_flight(), threshold)
        try:
            await asyncio.wait_for(stop.wait(), PLACEMENT_INTERVAL_S)
        except TimeoutError:
            pass
