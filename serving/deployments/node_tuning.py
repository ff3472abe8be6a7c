"""CPU placement on the replica's node: Ray's control plane yields, vLLM's scheduler shares its worker's core.

`pin_engine_core_to_worker` (end of this file) is the larger win on CPU hosts.
Below: keep Ray's control plane off the token path's CPU (its proxy and ingress
too, in direct mode).

Measured on 2 cores (loadtests/PERFORMANCE.md): under load, the vLLM worker is
CPU-bound on its pinned core, and Ray's background processes (GCS, raylet,
dashboard, Serve controller, proxy) took ~13% of a core from it at random
moments, worth 5-10% of output tokens/s. Lowering their scheduling priority
(nice +10, allowed without privileges for processes of the same user) lets them
run whenever the data path leaves room. In `proxy` mode the proxy and ingress
are on the data path, so they are left alone.

Ray's own workers (controller, proxy, replicas) start at nice 15; Ray's daemons
and agents at 0. In direct mode the LLM-server replica runs at
`ingress.replica_niceness` (0) instead (serving/app.py), so the order under load
is: engine and replica (0), Ray's daemons and agents (10), Ray's workers (15).
"""

from __future__ import annotations

import logging
import os

logger = logging.getLogger(__name__)

CONTROL_PLANE = (
    "gcs_server", "raylet", "dashboard", "DashboardAgent", "RuntimeEnvAgent",
    "ServeController", "log_monitor", "monitor.py", "runtime_env",
)  # fmt: skip
DIRECT_ONLY = ("ProxyActor", ":ingress")
NICENESS = 10


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
            text = " ".join(proc.info["cmdline"] or [proc.info["name"] or ""])
            if "VLLM::" in text or not any(p in text for p in patterns):
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


def _named(proc, name: str) -> bool:
    import psutil

    try:
        return name in proc.name() + " " + " ".join(proc.cmdline())
    except psutil.Error:
        return False


def pin_engine_core_to_worker(replica_pid: int | None = None) -> dict[int, set[int]]:
    """CPU hosts: bind vLLM's scheduler process (EngineCore) to the core its worker is bound to.

    vLLM on CPU binds its worker to cores (OMP thread binding) and leaves the
    EngineCore free to float. The two run in lockstep: the core schedules a step
    while the worker waits, the worker runs the model while the core waits, and
    each waits by spinning with sched_yield. On separate cores that spinning takes
    a core from everything else (frontend, clients, Ray) at every step; on one core
    a yield hands the CPU straight to the other side. Measured on 2 cores (see
    loadtests/PERFORMANCE.md): +22% output tokens/s at 16 streams, +32% at 64.
    Nothing to do when the worker is not bound (GPU hosts, binding turned off).
    Returns {EngineCore pid: cores} for each process moved.
    """
    import psutil

    try:
        children = psutil.Process(replica_pid or os.getpid()).children(recursive=True)
    except psutil.Error:
        return {}
    cores = [p for p in children if _named(p, ENGINE_CORE)]
    workers = sorted((p for p in children if _named(p, ENGINE_WORKER)), key=lambda p: p.pid)
    if not cores or not workers:
        return {}
    try:
        # The worker's main thread: OMP binds it to the first core of its team.
        worker_cpus = os.sched_getaffinity(workers[0].pid)
    except OSError:
        return {}
    if worker_cpus >= os.sched_getaffinity(0):
        return {}
    target = {min(worker_cpus)}
    moved = {}
    for proc in cores:
        try:
            # Affinity is per thread; threads started later inherit their creator's.
            for tid in os.listdir(f"/proc/{proc.pid}/task"):
                os.sched_setaffinity(int(tid), target)
            moved[proc.pid] = target
        except (OSError, ValueError) as e:
            logger.warning("could not bind the vLLM EngineCore (pid %d) to CPU %s: %s", proc.pid, target, e)
    if moved:
        logger.info("bound the vLLM EngineCore %s to CPU %s, the core of its worker %d", list(moved), target, workers[0].pid)
    return moved
