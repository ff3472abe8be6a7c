"""The app's rate-limit budgets, held once for the whole cluster: one Ray actor per app.

Every entry point (each LLM replica's direct ingress, each proxy-path ingress
replica, on every node) leases quota from it in batches (serving/api/budgets.py
says how and why); none calls it per request. It is a detached actor named
`serving-budgets:<app>` on the head node where there is one, with no CPU, as
the response store is: it outlives deploys, and callers send their limits
with each call, so a redeploy's new limits apply at once.

Ray restarts it if it dies; it then starts with full buckets (a budget may go
over by up to one minute's limit once) and learns the slots in use from the
replicas' next heartbeats. While it cannot be reached, each tenant's
`on_budget_unreachable` decides (budgets.py).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import ray

from serving.api.budgets import BudgetLimits, Ledger
from serving.deployments.registry import app_actor_options


class BudgetHolderActor:
    def __init__(self) -> None:
        self.ledger = Ledger()

    def take(
        self, holder: str, budget: str, limits: BudgetLimits, wants: dict[str, tuple[float, float]]
    ) -> dict[str, tuple[float, float]]:
        return self.ledger.take(holder, budget, limits, wants)

    def give_back(self, holder: str, budget: str, limits: BudgetLimits, amounts: dict[str, float]) -> None:
        self.ledger.give_back(holder, budget, limits, amounts)

    def heartbeat(self, holder: str, slots: dict[str, int]) -> None:
        self.ledger.heartbeat(holder, slots)

    def level(self, budget: str, kind: str) -> float | None:
        return self.ledger.level(budget, kind)

    def pid(self) -> int:
        return os.getpid()


def holder_name(app_name: str) -> str:
    return f"serving-budgets:{app_name}"


_actor_class: Any = None


def budget_holder(app_name: str) -> Any:
    """The app's actor (made if it does not exist yet). Blocks on the GCS: call it off the event loop."""
    global _actor_class
    if _actor_class is None:
        _actor_class = ray.remote(BudgetHolderActor)
    return _actor_class.options(**app_actor_options(holder_name(app_name))).remote()


class RayLedger:
    """A `LedgerClient` (serving/api/budgets.py) over the app's actor; raises when it cannot be reached."""

    def __init__(self, app_name: str | None = None) -> None:
        self._app_name = app_name
        self._actor: Any = None

    @property
    def connected(self) -> bool:
        """False while the actor is still to be found or made (seconds): callers give that call longer."""
        return self._actor is not None

    async def _call(self, method: str, *args: Any) -> Any:
        if self._actor is None:
            app = self._app_name
            if app is None:
                from ray import serve

                app = self._app_name = serve.get_replica_context().app_name
            self._actor = await asyncio.to_thread(budget_holder, app)  # asks the GCS: not on the loop
        try:
            return await getattr(self._actor, method).remote(*args)
        except Exception:
            self._actor = None  # looked up (or made) again next time
            raise

    async def take(
        self, holder: str, budget: str, limits: BudgetLimits, wants: dict[str, tuple[float, float]]
    ) -> dict[str, tuple[float, float]]:
        got: dict[str, tuple[float, float]] = await self._call("take", holder, budget, limits, wants)
        return got

    async def give_back(self, holder: str, budget: str, limits: BudgetLimits, amounts: dict[str, float]) -> None:
        await self._call("give_back", holder, budget, limits, amounts)

    async def heartbeat(self, holder: str, slots: dict[str, int]) -> None:
        await self._call("heartbeat", holder, slots)
