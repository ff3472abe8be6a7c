"""Routing decisions as pure functions: no Ray, so tests can drive them directly.

The Ray Serve routers (`prefix_router.PrefixAwareRouter`, `round_robin.RoundRobinRouter`)
only gather the inputs (the request, the live replicas, their queue lengths)
and hand back what these functions decide.

Prefix-aware policy ("consistent hashing with bounded load"):

1. The key is a hash of the first `prefix_chars` characters of the prompt
   (chat: the messages in order, role and content, so a system prompt leads).
   Requests sharing a long system prompt, or turns of one conversation, get
   the same key; vLLM's prefix cache on the replica that served the key
   before holds those blocks already.
2. Rendezvous hashing ranks the live replicas for the key (highest
   `hash(key, replica)` first). Unseen keys spread evenly, and when a replica
   joins or leaves only the keys it wins or held move: every other key keeps
   its replica, and every router process (one per ingress replica) agrees
   without sharing state.
3. Load gate (consistent hashing with bounded loads): walk that ranking and
   take the first replica that is not hot. A replica is hot when its queue
   exceeds the least-loaded replica's by more than `imbalance_threshold`
   *and* would exceed `load_factor` times the mean queue. A hot key thus
   overflows to its *second* rendezvous choice (which then caches it too)
   rather than to an arbitrary replica; the least-loaded replica is never
   hot, so the walk always ends. The threshold keeps keys sticky at low load
   (a few requests never spread a key); the load factor bounds every
   replica to about `load_factor` x its fair share at high load.
"""

from __future__ import annotations

import hashlib
from typing import Any, Iterable, Mapping, Sequence

DEFAULT_PREFIX_CHARS = 512
DEFAULT_IMBALANCE_THRESHOLD = 2
DEFAULT_LOAD_FACTOR = 1.5


def _role_and_text(message: Any) -> tuple[str, str]:
    if isinstance(message, Mapping):
        role, content = message.get("role", ""), message.get("content", "")
    else:
        role = getattr(message, "role", "")
        content = message.text() if hasattr(message, "text") else getattr(message, "content", "")
    if isinstance(content, list):  # content parts
        content = "".join((p.get("text", "") if isinstance(p, Mapping) else getattr(p, "text", "")) for p in content)
    return str(role or ""), str(content or "")


def request_text(request: Any, limit: int = DEFAULT_PREFIX_CHARS) -> str | None:
    """The first `limit` characters of a request's prompt, or None if it has none.

    Accepts our protocol objects (ChatCompletionRequest / CompletionRequest) or
    plain dicts with `messages` / `prompt`.
    """
    get = request.get if isinstance(request, Mapping) else lambda k: getattr(request, k, None)
    messages = get("messages")
    if messages is not None:
        parts: list[str] = []
        size = 0
        for m in messages:
            role, text = _role_and_text(m)
            piece = f"{role}\n{text}\n"
            parts.append(piece)
            size += len(piece)
            if size >= limit:
                break
        return "".join(parts)[:limit]
    prompt = get("prompt")
    if prompt is None:
        return None
    if isinstance(prompt, str):
        return prompt[:limit]
    if isinstance(prompt, list) and prompt:
        if isinstance(prompt[0], str):
            return prompt[0][:limit]
        # Token ids: a few characters each; `limit // 4` ids cover a similar prefix.
        return " ".join(str(t) for t in prompt[: max(1, limit // 4)])
    return None


def _h64(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def prefix_key(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def rendezvous_order(key: bytes, replica_ids: Iterable[str]) -> list[str]:
    """The replicas ranked for `key`, best first (highest random weight)."""
    return sorted(replica_ids, key=lambda rid: (_h64(key + rid.encode()), rid), reverse=True)


def bounded_load_choice(
    ranked: Sequence[str],
    loads: Mapping[str, float | None],
    threshold: int,
    load_factor: float = DEFAULT_LOAD_FACTOR,
) -> list[str]:
    """The first replica of `ranked` that is not hot, then the rest by load (a full preference order).

    Hot: `load - min_load > threshold` and `load + 1 > load_factor * (total + 1) / n`.
    Unknown loads (None/missing) count as 0.
    """

    def load(rid: str) -> float:
        value = loads.get(rid)
        return 0 if value is None else value

    current = [load(r) for r in ranked]
    floor = min(current)
    bound = load_factor * (sum(current) + 1) / len(current)
    chosen = next(r for r, q in zip(ranked, current, strict=True) if q - floor <= threshold or q + 1 <= bound)
    position = {r: i for i, r in enumerate(ranked)}
    rest = sorted((r for r in ranked if r != chosen), key=lambda r: (load(r), position[r]))
    return [chosen, *rest]


class PrefixAwarePolicy:
    def __init__(
        self,
        prefix_chars: int = DEFAULT_PREFIX_CHARS,
        imbalance_threshold: int = DEFAULT_IMBALANCE_THRESHOLD,
        load_factor: float = DEFAULT_LOAD_FACTOR,
    ) -> None:
        if prefix_chars < 1 or imbalance_threshold < 0 or load_factor < 1:
            raise ValueError("prefix_chars must be >= 1, imbalance_threshold >= 0 and load_factor >= 1")
        self.prefix_chars = prefix_chars
        self.imbalance_threshold = imbalance_threshold
        self.load_factor = load_factor

    def key(self, request: Any) -> bytes | None:
        text = request_text(request, self.prefix_chars)
        return None if text is None else prefix_key(text)

    def order(self, key: bytes, loads: Mapping[str, float | None]) -> list[str]:
        """Replica ids (the keys of `loads`) in preference order for `key`."""
        return bounded_load_choice(rendezvous_order(key, loads), loads, self.imbalance_threshold, self.load_factor)


class RoundRobinPolicy:
    """Each call picks the next replica in a stable (sorted id) order."""

    def __init__(self) -> None:
        self._next = 0

    def order(self, replica_ids: Iterable[str]) -> list[str]:
        ids = sorted(replica_ids)
        i = self._next % len(ids)
        self._next += 1
        return ids[i:] + ids[:i]
