"""A simulated engine: vLLM's serving behaviour without a model, for tests and benchmarks.

`SimulatedEngine` speaks the contract of `serving.engine.base` exactly like the
vLLM engine (validation before the first yield, delta outputs, cancellation,
health) but generates deterministic filler text and spends its time in
`asyncio.sleep`, so dozens of replicas fit on a laptop. What it models:

* Tokens: a deterministic toy tokenizer (runs of up to `chars_per_token`
  non-space characters; chat messages are rendered with the tiny model's
  ChatML template first). Prompt length, the context check and usage come from it.
* Time to first token: `ttft_base_s + prefill_s_per_token * uncached_tokens`.
  Prefills of one replica run one after another (one compute engine), so a
  long uncached prompt delays the requests queued behind it.
* Decode: one token per running sequence per step; a step takes
  `decode_s_per_token * (1 + decode_batch_slowdown * (running_seqs - 1))`,
  so inter-token latency grows with the batch. At most `max_num_seqs` requests
  run; the rest wait (FIFO) and count as `waiting`.
* Prefix cache: like vLLM's automatic prefix caching, full blocks of
  `block_size` prompt tokens are identified by a chained hash (a block's hash
  covers every token before it), kept in an LRU of `prefix_cache_blocks`
  blocks. A request hits the longest run of cached leading blocks (never the
  whole prompt: the last token is always computed). Queries and hits are
  counted in tokens, as vLLM's `prefix_cache_queries`/`prefix_cache_hits`;
  a request's own hits are its outputs' `cached_tokens` (0 with the cache off).
* Faults: `error_rate` of the requests fail with `EngineError` after
  `error_after_tokens` tokens (0: before the first yield, i.e. an HTTP 500);
  after `fail_after_s` seconds the engine is dead (`check_health` and
  `generate` raise `EngineUnavailableError`, running streams fail);
  `startup_delay_s` delays `start()`.
* Text: words drawn from a fixed vocabulary by a generator seeded with the
  request's `seed` (or the prompt when `temperature` is 0), so the same
  request gives the same text; `n`, `stop`, `max_tokens`, `min_tokens`,
  `ignore_eos` (with `eos_probability`) and `logprobs` behave as in vLLM.
* Structured output: with a JSON schema (or `json_object`), the text is the
  schema's smallest instance (`schema_instance`: required properties only, the
  first enum value or `anyOf` branch, `minItems` items), in tokens of
  `chars_per_token` characters, then `stop`. Not a constrained sampler: enough
  to carry forced tool calls and `response_format` through the serving path.
* /tokenize gives each toy token a stable id (a hash), /detokenize a
  placeholder per id: counts are right, texts are not.
* LoRA adapters (`models[].lora`): found, checked and loaded on first use
  as the vLLM engine does (serving/engine/adapters.py: 404 unknown, 400 a bad
  folder), a load taking `lora_load_s` for the request that needs it; the
  text is drawn from a generator seeded with the adapter too, and the prefix
  cache keeps each adapter's blocks apart, as vLLM's does.
* Tool calls (`parse_tool_calls`, its parser is named `simulator`): the model
  "calls" the request's first tool with its parameters' smallest instance, as
  `ToolCallDelta`s (the call's id and name, then its arguments in pieces).

Configure it with `engine: simulator` and these names as `engine_args`
(`SimulatedEngine.from_engine_args` rejects unknown keys).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import random
import re
import time
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, AsyncIterator

from serving.engine.adapters import AdapterCache, AdapterCatalog, acquire, adapter_stats
from serving.engine.base import (
    ChoiceDelta,
    EmbedOutput,
    EmbedRequest,
    Engine,
    EngineInfo,
    EngineOutput,
    EngineRequest,
    TokenLogprob,
    ToolCallDelta,
    embedding_inputs,
)
from serving.errors import (
    EngineError,
    EngineUnavailableError,
    InvalidRequestError,
    PromptTooLongError,
)
from serving.observability import tracing

_WORDS = (
    "the of and to in is that it was for on are as with his they at be this from have or by one had "
    "not but what all were when we there can an your which their said if do will each about how up out "
    "them then she many some so these would other into has more her two like him see time could no make "
    "than first been its who now people my made over did down only way find use may water long little "
    "very after words called just where most know get through back much before go good new write our "
    "used me man too any day same right look think also around another came come work three word must "
    "because does part even place well such here take why things help put years different away again "
    "off went old number great tell men say small every found still between name should home big give "
    "air line set own under read last never us left end along while might next sound below saw something "
    "thought both few those always looked show large often together asked house world going want school"
).split()
VOCAB = [" " + w for w in _WORDS]


@dataclass
class SimulatorConfig:
    """The simulator's knobs: the keys `engine_args` may use with `engine: simulator`."""

    max_model_len: int = 4096
    vocab_size: int = 32000  # token ids of a tokenized prompt must lie below this
    chars_per_token: int = 4
    # Timing.
    ttft_base_s: float = 0.005
    prefill_s_per_token: float = 0.0001
    decode_s_per_token: float = 0.01
    decode_batch_slowdown: float = 0.02
    max_num_seqs: int = 256
    # Prefix cache.
    block_size: int = 16
    prefix_cache_blocks: int = 8192  # 0 disables the cache
    # Text.
    eos_probability: float = 0.0  # per token, after min_tokens, unless ignore_eos
    # Faults.
    error_rate: float = 0.0
    error_after_tokens: int = 1
    fail_after_s: float | None = None
    startup_delay_s: float = 0.0
    fault_seed: int = 0
    # Embeddings (a model with `task: embed`): vector length; any leading `dimensions` may be asked for.
    embedding_size: int = 64
    # LoRA adapters: the time a load takes (the request that needs an adapter not loaded waits for it).
    lora_load_s: float = 0.05

    def __post_init__(self) -> None:
        positive = ("max_model_len", "vocab_size", "chars_per_token", "max_num_seqs", "block_size", "embedding_size")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"simulator engine_args.{name} must be an integer >= 1, got {value!r}")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in positive or value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"simulator engine_args.{f.name} must be a number >= 0, got {value!r}")
        for name in ("error_rate", "eos_probability"):
            if getattr(self, name) > 1:
                raise ValueError(f"simulator engine_args.{name} must lie in [0, 1]")


