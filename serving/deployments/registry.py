"""Where every entry point finds the app's replicas: a small Ray actor per app, and each replica's reporter.

Request-level routing (serving/routing/scheduler.py) needs, in every direct
ingress, the app's LLM replicas with their private addresses, states and
loads. Each replica runs a `Reporter` on Serve's event loop (the engine loop
is left to the requests): every `REFRESH_S` one actor call sends its own
entry and brings back the whole table, which replaces the replica's
`EndpointTable`. One round trip per replica per refresh, none per request.

The `RoutingRegistry` actor holds only what the replicas last said, stamped
with its own clock (ages, not times, cross the wire: the nodes' clocks need not
agree). An entry not refreshed for `EXPIRE_S` is dropped (a replica killed
without leaving). It is detached, named per app, with no CPU, on the head node
where there is one; if it is lost it is made again by the next replica that
reports, and the table fills again within one refresh. While it cannot be
reached, every entry point keeps its last table: routing goes on with stale
loads, and each replica always serves what it is sent itself.

A replica reports `starting` until its HTTP server listens, `ready` then,
`draining` from the moment Serve begins its stop (then leaves the table), and
`unhealthy` while its engine fails the health check.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import sys
import time
from collections.abc import Callable
from typing import Any

import ray

from serving.routing.scheduler import REFRESH_S, Endpoint, EndpointTable

logger = logging.getLogger(__name__)

EXPIRE_S = 10.0
CALL_TIMEOUT_S = 2.0
MAX_BACKOFF_S = 5.0


class RoutingRegistry:
    """The app's endpoints as the replicas last reported them (an actor; see the module docstring)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._entries: dict[str, tuple[dict[str, Any], float]] = {}

    def exchange(self, entry: dict[str, Any] | None = None, leave: str | None = None) -> list[dict[str, Any]]:
        """Record `entry` (or drop the replica `leave`), then return every live entry with its age."""
        now = self._clock()
        if entry is not None:
            self._entries[entry["replica_id"]] = (entry, now)
        if leave is not None:
            self._entries.pop(leave, None)
        for rid in [rid for rid, (_, at) in self._entries.items() if now - at > EXPIRE_S]:
            del self._entries[rid]
        return [{**data, "age_s": now - at} for data, at in self._entries.values()]


FORWARD_TOKEN_KEY = b"serving:forward-token"
CREATED_KEY = b"serving:created"


def _kept_in_gcs(key: bytes, make: Callable[[], str]) -> str | None:
    """The value under `key` in the Ray cluster's GCS, stored first if absent; None outside a cluster."""
    try:
        from ray.experimental import internal_kv

        if internal_kv._internal_kv_initialized():
            internal_kv._internal_kv_put(key, make().encode(), overwrite=False)
            value = internal_kv._internal_kv_get(key)
            if value:
                return bytes(value).decode()
    except Exception:
        logger.warning("%s could not be kept in the GCS: one for this deploy only", key.decode(), exc_info=True)
    return None


def deploy_created() -> int:
    """The models' `created` in /v1/models: the first deploy's time in this cluster, the same for every
    ingress and every redeploy. A value that changed with each build was part of the replicas'
    constructor arguments, so any `serve deploy` (a new autoscaling bound, say) replaced every
    replica and reloaded every engine."""
    value = _kept_in_gcs(CREATED_KEY, lambda: str(int(time.time())))
    return int(value) if value and value.isdigit() else int(time.time())


def forward_token() -> str:
    """The secret that marks a request one entry point forwards to another (serving/api/forwarded.py).

    One per Ray cluster, kept in its GCS: the replicas of a redeploy and the old
    ones still draining agree on it. Outside a Ray cluster (a unit test's build),
    a fresh one.
    """
    return _kept_in_gcs(FORWARD_TOKEN_KEY, lambda: secrets.token_urlsafe(32)) or secrets.token_urlsafe(32)


def registry_name(app_name: str) -> str:
    return f"serving-routing:{app_name}"


def registry_actor(app_name: str) -> Any:
    """The app's registry actor, made if it does not exist (on the head node where it can be)."""
    global _actor_class
    if _actor_class is None:
        _actor_class = ray.remote(RoutingRegistry)
    return _actor_class.options(**app_actor_options(registry_name(app_name))).remote()


