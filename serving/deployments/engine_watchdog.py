"""No vLLM engine process outlives its replica, however the replica ends.

vLLM runs its engine core and workers as child processes of the LLM-server
replica. The replica's shutdown stops them; but a replica that never runs it
(SIGKILL, `ray stop --force`, a raylet that dies and takes its workers with it)
leaves them running, reparented to init, ~2 GB each (measured here after every
such stop). A small watchdog process per replica closes that gap:

    python -m serving.deployments.engine_watchdog <replica pid>

It starts before the replica's engine and notes the replica's engine processes
(by their process titles, with their start times so a reused pid is never
touched) every second while the replica lives; the replica marks its
environment first (`OWNER_ENV`), so engine processes it started are found by
that mark too, even those orphaned before the watchdog saw them. Once the
replica is gone (the watchdog is reparented: `getppid()` changes), it sends
SIGTERM to the engine processes still running, SIGKILL to any left after
`GRACE_S`, and exits. A replica whose own parent, its raylet,
died is orphaned: measured here, it kept running (and its engines with it) for
as long as we watched, serving nothing through Ray; the watchdog then stops
its engines and the replica. A replica that stops its engine itself leaves it
nothing to do. The watchdog runs in a session of its own (a signal to the replica's
process group does not reach it) and carries no `ray::` title, so `ray stop
--force` does not kill it first. It idles otherwise: one /proc walk a second.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import psutil

from serving.deployments.node_tuning import ENGINE_CORE, ENGINE_WORKER, has_title

logger = logging.getLogger(__name__)

POLL_S = 1.0
GRACE_S = 3.0
# Set in the replica's environment before it starts its engine, so every engine process carries
# it: the watchdog finds them even if the replica dies before they show up among its descendants
# (a replica killed while its engine was starting left them running, reparented to init: a CI run).
OWNER_ENV = "SERVING_ENGINE_OWNER"


def mark_owner() -> str:
    """Mark this process (the replica) as the owner of the engine processes it starts from now on."""
    me = psutil.Process()
    owner = f"{me.pid}:{me.create_time()!r}"
    os.environ[OWNER_ENV] = owner
    return owner


def marked(owner: str | None) -> dict[int, float]:
    """The engine processes anywhere on this host that carry `owner`'s mark: pid -> start time."""
    found: dict[int, float] = {}
    if not owner:
        return found
    for p in psutil.process_iter():
        if not (has_title(p, ENGINE_CORE) or has_title(p, ENGINE_WORKER)):
            continue
        try:
            if p.environ().get(OWNER_ENV) == owner:
                found[p.pid] = p.create_time()
        except psutil.Error:
            continue
    return found


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


def watch(
    parent_pid: int,
    poll_s: float = POLL_S,
    known: dict[int, float] | None = None,
    on_watching: Callable[[], object] | None = None,
    owner: str | None = None,
) -> list[int]:
    """Track `parent_pid`'s engine processes until it dies, then reap them (returns the pids reaped).

    `known`: engine processes the replica handed over at the start (pid -> start time), reaped
    even if the replica is already gone when the watch begins. `owner`: the replica's mark
    (`mark_owner`); engine processes carrying it are reaped too, wherever they are by then.
    `on_watching`: called once the watch has begun.
    """
    tracked: dict[int, float] = dict(known or {})
    try:
        parent = psutil.Process(parent_pid)
        raylet = parent.ppid()
    except psutil.Error:
        return reap({**tracked, **marked(owner)})  # gone before the watch began: what it handed over still goes
    if os.getppid() != parent_pid:
        return reap({**tracked, **marked(owner)})
    if on_watching is not None:
        on_watching()
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
    reaped = reap({**tracked, **marked(owner)})
    if orphaned:
        reaped += reap({parent.pid: parent.create_time()})
    return reaped


WATCHING = b"watching\n"
START_TIMEOUT_S = 30.0


def start(replica_pid: int | None = None, timeout_s: float = START_TIMEOUT_S) -> subprocess.Popen[bytes]:
    """Start the watchdog for this process (the replica); it ends by itself after the replica.

    Returns once the watchdog watches (it says so on its stdout), so a replica never reports
    ready with its engines unguarded. It is handed the engine processes running now: a
    replica killed while the watchdog was still starting (a CI run under load: the test
    killed the stack right after it answered /ready) used to leave them running, since the
    watchdog then found no replica to watch and nothing to reap.
    """
    pid = replica_pid or os.getpid()
    try:
        known = engine_processes(psutil.Process(pid))
    except psutil.Error:
        known = {}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "serving.deployments.engine_watchdog",
            str(pid),
            *(f"{p}:{created!r}" for p, created in known.items()),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
    line = proc.stdout.readline() if ready else b""
    proc.stdout.close()  # it writes nothing more there
    if line != WATCHING:
        logger.warning("the engine watchdog did not say it watches within %gs (%r)", timeout_s, line)
    return proc


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is for the replica, which stops its engine
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    known = {int(pid): float(created) for pid, created in (a.split(":", 1) for a in args[1:])}

    def watching() -> None:
        try:
            os.write(1, WATCHING)
            os.close(1)
        except OSError:
            pass

    reaped = watch(int(args[0]), known=known, on_watching=watching, owner=os.environ.get(OWNER_ENV))
    if reaped:
        print(f"engine watchdog: replica {args[0]} is gone; stopped its engine processes {reaped}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
