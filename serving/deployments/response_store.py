"""The app's stored responses (/v1/responses), shared by every replica on every node: one Ray actor per app.

Ray's own Responses support keeps stored responses in the replica that made
them, so a `previous_response_id` or a GET that lands elsewhere (another
replica, another node, the proxy path) finds nothing. Here every entry point
reaches one detached actor per app (`serving-responses:<app>`, on the head
node where there is one, no CPU), which holds the records in a
`BoundedStore` (serving/api/responses/store.py: time, total and per-record
size bounds, owner-scoped). Records cross as encoded JSON bytes.

Each write carries the writer's bounds, so a redeploy with new `responses:`
values applies them from its first write (the actor outlives deploys).
The actor keeps them in memory: a restart of the actor (Ray restarts it) or of
the cluster loses them, and their ids answer 404 as expired ones do. A call
that cannot reach it answers 503 (a read) or logs and keeps serving (a write:
the response itself was still answered).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import msgspec
import ray

from serving.api.responses.store import BoundedStore
from serving.config import ResponsesConfig
from serving.deployments.registry import app_actor_options
from serving.errors import EngineUnavailableError

logger = logging.getLogger(__name__)

CALL_TIMEOUT_S = 5.0


class ResponseStoreActor:
    def __init__(self, ttl_s: float, max_bytes: int, max_record_bytes: int) -> None:
        self.store = BoundedStore(ttl_s, max_bytes, max_record_bytes)

    def put(self, owner: str, response_id: str, data: bytes, bounds: tuple[float, int, int] | None = None) -> bool:
        if bounds is not None:  # the writer's config: a redeploy's new bounds apply from its first write
            self.store.configure(*bounds)
        return self.store.put(owner, response_id, data)

    def get(self, owner: str, response_id: str) -> bytes | None:
        return self.store.get(owner, response_id)

    def delete(self, owner: str, response_id: str) -> bool:
        return self.store.delete(owner, response_id)

    def usage(self) -> dict[str, int]:
        return {"responses": len(self.store), "bytes": self.store.bytes}


def store_name(app_name: str) -> str:
    return f"serving-responses:{app_name}"


_actor_class: Any = None


class RayResponseStore:
    """A `ResponseStore` (serving/api/responses/store.py) over the app's actor."""

    def __init__(self, cfg: ResponsesConfig, app_name: str | None = None) -> None:
        self._cfg = cfg
        self._app_name = app_name
        self._actor: Any = None

    def _lookup(self) -> Any:
        global _actor_class
        app = self._app_name
        if app is None:
            from ray import serve

            app = self._app_name = serve.get_replica_context().app_name
        if _actor_class is None:
            _actor_class = ray.remote(ResponseStoreActor)
        cfg = self._cfg
        return _actor_class.options(**app_actor_options(store_name(app))).remote(
            cfg.ttl_s, cfg.max_bytes, cfg.max_record_bytes
        )

    async def _call(self, method: str, *args: Any) -> Any:
        if self._actor is None:
            self._actor = await asyncio.to_thread(self._lookup)  # asks the GCS and waits: not on the loop
        try:
            return await asyncio.wait_for(getattr(self._actor, method).remote(*args), CALL_TIMEOUT_S)
        except TimeoutError:
            raise
        except Exception:
            self._actor = None  # looked up (or made) again next time
            raise

    async def put(self, owner: str, response_id: str, record: dict[str, Any]) -> bool:
        try:
            cfg = self._cfg
            bounds = (cfg.ttl_s, cfg.max_bytes, cfg.max_record_bytes)
            kept: bool = await self._call("put", owner, response_id, msgspec.json.encode(record), bounds)
        except Exception:
            logger.warning("response %s could not be stored", response_id, exc_info=True)
            return False
        return kept

    async def get(self, owner: str, response_id: str) -> dict[str, Any] | None:
        try:
            data = await self._call("get", owner, response_id)
        except Exception as exc:
            raise EngineUnavailableError(
                f"The response store cannot be reached ({type(exc).__name__}); retry shortly.", code="store_unavailable"
            ) from None
        return None if data is None else msgspec.json.decode(data)

    async def delete(self, owner: str, response_id: str) -> bool:
        try:
            deleted: bool = await self._call("delete", owner, response_id)
        except Exception as exc:
            raise EngineUnavailableError(
                f"The response store cannot be reached ({type(exc).__name__}); retry shortly.", code="store_unavailable"
            ) from None
        return deleted
