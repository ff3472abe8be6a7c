"""API keys, per-key rate limits and the body-size limit, applied to every /v1 route.

Keys come from an environment variable and/or a mounted secret file, never from
configs/. Comparison is constant-time against every configured key (no early
exit that would leak which key matched or how far). The key itself never
appears in a log line or an error message: limits are tracked per key *digest*.

Limits are enforced per ingress process: in direct mode that is per replica, so
a key's cluster-wide budget is the configured limit times the replicas it
reaches (SECURITY.md). Buckets refill continuously; a refused request gets 429
with `Retry-After` (seconds until the bucket allows it). Tokens are reserved
for a request's worst case when it is admitted and settled when it ends
(`RateLimiter`, `Lease`).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from serving.config import AuthConfig, ConfigError, LimitsConfig
from serving.errors import AuthenticationError, InvalidRequestError, RateLimitError

logger = logging.getLogger(__name__)


MIN_KEY_LENGTH = 16
# The placeholders shipped in k8s/secret-example.yaml and the docs: a cluster
# started with them would be open to anyone who read the repository.
EXAMPLE_KEYS = frozenset({"replace-me-key-1", "replace-me-key-2", "sk-replace-me", "changeme", "unused"})
_HINT = (
    "Set it (e.g. `openssl rand -hex 24`), or say `auth: open` in the config to serve without keys (development only)."
)


class AuthSetupError(ConfigError):
    """The configured key sources give no usable keys: the application must not start."""


def _keys_from_env(name: str) -> list[str]:
    value = os.environ.get(name)
    if value is None:
        raise AuthSetupError(f"auth: the environment variable {name} (auth.api_keys_env) is not set. {_HINT}")
    keys = [k.strip() for k in value.split(",") if k.strip()]
    if not keys:
        raise AuthSetupError(f"auth: the environment variable {name} (auth.api_keys_env) holds no key. {_HINT}")
    return keys


def _keys_from_file(name: str) -> list[str]:
    """One key per line; blank lines and lines starting with '#' are not keys."""
    try:
        text = Path(name).read_text()
    except FileNotFoundError:
        raise AuthSetupError(f"auth: the key file {name} (auth.api_keys_file) does not exist.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise AuthSetupError(f"auth: the key file {name} (auth.api_keys_file) cannot be read: {exc}") from None
    keys = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    if not keys:
        raise AuthSetupError(f"auth: the key file {name} (auth.api_keys_file) holds no key.")
    return keys


def load_api_keys(cfg: AuthConfig) -> list[bytes]:
    """The accepted keys, or AuthSetupError: fails closed, and never shows a key in its message.

    Open mode (`auth: open`) returns no keys: every caller is "anonymous".
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


class Authenticator:
    """Who a request's key belongs to. Keys are held only as SHA-256 digests (a memory dump or a log
    shows no key), and a key file is read again when it changes (`AuthConfig.key_file_check_s`), so
    keys rotate without a restart. A changed file that no longer gives usable keys is logged and
    the keys read before stay in force: a bad secret update must not lock every client out, and
    must not open the API either."""

    def __init__(
        self, keys: list[bytes], cfg: AuthConfig | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._digests = frozenset(hashlib.sha256(k).digest() for k in keys)
        self._cfg = cfg
        self._clock = clock
        self._checked = clock()
        self._stamp = self._file_stamp()

    @classmethod
    def from_config(cls, cfg: AuthConfig, clock: Callable[[], float] = time.monotonic) -> Authenticator:
        return cls(load_api_keys(cfg), cfg, clock)

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def _file_stamp(self) -> tuple[int, int] | None:
        if self._cfg is None or not self._cfg.api_keys_file:
            return None
        try:
            st = os.stat(self._cfg.api_keys_file)  # follows the symlink a Kubernetes secret volume swaps
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def _maybe_reload(self) -> None:
        cfg = self._cfg
        if cfg is None or not cfg.api_keys_file or self._clock() - self._checked < cfg.key_file_check_s:
            return
        self._checked = self._clock()
        stamp = self._file_stamp()
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            keys = load_api_keys(cfg)
        except AuthSetupError as exc:
            logger.error("auth: the key file changed but gives no usable keys; the previous keys stay: %s", exc)
            return
        self._digests = frozenset(hashlib.sha256(k).digest() for k in keys)
        logger.info("auth: keys read again from %s (%d keys)", cfg.api_keys_file, len(keys))

    def identify(self, authorization: str | None) -> str:
        """Return the caller's identity (a digest of its key), or raise 401."""
        self._maybe_reload()
        if not self._digests:
            return "anonymous"
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise AuthenticationError("Missing API key: send 'Authorization: Bearer <key>'.", code="invalid_api_key")
        presented = hashlib.sha256(token.strip().encode()).digest()
        if presented not in self._digests:  # digests: finding one that matches is finding a SHA-256 preimage
            raise AuthenticationError("Incorrect API key provided.", code="invalid_api_key")
        return presented.hex()[:16]


@dataclass
class _Bucket:
    capacity: float
    tokens: float
    updated: float

    def refill(self, now: float) -> None:
        rate = self.capacity / 60.0
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * rate)
        self.updated = now

    def wait_for(self, amount: float) -> float:
        """Seconds until `amount` is available (0 if it is now)."""
        missing = amount - self.tokens
        return 0.0 if missing <= 0 else missing / (self.capacity / 60.0)