_TOKEN_RE_CACHE: dict[int, re.Pattern] = {}


def tokenize(text: str, chars_per_token: int = 4) -> list[str]:
    """The simulator's tokenizer: runs of up to `chars_per_token` non-space characters.

    A long text is cut at whitespace into pieces: `re` holds the GIL for a whole
    call, so one call over a 1 MB prompt in a worker thread stalled the event loop.
    """
    pattern = _TOKEN_RE_CACHE.get(chars_per_token)
    if pattern is None:
        pattern = _TOKEN_RE_CACHE[chars_per_token] = re.compile(rf"\S{{1,{chars_per_token}}}")
    if len(text) <= _TOKENIZE_PIECE:
        return pattern.findall(text)
    tokens: list[str] = []
    start = 0
    while start < len(text):
        end = start + _TOKENIZE_PIECE
        if end < len(text):
            cut = _SPACE_RE.search(text, end)  # tokens never span whitespace
            end = cut.start() if cut else len(text)
        tokens += pattern.findall(text, start, end)
        start = end
    return tokens


_TOKENIZE_PIECE = 32_768
_SPACE_RE = re.compile(r"\s")


def _digest(tokens: list) -> str:
    """blake2b of repr(tokens), in pieces (the same value; repr of a huge list holds the GIL at once)."""
    h = hashlib.blake2b(digest_size=8)
    h.update(b"[")
    for i in range(0, len(tokens), 8192):
        if i:
            h.update(b", ")
        h.update(", ".join(map(repr, tokens[i : i + 8192])).encode())
    h.update(b"]")
    return h.hexdigest()


PREPARE_INLINE_CHARS = 16_384


def _prompt_size(request: EngineRequest) -> int:
    if request.messages is not None:
        return sum(len(m["content"]) for m in request.messages)
    if request.prompt_token_ids is not None:
        return len(request.prompt_token_ids)
    return len(request.prompt or "")


def _script(request: EngineRequest) -> tuple[str | None, str | None]:
    """(scripted text, the tool it calls) for structured output or a simulated tool call; (None, None) otherwise."""
    p = request.params
    if request.parse_tool_calls and request.tools:
        function = request.tools[0]["function"]
        return json.dumps(schema_instance(function.get("parameters") or {})), function["name"]
    if p.json_schema is not None:
        return json.dumps(schema_instance(p.json_schema), separators=(",", ":")), None
    if p.json_object:
        return "{}", None
    return None, None


