"""API keys and who they belong to: the `Principal` of every /v1 request.

Keys come from environment variables and/or mounted secret files, never from
configs/: the app's own (`auth.api_keys_env` / `api_keys_file`, keys of no
tenant, each limited by `limits` on its own) and each tenant's
(`auth.tenants[]`, sharing the tenant's budgets, scopes and priority). Keys
are held only as SHA-256 digests: a memory dump or a log line shows no key,
and finding the key of a digest is finding a SHA-256 preimage. A key file is
read again when it changes (`auth.key_file_check_s`), so keys rotate without a
restart; a changed file that gives no usable keys is logged and the keys read
before stay in force (a bad secret update must not lock every client out, nor
open the API).

The budgets themselves (requests and tokens per minute, concurrency) are
serving/api/budgets.py's: they hold across the cluster.
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from serving.api.budgets import BudgetLimits, BudgetOwner
from serving.config import PRIORITIES, AuthConfig, ConfigError, LimitsConfig, TenantConfig
from serving.errors import AuthenticationError

logger = logging.getLogger(__name__)


MIN_KEY_LENGTH = 16
# The placeholders shipped in k8s/secret-example.yaml and the docs: a cluster
# started with them would be open to anyone who read the repository.
EXAMPLE_KEYS = frozenset({"replace-me-key-1", "replace-me-key-2", "sk-replace-me", "changeme", "unused"})
_HINT = (
    "Set it (e.g. `openssl rand -hex 24`), or say `auth: open` in the config to serve without keys (development only)."
)
# The `tenant` label of requests that belong to no configured tenant.
NO_TENANT = "default"
ANONYMOUS = "anonymous"


class AuthSetupError(ConfigError):
    """The configured key sources give no usable keys: the application must not start."""


def _keys_from_env(name: str, field: str = "auth.api_keys_env") -> list[str]:
    value = os.environ.get(name)
    if value is None:
        raise AuthSetupError(f"auth: the environment variable {name} ({field}) is not set. {_HINT}")
    keys = [k.strip() for k in value.split(",") if k.strip()]
    if not keys:
        raise AuthSetupError(f"auth: the environment variable {name} ({field}) holds no key. {_HINT}")
    return keys


def _keys_from_file(name: str, field: str = "auth.api_keys_file") -> list[str]:
    """One key per line; blank lines and lines starting with '#' are not keys."""
    try:
        text = Path(name).read_text()
    except FileNotFoundError:
        raise AuthSetupError(f"auth: the key file {name} ({field}) does not exist.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise AuthSetupError(f"auth: the key file {name} ({field}) cannot be read: {exc}") from None
    keys = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    if not keys:
        raise AuthSetupError(f"auth: the key file {name} ({field}) holds no key.")
    return keys


def _checked(sources: list[tuple[str, list[str]]]) -> list[bytes]:
    keys: list[str] = []
    for where, found in sources:
        for n, key in enumerate(found, 1):
            if key in EXAMPLE_KEYS or key.lower().startswith("replace-me"):
                raise AuthSetupError(
                    f"auth: key {n} of the {where} is a placeholder from the examples; use a real key."
                )
            if len(key) < MIN_KEY_LENGTH:
                raise AuthSetupError(
                    f"auth: key {n} of the {where} is {len(key)} characters; keys must have at least "
                    f"{MIN_KEY_LENGTH} (e.g. `openssl rand -hex 24`)."
                )
        keys += found
    return [k.encode() for k in keys]


def load_tenant_keys(t: TenantConfig) -> list[bytes]:
    """A tenant's keys, checked as the app's are (fails closed)."""
    sources: list[tuple[str, list[str]]] = []
    where = f"auth.tenants[{t.name}]"
    if t.keys_env:
        sources.append((f"environment variable {t.keys_env}", _keys_from_env(t.keys_env, f"{where}.keys_env")))
    if t.keys_file:
        sources.append((f"key file {t.keys_file}", _keys_from_file(t.keys_file, f"{where}.keys_file")))
    return _checked(sources)


def load_api_keys(cfg: AuthConfig) -> list[bytes]:
    """The accepted keys, or AuthSetupError: fails closed, and never shows a key in its message.

    Open mode (`auth: open`) returns no keys: every caller is "anonymous".
    These are the keys of no tenant; a tenant's are `load_tenant_keys`'s.
    Otherwise every source the config names must hold at least one key, and
    every key must be at least MIN_KEY_LENGTH characters and not a shipped
    placeholder.
    """
    if cfg.mode == "open":
        return []
    sources: list[tuple[str, list[str]]] = []
    if cfg.api_keys_env:
        sources.append((f"environment variable {cfg.api_keys_env}", _keys_from_env(cfg.api_keys_env)))
    if cfg.api_keys_file:
        sources.append((f"key file {cfg.api_keys_file}", _keys_from_file(cfg.api_keys_file)))
    return _checked(sources)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who sent a request, and what that entitles it to.

    `key`: a digest of the key (owner of its stored responses); `tenant`: the
    label of its metrics and log lines; `owner`: whose budgets it spends (a
    tenant's, shared by its keys, or a key's own); `priority` and `weight`:
    its place under overload (serving/api/fair_queue.py); `models`: globs of
    the model and adapter ids it may use.
    """

    key: str
    tenant: str
    owner: BudgetOwner
    priority: int = PRIORITIES["normal"]
    weight: float = 1.0
    models: tuple[str, ...] = ("*",)

    def may_use(self, model: str) -> bool:
        return self.models == ("*",) or any(fnmatch.fnmatchcase(model, glob) for glob in self.models)


