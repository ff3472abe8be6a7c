"""API keys, per-key rate limits and the body-size limit, applied to every /v1 route.

Keys come from an environment variable and/or a mounted secret file, never from
configs/. Comparison is constant-time against every configured key (no early
exit that would leak which key matched or how far). The key itself never
appears in a log line or an error message: limits are tracked per key *digest*.

Limits are enforced per ingress process: in direct mode that is per replica, so
a key's cluster-wide budget is the configured limit times the replicas it
reaches (SECURITY.md). Buckets refill continuously; a refused request gets 429
with `Retry-After` (seconds until the bucket allows it).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

from serving.config import AuthConfig, ConfigError, LimitsConfig
from serving.errors import AuthenticationError, RateLimitError

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
    def __init__(self, keys: list[bytes]) -> None:
        self._keys = keys

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def identify(self, authorization: str | None) -> str:
        """Return the caller's identity (a digest of its key), or raise 401."""
        if not self._keys:
            return "anonymous"
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise AuthenticationError("Missing API key: send 'Authorization: Bearer <key>'.", code="invalid_api_key")
        presented = token.strip().encode()
        match = False
        for key in self._keys:  # every key is compared: the time does not depend on which matched
            match |= hmac.compare_digest(presented, key)
        if not match:
            raise AuthenticationError("Incorrect API key provided.", code="invalid_api_key")
        return hashlib.sha256(presented).hexdigest()[:16]


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


class RateLimiter:
    """Requests-per-minute and tokens-per-minute buckets per caller."""

    def __init__(self, cfg: LimitsConfig, clock=time.monotonic) -> None:
        self.rpm = cfg.requests_per_minute
        self.tpm = cfg.tokens_per_minute
        self._clock = clock
        self._requests: dict[str, _Bucket] = {}
        self._tokens: dict[str, _Bucket] = {}

    def _bucket(self, table: dict[str, _Bucket], caller: str, capacity: float) -> _Bucket:
        now = self._clock()
        bucket = table.get(caller)
        if bucket is None:
            bucket = table[caller] = _Bucket(capacity, capacity, now)
        bucket.refill(now)
        return bucket

    def admit(self, caller: str) -> None:
        """Take one request from the caller's budget or raise 429."""
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

    def charge_tokens(self, caller: str, tokens: int) -> None:
        """Charge prompt + completion tokens after a request (the bucket may go negative)."""
        if self.tpm and tokens:
            self._bucket(self._tokens, caller, self.tpm).tokens -= tokens

    @staticmethod
    def _refuse(what: str, wait_s: float) -> None:
        retry = max(1, math.ceil(wait_s))
        raise RateLimitError(
            f"Rate limit reached for {what}. Retry after {retry}s.",
            code="rate_limit_exceeded",
            headers={"Retry-After": str(retry)},
        )
