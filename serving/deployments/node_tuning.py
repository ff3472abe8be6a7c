"""Keep Ray's control plane off the token path's CPU (its proxy and ingress too, in direct mode).

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
