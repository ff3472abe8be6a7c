"""No vLLM engine process outlives its replica, however the replica ends.

vLLM runs its engine core and workers as child processes of the LLM-server
replica. The replica's shutdown stops them; but a replica that never runs it
(SIGKILL, `ray stop --force`, a raylet that dies and takes its workers with it)
leaves them running, reparented to init, ~2 GB each (measured here after every
such stop). A small watchdog process per replica closes that gap:

    python -m serving.deployments.engine_watchdog <replica pid>

It notes the replica's engine processes (by their process titles, with their
start times so a reused pid is never touched) every second while the replica
lives. Once the replica is gone (the watchdog is reparented: `getppid()`
changes), it sends SIGTERM to the engine processes still running, SIGKILL to
any left after `GRACE_S`, and exits. A replica whose own parent, its raylet,
died is orphaned: measured here, it kept running (and its engines with it) for
as long as we watched, serving nothing through Ray; the watchdog then stops
its engines and the replica. A replica that stops its engine itself leaves it
nothing to do. The watchdog runs in a session of its own (a signal to the replica's
process group does not reach it) and carries no `ray::` title, so `ray stop
--force` does not kill it first. It idles otherwise: one /proc walk a second.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil

from serving.deployments.node_tuning import ENGINE_CORE, ENGINE_WORKER, has_title

POLL_S = 1.0
GRACE_S = 3.0


def engine_processes(parent: psutil.Process) -> dict[int, float]:
    """The engine processes among `parent`'s descendants: pid -> start time."""
    found: dict[int, float] = {}
    for child in parent.children(recursive=True):
        if has_title(child, ENGINE_CORE) or has_title(child, ENGINE_WORKER):
            try:
                found[child.pid] = child.create_time()
            except psutil.Error:
                continue
    return found


def _still_ours(pid: int, created: float) -> psutil.Process | None:
    try:
        p = psutil.Process(pid)
        if abs(p.create_time() - created) < 0.01 and p.status() != psutil.STATUS_ZOMBIE:
            return p
    except psutil.Error:
        pass
    return None


def reap(tracked: dict[int, float], grace_s: float = GRACE_S) -> list[int]:
    """SIGTERM the tracked processes still running, SIGKILL what is left after `grace_s`; the pids signalled."""
    alive = [p for p in (_still_ours(pid, created) for pid, created in tracked.items()) if p is not None]
    for p in alive:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, left = psutil.wait_procs(alive, timeout=grace_s)
    for p in left:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(left, timeout=grace_s)
    return [p.pid for p in alive]


def watch(parent_pid: int, poll_s: float = POLL_S) -> list[int]:
    """Track `parent_pid`'s engine processes until it dies, then reap them (returns the pids reaped)."""
    try:
        parent = psutil.Process(parent_pid)
        raylet = parent.ppid()
    except psutil.Error:
        return []
    tracked: dict[int, float] = {}
    orphaned = False
    while os.getppid() == parent_pid:
        try:
            tracked.update(engine_processes(parent))
            orphaned = parent.ppid() != raylet
        except psutil.Error:
            break  # the parent is gone
        if orphaned:
            break
        # forget what ended while the replica lived (its own shutdown, a restart)
        tracked = {pid: c for pid, c in tracked.items() if _still_ours(pid, c) is not None}
        time.sleep(poll_s)
    reaped = reap(tracked)
    if orphaned:
        reaped += reap({parent.pid: parent.create_time()})
    return reaped


def start(replica_pid: int | None = None) -> subprocess.Popen[bytes]:
    """Start the watchdog for this process (the replica); it ends by itself after the replica."""
    return subprocess.Popen(
        [sys.executable, "-m", "serving.deployments.engine_watchdog", str(replica_pid or os.getpid())],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is for the replica, which stops its engine
    reaped = watch(int(args[0]))
    if reaped:
        print(f"engine watchdog: replica {args[0]} is gone; stopped its engine processes {reaped}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