def app_actor_options(name: str) -> dict[str, Any]:
    """A detached, named, CPU-less actor of the app, looked up if it exists, on the head node where it can be."""
    options: dict[str, Any] = {
        "name": name,
        "namespace": "serving",
        "lifetime": "detached",
        "get_if_exists": True,
        "num_cpus": 0,
        "max_restarts": -1,
        "max_concurrency": 1,
    }
    try:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        head = next((n for n in ray.nodes() if n.get("Alive") and "node:__internal_head__" in n["Resources"]), None)
        if head is not None:
            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(head["NodeID"], soft=True)
    except Exception:  # placement is a preference only
        logger.debug("no head node found for %s", name, exc_info=True)
    return options


_actor_class: Any = None


class Reporter:
    """A replica's side: report its own entry, refresh its table, every `REFRESH_S` until stopped."""

    def __init__(
        self,
        app_name: str,
        table: EndpointTable,
        own: Callable[[], Endpoint],
        refresh_s: float = REFRESH_S,
        actor: Callable[[str], Any] = registry_actor,
    ) -> None:
        self._app_name = app_name
        self._table = table
        self._own = own
        self._refresh_s = refresh_s
        self._make_actor = actor
        self._actor: Any = None
        self._wake = asyncio.Event()

    def poke(self) -> None:
        """Report now (a state change: ready, draining), not at the next refresh."""
        self._wake.set()

    async def _call(self, **kwargs: Any) -> list[dict[str, Any]]:
        if self._actor is None:
            # Looking the actor up (or making it) asks the GCS and waits: not on the replica's loop.
            self._actor = await asyncio.to_thread(self._make_actor, self._app_name)
        try:
            result: list[dict[str, Any]] = await asyncio.wait_for(
                self._actor.exchange.remote(**kwargs), timeout=CALL_TIMEOUT_S
            )
        except TimeoutError:
            raise  # slow, not gone: the same handle next time (a lost actor is restarted by Ray)
        except Exception:
            self._actor = None  # looked up (or made) again next time
            raise
        return result

    async def run(self) -> None:
        failures = 0
        while True:
            try:
                entries = await self._call(entry=self._own().to_dict())
                self._table.update(Endpoint.from_dict(e) for e in entries)
                if failures:
                    logger.warning("routing registry reachable again: %d endpoints", len(entries))
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not failures:
                    logger.warning("routing registry unreachable (%s): routing on the last table", type(exc).__name__)
                failures += 1
            self._wake.clear()
            # Every refresh while it answers; backing off to MAX_BACKOFF_S while it does not.
            wait = min(MAX_BACKOFF_S, self._refresh_s * 2 ** min(failures, 5))
            try:
                await asyncio.wait_for(self._wake.wait(), wait)
            except TimeoutError:
                pass

    async def leave(self, replica_id: str) -> None:
        """Leave the table (the replica is stopping; stop `run` first, or it reports itself again)."""
        try:
            await self._call(leave=replica_id)
        except Exception:
            logger.debug("could not leave the routing registry", exc_info=True)


def main(argv: list[str] | None = None) -> int:
    """`python -m serving.deployments.registry APP [--watch S]`: the app's routing table as JSON lines.

    What every entry point routes by, as the registry holds it: one line per
    snapshot, `{"time": <unix s>, "endpoints": [...]}`, each endpoint with its
    state, load and report age. Run where `ray.init()` reaches the cluster
    (RAY_ADDRESS, or on a node of it). The app's forward token is not printed.
    """
    import argparse
    import json

    p = argparse.ArgumentParser(
        prog="python -m serving.deployments.registry", description="The app's routing table as JSON lines."
    )
    p.add_argument("app", help="the Serve application's name")
    p.add_argument("--watch", type=float, default=0, metavar="S", help="a snapshot every S seconds until stopped")
    args = p.parse_args(argv)
    ray.init(namespace="serving", log_to_driver=False, logging_level="ERROR")
    actor = None
    while True:
        # Watching rides out what a busy cluster does: a registry not made yet, a slow or
        # restarting actor. Each miss is one line on stderr; one snapshot fails at once.
        try:
            if actor is None:
                actor = ray.get_actor(registry_name(args.app), namespace="serving")
            endpoints = ray.get(actor.exchange.remote(), timeout=10)
        except ValueError:
            message = f"no routing registry for app {args.app!r} (no replica with request routing has reported)"
            if not args.watch:
                print(message, flush=True)
                return 1
            print(message, file=sys.stderr, flush=True)
        except (ray.exceptions.GetTimeoutError, ray.exceptions.RayActorError) as exc:
            if not args.watch:
                raise
            print(f"registry not answering: {type(exc).__name__}", file=sys.stderr, flush=True)
            actor = None
        else:
            print(json.dumps({"time": time.time(), "endpoints": endpoints}), flush=True)
            if not args.watch:
                return 0
        time.sleep(args.watch)


if __name__ == "__main__":
    raise SystemExit(main())