class Lease:
    """What an admitted request holds until it ends: a concurrency slot and the tokens it reserved.

    `settle(used)` once, when the request ends: the slot is returned, and the
    reservation is replaced by the tokens used (prompt plus completion, from the
    response's usage). `used=None` (a stream cut before its usage arrived)
    keeps the whole reservation charged: what it generated is not known here,
    and charging less would let a client that hangs up early go over its budget.
    """

    __slots__ = ("_limiter", "caller", "reserved", "_open")

    def __init__(self, limiter: RateLimiter, caller: str, reserved: int) -> None:
        self._limiter, self.caller, self.reserved, self._open = limiter, caller, reserved, True

    def settle(self, used: int | None) -> None:
        if self._open:
            self._open = False
            self._limiter._settle(self, used)


class RateLimiter:
    """Requests per minute, tokens per minute and concurrent requests, per caller.

    Tokens are reserved at admission for the worst case the request may cost
    (its prompt plus n x max_tokens, an omitted max_tokens counting as the rest of
    the context) and settled against its usage when it ends, so a key cannot get
    more than its budget by omitting max_tokens, by sending one huge request, or
    by sending many at once (all of those went 8-122x over when a request was
    charged an estimate after the fact).
    """

    def __init__(self, cfg: LimitsConfig, clock=time.monotonic) -> None:
        self.rpm = cfg.requests_per_minute
        self.tpm = cfg.tokens_per_minute
        self.max_concurrent = cfg.max_concurrent_requests_per_key
        self._clock = clock
        self._requests: dict[str, _Bucket] = {}
        self._tokens: dict[str, _Bucket] = {}
        self._active: dict[str, int] = {}

    @property
    def leases(self) -> bool:
        """Whether requests need a `Lease` (a token or concurrency limit is configured)."""
        return bool(self.tpm or self.max_concurrent)

    def _bucket(self, table: dict[str, _Bucket], caller: str, capacity: float) -> _Bucket:
        now = self._clock()
        bucket = table.get(caller)
        if bucket is None:
            bucket = table[caller] = _Bucket(capacity, capacity, now)
        bucket.refill(now)
        return bucket

    def admit(self, caller: str) -> None:
        """Before the body is read: refuse at once (429) a caller whose budgets are spent; take one request."""
        self._check_concurrency(caller)
        if self.tpm:
            tokens = self._bucket(self._tokens, caller, self.tpm)
            if tokens.tokens <= 0:
                self._refuse("tokens per minute", tokens.wait_for(1))
        if self.rpm:
            requests = self._bucket(self._requests, caller, self.rpm)
            wait = requests.wait_for(1)
            if wait > 0:
                self._refuse("requests per minute", wait)
            requests.tokens -= 1

    def reserve(self, caller: str, prompt_tokens: int, completion_tokens: int) -> Lease:
        """Reserve a request's worst case (estimated prompt tokens plus its completion limit), or refuse it.

        A request that could never fit the caller's tokens-per-minute budget is a
        400 (waiting would not help); one that does not fit now is a 429 whose
        `Retry-After` says when it will.
        """
        self._check_concurrency(caller)
        worst = prompt_tokens + completion_tokens
        if self.tpm:
            if worst > self.tpm and not completion_tokens:  # nothing generated: its inputs alone (embeddings)
                raise InvalidRequestError(
                    f"This request's inputs are about {prompt_tokens} tokens, more than your limit of {self.tpm} "
                    "tokens per minute. Send fewer or shorter inputs per request.",
                    param="input",
                    code="request_too_large",
                )
            if worst > self.tpm:
                raise InvalidRequestError(
                    f"This request may use {worst} tokens (about {prompt_tokens} of prompt and up to "
                    f"{completion_tokens} of completion: n x max_tokens, an omitted max_tokens counting as the rest "
                    f"of the context), more than your limit of {self.tpm} tokens per minute. Set max_tokens lower.",
                    param="max_tokens",
                    code="request_too_large",
                )
            tokens = self._bucket(self._tokens, caller, self.tpm)
            wait = tokens.wait_for(worst)
            if wait > 0:
                self._refuse(f"tokens per minute (this request reserves {worst} tokens)", wait)
            tokens.tokens -= worst
        self._active[caller] = self._active.get(caller, 0) + 1
        return Lease(self, caller, worst)

    def _check_concurrency(self, caller: str) -> None:
        if self.max_concurrent and self._active.get(caller, 0) >= self.max_concurrent:
            raise RateLimitError(
                f"Rate limit reached for concurrent requests: {self.max_concurrent} of yours are in progress. "
                "Retry when one ends.",
                code="rate_limit_exceeded",
                headers={"Retry-After": "1"},
            )

    def _settle(self, lease: Lease, used: int | None) -> None:
        left = self._active.get(lease.caller, 0) - 1
        if left > 0:
            self._active[lease.caller] = left
        else:
            self._active.pop(lease.caller, None)
        if self.tpm and used is not None:
            # The bucket may go below zero when the prompt was longer than estimated.
            self._bucket(self._tokens, lease.caller, self.tpm).tokens += lease.reserved - used

    def in_progress(self, caller: str) -> int:
        return self._active.get(caller, 0)

    @staticmethod
    def _refuse(what: str, wait_s: float) -> None:
        retry = max(1, math.ceil(wait_s))
        raise RateLimitError(
            f"Rate limit reached for {what}. Retry after {retry}s.",
            code="rate_limit_exceeded",
            headers={"Retry-After": str(retry)},
        )
