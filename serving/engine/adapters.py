"""LoRA adapters of one base model, for any engine: where each comes from, checked before the engine sees it, which are loaded.

An adapter is served as model `<base id>:<name>` (`models[].lora`). Why every
adapter is checked here before the engine loads it: vLLM 0.32, given a
request whose LoRA folder does not exist, raised inside the engine core's step
and killed the EngineCore (measured here: EngineDeadError, every request of the
replica failed until Serve replaced it). Its own load call (`add_lora`), by
contrast, fails alone and the engine serves on. So an adapter is

1. found (`AdapterCatalog.locate`): in the static list or the store; else 404
   `model_not_found`;
2. checked (`check_adapter`): a PEFT LoRA config whose rank fits `max_rank`,
   and its weights; else 400 `invalid_adapter`;
3. loaded with the engine's own call, once, by the first request that needs
   it (`AdapterCache`): a failure there (weights of the wrong shapes for the
   base, say) is a 400 too, and the engine serves on;

and only then do requests run with it.

Sources. A folder is used in place: keep it unchanged while it is served
(vLLM reloads an evicted adapter from its folder). A `file://` store is copied
into a local cache once per adapter, as an object store would be downloaded,
so the engine reads files nobody changes under it; an object store
(`s3://bucket/prefix/<name>/`) has the same layout and would be synced the
same way, which nothing here can reach to test.

Loaded adapters: up to `max_loaded` per replica; the least recently used is
unloaded to make room. Loads, hits (the adapter was loaded already) and
evictions are counted for metrics. Entry points send an adapter's requests
where they sent it lately (serving/routing/scheduler.py), which is where it
is loaded.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from serving.config import ADAPTER_NAME, ADAPTER_SEPARATOR, BUILTIN_PREFIX, LoraConfig
from serving.errors import APIError, InvalidRequestError, ModelNotFoundError

logger = logging.getLogger(__name__)

TINY_LORA = f"{BUILTIN_PREFIX}tiny-lora/"
# The weight files vLLM reads (PEFT's layout).
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin", "adapter_model.pt")
MAX_CONFIG_BYTES = 1 << 20
MAX_LISTED = 1000  # adapters a store lists in /v1/models
FAILED_TTL_S = 10.0  # an adapter that could not be found or loaded is refused again for this long
MAX_FAILED = 1024


class InvalidAdapterError(InvalidRequestError):
    reason = "invalid_adapter"

    def __init__(self, model: str, why: str) -> None:
        super().__init__(f"The adapter '{model}' cannot be loaded: {why}", param="model", code="invalid_adapter")


def _local(source: str) -> Path:
    return Path(source.removeprefix("file://")).expanduser()


def cache_dir() -> Path:
    return Path(os.environ.get("SERVING_ADAPTER_CACHE", Path.home() / ".cache" / "serving" / "adapters"))


class AdapterCatalog:
    """The adapters one base model may serve: its static list and its store (no engine here)."""

    def __init__(self, base_id: str, lora: LoraConfig) -> None:
        self.base_id = base_id
        self.lora = lora

    def model_id(self, name: str) -> str:
        return f"{self.base_id}{ADAPTER_SEPARATOR}{name}"

    def may_serve(self, name: str) -> bool:
        """Whether `name` can be an adapter of this model, without reading the store's files:
        in the static list, or a well-formed name when there is a store (its request says if it exists)."""
        return name in self.lora.adapters or (self.lora.store is not None and ADAPTER_NAME.fullmatch(name) is not None)

    def exists(self, name: str) -> bool:
        """Whether `name` is listed or in the store now (a card for it; a request's load says for sure)."""
        if name in self.lora.adapters:
            return True
        return (
            self.lora.store is not None
            and ADAPTER_NAME.fullmatch(name) is not None
            and (_local(self.lora.store) / name / "adapter_config.json").is_file()
        )

    def listed(self) -> list[str]:
        """The static adapters, then those the store holds now (a folder with a config), each sorted
        (a config's mapping may reach the replica re-ordered)."""
        names = sorted(self.lora.adapters)
        if self.lora.store is not None:
            try:
                found = sorted(
                    p.name
                    for p in _local(self.lora.store).iterdir()
                    if ADAPTER_NAME.fullmatch(p.name) and (p / "adapter_config.json").is_file()
                )
            except OSError:
                found = []
            names += [n for n in found[:MAX_LISTED] if n not in self.lora.adapters]
        return names

    def locate(self, name: str) -> Path:
        """The local folder of adapter `name` (blocking: builds a builtin, copies from a file:// store)."""
        model = self.model_id(name)
        source = self.lora.adapters.get(name)
        if source is None and self.lora.store is not None and ADAPTER_NAME.fullmatch(name):
            source = self.lora.store.rstrip("/") + "/" + name
        if source is None:
            raise ModelNotFoundError(model)
        if source.startswith(TINY_LORA):
            from serving.models.tiny_lora import ensure_tiny_lora

            try:
                return ensure_tiny_lora(source[len(TINY_LORA) :])
            except ValueError as exc:
                raise InvalidAdapterError(model, str(exc)) from None
        folder = _local(source)
        if not (folder / "adapter_config.json").is_file():
            if name in self.lora.adapters:  # listed, so not unknown: its files are missing here
                why = "its folder has no adapter_config.json" if folder.exists() else "its folder is missing"
                raise InvalidAdapterError(model, why + " on this replica")
            raise ModelNotFoundError(model)
        if source.startswith("file://"):
            return _cached_copy(folder)
        return folder.resolve()


def _cached_copy(folder: Path) -> Path:
    """A copy of `folder` in the local cache, keyed by its files' names, sizes and times (made once)."""
    entries = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir() if p.is_file())
    key = hashlib.sha256(repr((str(folder.resolve()), entries)).encode()).hexdigest()[:24]
    target = cache_dir() / f"{folder.name}-{key}"
    if (target / "adapter_config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=target.parent))
    try:
        for p in folder.iterdir():
            if p.is_file():
                shutil.copy2(p, staging / p.name)
        try:
            staging.rename(target)
        except OSError:  # another replica of the node copied it first
            if not (target / "adapter_config.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def check_adapter(model: str, folder: Path, max_rank: int) -> int:
    """The adapter's rank, after checking its folder as vLLM will read it (else InvalidAdapterError)."""
    path = folder / "adapter_config.json"
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise InvalidAdapterError(model, "its adapter_config.json is larger than 1 MiB")
        config = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise InvalidAdapterError(
            model, f"its adapter_config.json does not read as JSON ({type(exc).__name__})"
        ) from None
    if not isinstance(config, dict):
        raise InvalidAdapterError(model, "its adapter_config.json is not an object")
    if str(config.get("peft_type", "LORA")).upper() != "LORA":
        raise InvalidAdapterError(model, f"peft_type {config.get('peft_type')!r} is not LORA")
    rank = config.get("r")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise InvalidAdapterError(model, "its adapter_config.json has no valid rank `r`")
    if rank > max_rank:
        raise InvalidAdapterError(model, f"rank {rank} is above this model's max_rank {max_rank} (models[].lora)")
    if not any((folder / f).is_file() for f in WEIGHT_FILES):
        raise InvalidAdapterError(model, f"no weights ({' or '.join(WEIGHT_FILES)})")
    return rank


H = TypeVar("H")


@dataclass
class AdapterStats:
    loads: int = 0
    hits: int = 0
    evictions: int = 0
    failures: int = 0


class AdapterCache(Generic[H]):
    """The adapters loaded in one engine, least recently used first; loads one at most once at a time.

    `load(name, folder) -> handle` is the engine's own load (vLLM: add_lora); `unload(handle)`
    its unload. Both run on the engine's event loop.
    """

    def __init__(
        self,
        catalog: AdapterCatalog,
        load: Callable[[str, Path], Awaitable[H]],
        unload: Callable[[H], Awaitable[None]],
    ) -> None:
        self.catalog = catalog
        self._load = load
        self._unload = unload
        self._loaded: OrderedDict[str, H] = OrderedDict()
        self._loading: dict[str, asyncio.Future[H]] = {}
        self._load_lock = asyncio.Lock()
        # Adapters that could not be found or loaded lately: refused again without asking the engine
        # (each load attempt runs in vLLM's engine core, between steps), bounded.
        self._failed: OrderedDict[str, tuple[float, APIError]] = OrderedDict()
        self.stats = AdapterStats()

    def loaded(self) -> list[str]:
        """The names loaded, most recently used last."""
        return list(self._loaded)

    async def acquire(self, name: str) -> H:
        """The engine's handle of adapter `name`, loaded first if it is not (404/400 as the module says)."""
        handle = self._loaded.get(name)
        if handle is not None:
            self._loaded.move_to_end(name)
            self.stats.hits += 1
            return handle
        pending = self._loading.get(name)
        if pending is None:
            pending = self._loading[name] = asyncio.ensure_future(self._load_one(name))

            def done(f: asyncio.Future[H]) -> None:
                self._loading.pop(name, None)
                if not f.cancelled():
                    f.exception()  # retrieved, even if every request that waited for it has left

            pending.add_done_callback(done)
        else:
            self.stats.hits += 1  # loading for another request already
        return await asyncio.shield(pending)

    async def _load_one(self, name: str) -> H:
        model = self.catalog.model_id(name)
        failed = self._failed.get(name)
        if failed is not None and time.monotonic() - failed[0] < FAILED_TTL_S:
            self.stats.failures += 1
            raise failed[1]
        try:
            folder = await asyncio.to_thread(self.catalog.locate, name)
            await asyncio.to_thread(check_adapter, model, folder, self.catalog.lora.max_rank)
            # One load at a time (vLLM runs each in its engine core, between steps anyway), room made
            # first: vLLM's own cache holds as many as ours, and a load into a full one drops its least
            # recently used by its own count, which ours would not know.
            async with self._load_lock:
                await self._make_room()
                handle = await self._load(name, folder)
        except (InvalidRequestError, ModelNotFoundError) as exc:
            self.stats.failures += 1
            self._failed[name] = (time.monotonic(), exc)
            self._failed.move_to_end(name)
            while len(self._failed) > MAX_FAILED:
                self._failed.popitem(last=False)
            raise
        except Exception:
            self.stats.failures += 1
            raise
        self._failed.pop(name, None)
        self.stats.loads += 1
        self._loaded[name] = handle
        return handle

    async def _make_room(self) -> None:
        """Unload the least recently used adapters until one more fits in `max_loaded`."""
        while self._loaded and len(self._loaded) + 1 > self.catalog.lora.max_loaded:
            old, old_handle = self._loaded.popitem(last=False)
            self.stats.evictions += 1
            try:
                await self._unload(old_handle)
            except Exception:  # the engine reloads it if a request still needs it
                logger.warning("unloading adapter %s failed", self.catalog.model_id(old), exc_info=True)


async def acquire(cache: AdapterCache[H] | None, name: str) -> H:
    """`cache.acquire(name)`; a model without adapters (no cache) refuses any."""
    if cache is None:
        raise InvalidRequestError("This model serves no adapters.", param="model", code="model_not_found")
    return await cache.acquire(name)


def adapter_stats(cache: AdapterCache[Any]) -> dict[str, float]:
    """The engine stats keys of the adapters (serving.engine.base.Engine.stats)."""
    st = cache.stats
    return {
        "lora_loaded": float(len(cache.loaded())),
        "lora_loads": float(st.loads),
        "lora_hits": float(st.hits),
        "lora_evictions": float(st.evictions),
        "lora_failures": float(st.failures),
    }
