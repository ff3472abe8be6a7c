"""Where stored responses live: a bounded store, and the protocol every store speaks.

A record is a response as returned, plus the conversation it ends (chat
messages: what a `previous_response_id` continues from), kept as encoded JSON
bytes. Bounds, all from the config (`responses`): a record's age (`ttl_s`), the
records' total bytes (`max_bytes`, oldest dropped first), one record's bytes
(`max_record_bytes`: a bigger one is not kept, and its id answers 404 as an
expired one does). Every record belongs to the caller that made it: another API
key gets a 404, as for an id that never existed.

`MemoryResponseStore` serves one process (tests, a single replica); the
deployments wrap it in a Ray actor per app so every replica on every node
shares one (serving/deployments/response_store.py).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

import msgspec

logger = logging.getLogger(__name__)


class ResponseStore(Protocol):
    async def put(self, owner: str, response_id: str, record: dict[str, Any]) -> bool:
        """Keep `record`; False if it is over the size bound (not kept)."""
        ...

    async def get(self, owner: str, response_id: str) -> dict[str, Any] | None:
        """The record if it exists, is not expired and is `owner`'s; else None."""
        ...

    async def delete(self, owner: str, response_id: str) -> bool:
        """Whether `owner`'s record existed (and is now gone)."""
        ...


class BoundedStore:
    """The bounded, owner-scoped record map itself (synchronous: the actor and the memory store run it)."""

    def __init__(
        self,
        ttl_s: float,
        max_bytes: int,
        max_record_bytes: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl_s = ttl_s
        self.max_bytes = max_bytes
        self.max_record_bytes = max_record_bytes
        self._clock = clock
        self._records: OrderedDict[str, tuple[str, bytes, float]] = OrderedDict()  # id -> (owner, data, stored at)
        self.bytes = 0

    def configure(self, ttl_s: float, max_bytes: int, max_record_bytes: int) -> None:
        """The bounds of the latest config (a redeploy may change them; the store outlives deploys)."""
        self.ttl_s, self.max_bytes, self.max_record_bytes = ttl_s, max_bytes, max_record_bytes

    def put(self, owner: str, response_id: str, data: bytes) -> bool:
        if len(data) > min(self.max_record_bytes, self.max_bytes):
            logger.warning(
                "response %s not stored: %d bytes (max_record_bytes %d)", response_id, len(data), self.max_record_bytes
            )
            return False
        self._drop(response_id)
        self._records[response_id] = (owner, data, self._clock())
        self.bytes += len(data)
        self._expire()
        while self.bytes > self.max_bytes and self._records:
            self._drop(next(iter(self._records)))
        return True

    def get(self, owner: str, response_id: str) -> bytes | None:
        self._expire()
        found = self._records.get(response_id)
        if found is None or found[0] != owner:
            return None
        return found[1]

    def delete(self, owner: str, response_id: str) -> bool:
        self._expire()
        found = self._records.get(response_id)
        if found is None or found[0] != owner:
            return False
        self._drop(response_id)
        return True

    def __len__(self) -> int:
        return len(self._records)

    def _drop(self, response_id: str) -> None:
        found = self._records.pop(response_id, None)
        if found is not None:
            self.bytes -= len(found[1])

    def _expire(self) -> None:
        cutoff = self._clock() - self.ttl_s
        while self._records:
            oldest = next(iter(self._records))
            if self._records[oldest][2] > cutoff:
                return
            self._drop(oldest)


class MemoryResponseStore:
    """A `ResponseStore` in this process."""

    def __init__(self, ttl_s: float = 3600, max_bytes: int = 256 << 20, max_record_bytes: int = 8 << 20) -> None:
        self.store = BoundedStore(ttl_s, max_bytes, max_record_bytes)

    async def put(self, owner: str, response_id: str, record: dict[str, Any]) -> bool:
        return self.store.put(owner, response_id, msgspec.json.encode(record))

    async def get(self, owner: str, response_id: str) -> dict[str, Any] | None:
        data = self.store.get(owner, response_id)
        return None if data is None else msgspec.json.decode(data)

    async def delete(self, owner: str, response_id: str) -> bool:
        return self.store.delete(owner, response_id)