def key_limits(limits: LimitsConfig) -> BudgetLimits:
    return BudgetLimits(limits.requests_per_minute, limits.tokens_per_minute, limits.max_concurrent_requests_per_key)


def tenant_principal(t: TenantConfig, key: str) -> Principal:
    limits = BudgetLimits(t.requests_per_minute, t.tokens_per_minute, t.max_concurrent_requests)
    owner = BudgetOwner(f"tenant:{t.name}", limits, t.on_budget_unreachable == "open")
    return Principal(key, t.name, owner, PRIORITIES[t.priority], t.weight, tuple(t.models))


class Authenticator:
    """Who a request's key belongs to (module docstring): digests only, key files read again when they change."""

    def __init__(
        self,
        cfg: AuthConfig | None = None,
        limits: LimitsConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._cfg = cfg or AuthConfig(mode="open", api_keys_env=None)
        limits = limits or LimitsConfig()
        self._limits = key_limits(limits)
        self._fail_open = limits.on_budget_unreachable == "open"
        self._clock = clock
        self._table = self._load()  # fails closed: AuthSetupError stops the start-up
        self._checked = clock()
        self._stamp = self._file_stamps()
        # An open API (development) serves under per-replica limits when the holder cannot be reached.
        self.anonymous = Principal(ANONYMOUS, ANONYMOUS, BudgetOwner(ANONYMOUS, self._limits, fail_open=True))

    @classmethod
    def from_config(
        cls, cfg: AuthConfig, limits: LimitsConfig | None = None, clock: Callable[[], float] = time.monotonic
    ) -> Authenticator:
        return cls(cfg, limits, clock)

    def _load(self) -> dict[bytes, Principal]:
        table: dict[bytes, Principal] = {}
        for key in load_api_keys(self._cfg):
            digest = hashlib.sha256(key).digest()
            name = digest.hex()[:16]
            table[digest] = Principal(name, NO_TENANT, BudgetOwner(f"key:{name}", self._limits, self._fail_open))
        for t in self._cfg.tenants:
            for n, key in enumerate(load_tenant_keys(t), 1):
                digest = hashlib.sha256(key).digest()
                if digest in table:
                    raise AuthSetupError(
                        f"auth: key {n} of tenant {t.name!r} is also another tenant's or the app's key."
                    )
                table[digest] = tenant_principal(t, digest.hex()[:16])
        return table

    @property
    def enabled(self) -> bool:
        return bool(self._table)

    def _files(self) -> list[str]:
        cfg = self._cfg
        return [f for f in (cfg.api_keys_file, *(t.keys_file for t in cfg.tenants)) if f]

    def _file_stamps(self) -> tuple[tuple[int, int] | None, ...]:
        stamps: list[tuple[int, int] | None] = []
        for name in self._files():
            try:
                st = os.stat(name)  # follows the symlink a Kubernetes secret volume swaps
            except OSError:
                stamps.append(None)
                continue
            stamps.append((st.st_mtime_ns, st.st_size))
        return tuple(stamps)

    def _maybe_reload(self) -> None:
        cfg = self._cfg
        if self._clock() - self._checked < cfg.key_file_check_s or not self._files():
            return
        self._checked = self._clock()
        stamp = self._file_stamps()
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            table = self._load()
        except AuthSetupError as exc:
            logger.error("auth: a key file changed but gives no usable keys; the previous keys stay: %s", exc)
            return
        self._table = table
        logger.info("auth: keys read again (%d keys)", len(table))

    def identify(self, authorization: str | None) -> Principal:
        """The caller, or a 401."""
        self._maybe_reload()
        if not self._table:
            return self.anonymous
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise AuthenticationError("Missing API key: send 'Authorization: Bearer <key>'.", code="invalid_api_key")
        found = self._table.get(hashlib.sha256(token.strip().encode()).digest())
        if found is None:  # digests: finding one that matches is finding a SHA-256 preimage
            raise AuthenticationError("Incorrect API key provided.", code="invalid_api_key")
        return found