def render_chat(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> str:
    """The tiny model's ChatML template, with the generation prompt (tools and calls as JSON lines)."""
    parts = [f"<|im_start|>system\n<tools>{json.dumps(tools)}</tools><|im_end|>\n"] if tools else []
    for m in messages:
        calls = "".join(f"\n<tool_call>{json.dumps(c['function'])}</tool_call>" for c in m.get("tool_calls") or ())
        parts.append(f"<|im_start|>{m['role']}\n{m['content']}{calls}<|im_end|>\n")
    parts.append("<|im_start|>assistant\n")
    return "".join(parts)


def schema_instance(schema: Any, depth: int = 0) -> Any:
    """The smallest JSON value `schema` accepts, as far as a simulator needs (no $ref, no patterns)."""
    if not isinstance(schema, dict) or depth > 32:
        return None
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if schema.get(key):
            return schema_instance(schema[key][0], depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = kind[0] if kind else None
    if kind == "object" or (kind is None and "properties" in schema):
        props = schema.get("properties") or {}
        return {k: schema_instance(props.get(k, {}), depth + 1) for k in schema.get("required") or ()}
    if kind == "array":  # sizes capped: they come from the client's schema, and this runs on the loop
        items = min(int(schema.get("minItems", 0)), 8)
        return [schema_instance(schema.get("items", {}), depth + 1) for _ in range(items)]
    if kind == "string":
        return "s" * min(int(schema.get("minLength", 3)), 64)
    if kind == "integer":
        return int(schema.get("minimum", 0))
    if kind == "number":
        return float(schema.get("minimum", 0))
    if kind == "boolean":
        return True
    return None


def block_hashes(tokens: list, block_size: int) -> list[int]:
    """Chained hashes of the full blocks of `tokens` (a block's hash covers its whole prefix)."""
    hashes = []
    h = 0
    for start in range(0, len(tokens) - block_size + 1, block_size):
        h = hash((h, tuple(tokens[start : start + block_size])))
        hashes.append(h)
    return hashes


class PrefixCache:
    """An LRU of prompt blocks keyed by chained hash, bounded to `capacity` blocks."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._blocks: OrderedDict[int, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._blocks)

    def match(self, hashes: list[int]) -> int:
        """Number of leading blocks that are cached (touching them as recently used)."""
        n = 0
        for h in hashes:
            if h not in self._blocks:
                break
            n += 1
        # Tail blocks first, so the head of a chain is the most recently used
        # and eviction eats chains from their end (as vLLM frees blocks).
        for h in reversed(hashes[:n]):
            self._blocks.move_to_end(h)
        return n

    def insert(self, hashes: list[int]) -> None:
        if self.capacity <= 0:
            return
        blocks = self._blocks
        for h in reversed(hashes):
            if h in blocks:
                blocks.move_to_end(h)
            else:
                blocks[h] = None
        while len(blocks) > self.capacity:
            blocks.popitem(last=False)


class _Choice:
    __slots__ = ("index", "rng", "lp_rng", "text", "emitted", "tokens", "finish_reason")

    def __init__(self, index: int, rng: random.Random) -> None:
        self.index = index
        self.rng = rng
        self.lp_rng = random.Random(index)  # logprobs never change the text
        self.text = ""
        self.emitted = 0
        self.tokens = 0
        self.finish_reason: str | None = None


class SimulatedEngine(Engine):
    """A simulated engine (see the module docstring for the model it follows)."""

    def __init__(
        self, config: SimulatorConfig | None = None, task: str = "generate", adapters: AdapterCatalog | None = None
    ) -> None:
        self.config = config or SimulatorConfig()
        self.task = task  # "embed": answers embed(), refuses generate() (models[].task)
        self._adapters: AdapterCache[str] | None = None
        if adapters is not None:
            self._adapters = AdapterCache(adapters, self._load_adapter, self._unload_adapter)
        self.cache = PrefixCache(self.config.prefix_cache_blocks)
        self._started_at: float | None = None
        self._shut_down = False
        self._slots: asyncio.Semaphore | None = None
        self._prefill_free_at = 0.0
        self._fault_rng = random.Random(self.config.fault_seed)
        self._running = 0
        self._running_seqs = 0
        self._waiting = 0
        self._counters = dict.fromkeys(
            (
                "prefix_cache_queries",
                "prefix_cache_hits",
                "requests",
                "requests_finished",
                "requests_failed",
                "requests_cancelled",
                "prompt_tokens",
                "generation_tokens",
            ),
            0,
        )

    @classmethod
    def from_engine_args(
        cls, engine_args: dict[str, Any], task: str = "generate", adapters: AdapterCatalog | None = None
    ) -> SimulatedEngine:
        known = {f.name for f in dataclasses.fields(SimulatorConfig)}
        for key in engine_args:
            if key not in known:
                raise ValueError(f"unknown simulator engine_args key '{key}' (known: {', '.join(sorted(known))})")
        return cls(SimulatorConfig(**engine_args), task=task, adapters=adapters)

    async def _load_adapter(self, name: str, folder: Any) -> str:
        await asyncio.sleep(self.config.lora_load_s)
        return name

    async def _unload_adapter(self, name: str) -> None:
        return None

    def adapters(self) -> list[str]:
        return self._adapters.loaded() if self._adapters is not None else []

    # -- lifecycle --------------------------------------------------------------

    async def start(self) -> EngineInfo:
        if self.config.startup_delay_s:
            await asyncio.sleep(self.config.startup_delay_s)
        self._started_at = time.monotonic()
        self._shut_down = False
        if self.task == "embed":
            return EngineInfo(
                max_model_len=self.config.max_model_len, task="embed", embedding_size=self.config.embedding_size
            )
        return EngineInfo(max_model_len=self.config.max_model_len, tool_parser="simulator")

    def _dead(self) -> bool:
        if self._shut_down or self._started_at is None:
            return True
        fail_after = self.config.fail_after_s
        return fail_after is not None and time.monotonic() - self._started_at >= fail_after

    async def check_health(self) -> None:
        if self._started_at is None:
            raise EngineUnavailableError("the engine has not started")
        if self._dead():
            raise EngineUnavailableError("the simulated engine is dead")

    async def stats(self) -> dict[str, float]:
        out = {k: float(v) for k, v in self._counters.items()}
        out["running"] = float(self._running)
        out["waiting"] = float(self._waiting)
        out["prefix_cache_blocks_used"] = float(len(self.cache))
        if self._adapters is not None:
            out.update(adapter_stats(self._adapters))
        return out

    async def shutdown(self) -> None:
        self._shut_down = True

    async def tokenize(self, request: EngineRequest, add_special_tokens: bool = True) -> list[int]:
        """The toy tokens as ids (a stable hash of each; token-id prompts as given): their count is the usage's."""
        tokens, _, _ = await asyncio.to_thread(self._prepare, request)
        vocab = self.config.vocab_size
        return [t if isinstance(t, int) else zlib.crc32(t.encode()) % vocab for t in tokens]

    async def detokenize(self, token_ids: list[int]) -> str:
        vocab = self.config.vocab_size
        if any(t < 0 or t >= vocab for t in token_ids):
            raise InvalidRequestError(f"token ids must be in [0, {vocab})", param="tokens")
        return "".join(f"<{t}>" for t in token_ids)  # the hash is not reversible: a placeholder per token

    # -- requests ---------------------------------------------------------------

    def _prompt_tokens(self, request: EngineRequest) -> list:
        if request.messages is not None:
            return tokenize(render_chat(request.messages, request.tools), self.config.chars_per_token)
        if request.prompt_token_ids is not None:
            vocab = self.config.vocab_size
            if any(t < 0 or t >= vocab for t in request.prompt_token_ids):
                raise InvalidRequestError("prompt contains token ids outside the vocabulary", param="prompt")
            return list(request.prompt_token_ids)
        return tokenize(request.prompt or "", self.config.chars_per_token)

    def _prepare(self, request: EngineRequest) -> tuple[list, str, list[int]]:
        """The prompt's tokens, digest and block hashes: run off the event loop, as a real engine tokenizes."""
        tokens = self._prompt_tokens(request)
        digest = _digest(tokens)
        cfg = self.config
        hashes = block_hashes(tokens, cfg.block_size) if cfg.prefix_cache_blocks else []
        return tokens, digest, hashes

    def _choices(self, request: EngineRequest, digest: str) -> list[_Choice]:
        p = request.params
        choices = []
        for i in range(p.n):
            if p.seed is not None:
                rng = random.Random(f"{p.seed}:{digest}:{i}")
            elif p.temperature == 0:
                rng = random.Random(f"greedy:{digest}")
            else:
                rng = random.Random()
            choices.append(_Choice(i, rng))
        return choices

    async def embed(self, request: EmbedRequest) -> EmbedOutput:
        """Unit vectors drawn from each input's tokens (the same input, the same vector), after the
        prefill time of all of them."""
        if self.task != "embed":
            return await super().embed(request)
        cfg = self.config
        size = cfg.embedding_size
        if request.dimensions is not None and not 1 <= request.dimensions <= size:
            raise InvalidRequestError(
                f"dimensions must lie in [1, {size}] for this model, got {request.dimensions}", param="dimensions"
            )
        token_lists = embedding_inputs(
            request, lambda _, text: tokenize(text, cfg.chars_per_token), cfg.vocab_size, cfg.max_model_len
        )
        total = sum(len(t) for t in token_lists)
        if self._dead():
            raise EngineUnavailableError("the simulated engine is not running")
        self._counters["requests"] += 1
        self._counters["prompt_tokens"] += total
        await asyncio.sleep(cfg.ttft_base_s + cfg.prefill_s_per_token * total)
        keep = request.dimensions or size
        vectors = []
        for tokens in token_lists:
            raw = hashlib.shake_256(_digest(tokens).encode()).digest(4 * size)
            values = [int.from_bytes(raw[j : j + 4], "little") / 2**31 - 1.0 for j in range(0, 4 * keep, 4)]
            norm = sum(v * v for v in values) ** 0.5 or 1.0
            vectors.append([v / norm for v in values])
        self._counters["requests_finished"] += 1
        return EmbedOutput(embeddings=vectors, prompt_tokens=total)

    async def generate(self, request: EngineRequest) -> AsyncIterator[EngineOutput]:
        cfg = self.config
        p = request.params
        if self.task == "embed":
            raise InvalidRequestError(
                "This model is an embedding model: use /v1/embeddings.", param="model", code="model_not_generative"
            )
        # -- validation, before the first yield ----------------------------------
        # Small prompts inline: a thread hop costs more than they do.
        if _prompt_size(request) < PREPARE_INLINE_CHARS:
            tokens, digest, hashes = self._prepare(request)
        else:
            tokens, digest, hashes = await asyncio.to_thread(self._prepare, request)
        prompt_tokens = len(tokens)
        room = cfg.max_model_len - prompt_tokens
        if room <= 0 or (p.max_tokens is not None and p.max_tokens > room):
            raise PromptTooLongError(prompt_tokens, p.max_tokens or 1, cfg.max_model_len)
        if self._dead():
            raise EngineUnavailableError("the simulated engine is not running")
        if request.adapter is not None:
            await acquire(self._adapters, request.adapter)
            # Each adapter its own text and its own cached blocks (vLLM keys its prefix cache by adapter).
            digest = f"{request.adapter}:{digest}"
            hashes = [hash((request.adapter, h)) for h in hashes]
        max_tokens = p.max_tokens or room
        fail_at = None
        if cfg.error_rate and self._fault_rng.random() < cfg.error_rate:
            fail_at = cfg.error_after_tokens
        stops = p.stop or []
        hold = max((len(s) for s in stops), default=1) - 1
        choices = self._choices(request, digest)
        script, calls = _script(request)
        if script is not None:
            stops, hold = [], 0

        counters = self._counters
        counters["requests"] += 1
        counters["prompt_tokens"] += prompt_tokens
        admitted = False
        outcome = "requests_cancelled"
        live = 0
        if self._slots is None:
            self._slots = asyncio.Semaphore(cfg.max_num_seqs)
        # The phases' times, for the request's spans (tracing on): queued, scheduled, first and last token.
        phases: list[int] = [time.time_ns()]
        produced = tokens_out = 0
        try:
            # -- queue for a slot, then prefill ------------------------------------
            self._waiting += 1
            try:
                await self._slots.acquire()
            finally:
                self._waiting -= 1
            admitted = True
            phases.append(time.time_ns())
            self._running += 1
            live = p.n
            self._running_seqs += live
            if fail_at == 0:
                raise EngineError("simulated engine failure")
            cached = await self._prefill(tokens, hashes)
            if self._dead():
                raise EngineUnavailableError("the simulated engine died")

            # -- decode --------------------------------------------------------------
            vocab = VOCAB
            while live:
                step = cfg.decode_s_per_token * (1 + cfg.decode_batch_slowdown * (self._running_seqs - 1))
                # The first token comes with the prefill, like a real engine's first step.
                if produced:
                    await asyncio.sleep(step)
                if self._dead():
                    raise EngineUnavailableError("the simulated engine died")
                if fail_at is not None and produced >= fail_at:
                    raise EngineError("simulated engine failure")
                produced += 1
                deltas = []
                for c in choices:
                    if c.finish_reason is not None:
                        continue
                    if script is None:
                        token = vocab[c.rng.randrange(len(vocab))]
                    else:
                        token = script[len(c.text) : len(c.text) + cfg.chars_per_token]
                    c.tokens += 1
                    c.text += token
                    finish = "stop" if script is not None and len(c.text) >= len(script) else None
                    if stops:
                        window = c.text[-(len(token) + hold) :]
                        base = len(c.text) - len(window)
                        cut = min((base + window.find(s) for s in stops if s in window), default=-1)
                        if cut >= 0:
                            c.text = c.text[:cut]
                            finish = "stop"
                    if finish is None:
                        if c.tokens >= max_tokens:
                            finish = "length"
                        elif (
                            cfg.eos_probability
                            and not p.ignore_eos
                            and c.tokens > p.min_tokens
                            and c.rng.random() < cfg.eos_probability
                        ):
                            finish = "stop"
                    end = len(c.text) if finish else max(c.emitted, len(c.text) - hold)
                    piece = c.text[c.emitted : end]
                    c.emitted = end
                    logprobs = None
                    if p.logprobs is not None:
                        logprobs = [self._logprob(token, c.lp_rng, p.logprobs)]
                    if finish:
                        c.finish_reason = finish
                        live -= 1
                        self._running_seqs -= 1
                    if calls is None:
                        deltas.append(ChoiceDelta(c.index, piece, 1, finish, logprobs))
                    else:  # a simulated tool call: the text is its arguments
                        first = c.tokens == 1
                        call = ToolCallDelta(
                            0, f"call_sim{c.index}" if first else None, calls if first else None, piece
                        )
                        deltas.append(ChoiceDelta(c.index, "", 1, finish, logprobs, [call]))
                counters["generation_tokens"] += len(deltas)
                tokens_out += len(deltas)
                if produced == 1:
                    phases.append(time.time_ns())
                yield EngineOutput(prompt_tokens=prompt_tokens, choices=deltas, cached_tokens=cached)
            outcome = "requests_finished"
        except (EngineError, EngineUnavailableError):
            outcome = "requests_failed"
            raise
        finally:
            counters[outcome] += 1
            if request.trace_headers is not None and tracing.active():
                now = time.time_ns()
                tracing.record_engine_phases(
                    request.trace_headers,
                    phases[0],
                    phases[1] if len(phases) > 1 else None,
                    phases[2] if len(phases) > 2 else None,
                    now if len(phases) > 2 else None,
                    prompt_tokens,
                    tokens_out,
                )
            if admitted:
                self._running -= 1
                self._running_seqs -= live
                self._slots.release()

    async def _prefill(self, tokens: list, hashes: list[int]) -> int:
        """The prompt's prefill, in its turn; returns its tokens found in the prefix cache."""
        cfg = self.config
        # Like vLLM, the last prompt token is always computed: a full-prompt hit gives back a block.
        matchable = hashes[: (len(tokens) - 1) // cfg.block_size]
        hit_blocks = self.cache.match(matchable) if matchable else 0
        hit_tokens = hit_blocks * cfg.block_size
        self._counters["prefix_cache_queries"] += len(tokens)
        self._counters["prefix_cache_hits"] += hit_tokens
        # One compute engine per replica: prefills queue behind each other.
        now = time.monotonic()
        work = cfg.ttft_base_s + cfg.prefill_s_per_token * (len(tokens) - hit_tokens)
        done_at = max(now, self._prefill_free_at) + work
        self._prefill_free_at = done_at
        await asyncio.sleep(done_at - now)
        self.cache.insert(hashes)
        return hit_tokens

    @staticmethod
    def _logprob(token: str, rng: random.Random, top: int) -> TokenLogprob:
        lp = -round(rng.random() * 3, 4)
        alternatives = [(token, lp)] + [
            (VOCAB[rng.randrange(len(VOCAB))], lp - (k + 1) * 0.5) for k in range(max(0, top - 1))
        ]
        return TokenLogprob(token=token, logprob=lp, top=alternatives[:top])
