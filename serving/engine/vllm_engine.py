"""The vLLM engine: the only module in the project that imports vLLM.

It wraps `AsyncLLM` (the engine core runs in its own processes, started and
stopped here) and speaks the contract of `serving.engine.base`. Chat templating
and tokenization happen here too, with the model's own tokenizer, so the
context-length check runs before a request reaches the scheduler.

Tracing (on in the process before the engine starts: serving/observability/tracing.py):
vLLM gets the OTLP endpoint (`otlp_traces_endpoint`) and each request's W3C
headers (`trace_headers`), so its own `llm_request` span, with its queue,
prefill and decode latencies as attributes, joins the request's trace; from
the same request's timestamps (`RequestOutput.metrics`, the engine core's
monotonic clock) the phases become spans of their own (`engine.queue`,
`engine.prefill`, `engine.decode`), which a trace viewer draws on its timeline.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import gc
import logging
import os
import re
import time
import uuid
from typing import Any, AsyncIterator

from serving.engine.adapters import AdapterCache, AdapterCatalog, InvalidAdapterError, acquire, adapter_stats
from serving.engine.base import (
    ChoiceDelta,
    EmbedOutput,
    EmbedRequest,
    Engine,
    EngineInfo,
    EngineOutput,
    EngineRequest,
    GenerationParams,
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

logger = logging.getLogger(__name__)


def engine_arg_names() -> set[str]:
    """Names `engine_args` may use in a config: the fields of vLLM's AsyncEngineArgs.

    Read from vLLM's source (`vllm/engine/arg_utils.py`), not imported: importing
    it loads torch and the rest of vLLM, 10 s here, and the app's build runs this.
    Under load the build runs at Ray's worker niceness (15) beside busy replicas:
    measured, a redeploy during 16 streams on 2 cores spent 90 s building before
    Serve began replacing the replica. Where the source cannot be read (a
    layout we do not know), the import gives the answer.
    """
    names = _dataclass_fields_in_source("vllm.engine.arg_utils", ("EngineArgs", "AsyncEngineArgs"))
    if names:
        return names
    from vllm.engine.arg_utils import AsyncEngineArgs

    return {f.name for f in dataclasses.fields(AsyncEngineArgs)}


def _dataclass_fields_in_source(module: str, classes: tuple[str, ...]) -> set[str]:
    """The annotated fields of `classes` (their bodies, in this order of inheritance) in `module`'s source."""
    import ast
    import importlib.util
    from pathlib import Path

    top = importlib.util.find_spec(module.split(".")[0])  # finds the package without running it
    if top is None or not top.submodule_search_locations:
        raise ImportError(f"{module} is not installed")
    path = Path(next(iter(top.submodule_search_locations)), *module.split(".")[1:]).with_suffix(".py")
    try:
        tree = ast.parse(path.read_text())
    except (OSError, SyntaxError):
        return set()
    bodies = {node.name: node.body for node in tree.body if isinstance(node, ast.ClassDef) and node.name in classes}
    if set(bodies) != set(classes):
        return set()
    names: set[str] = set()
    for cls in classes:
        for stmt in bodies[cls]:
            if (
                isinstance(stmt, ast.AnnAssign)
                and isinstance(stmt.target, ast.Name)
                and "ClassVar" not in ast.unparse(stmt.annotation)
            ):
                names.add(stmt.target.id)
    return names


# vLLM metric sample -> our stats key (summed over label sets, e.g. engine index).
_VLLM_STATS = {
    "vllm:num_requests_running": "running",
    "vllm:num_requests_waiting": "waiting",
    "vllm:kv_cache_usage_perc": "kv_cache_usage",
    "vllm:prefix_cache_queries_total": "prefix_cache_queries",
    "vllm:prefix_cache_hits_total": "prefix_cache_hits",
    "vllm:prompt_tokens_total": "prompt_tokens",
    "vllm:generation_tokens_total": "generation_tokens",
}


def _config_objects(args_cls: Any, args: dict[str, Any]) -> dict[str, Any]:
    """Turn YAML mappings into vLLM's config dataclasses (e.g. structured_outputs_config).

    vLLM's CLI parses these from JSON; AsyncEngineArgs itself only converts some.
    """
    out = dict(args)
    for f in dataclasses.fields(args_cls):
        value = out.get(f.name)
        if not isinstance(value, dict):
            continue
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default) and not isinstance(default, type):
            config_cls: Any = type(default)
            out[f.name] = config_cls(**value)
    return out


# Prompts up to this many characters are templated and tokenized on the event loop,
# longer ones on the prompt thread. The thread's hop costs every request a trip through
# a busy loop and back, plus the GIL handed between threads; inline, the tiny model's
# chat template and tokenizer took 0.09 ms for 150 characters, 0.33 ms for 1,000 and
# 1.0 ms for 4,096 (measured here), a gap no concurrent stream notices. Bench at 64
# streams, one run each: TTFT p50 120 / 148 ms with the hop, 111 / 98 ms without
# (loadtests/PERFORMANCE.md, "Per-request hops on the direct path").
INLINE_PROMPT_CHARS = 4096


def _prompt_chars(request: EngineRequest) -> int:
    if request.messages is not None:
        chars = sum(len(str(m.get("content") or "")) + len(str(m.get("tool_calls") or "")) for m in request.messages)
        return chars + (len(str(request.tools)) if request.tools else 0)
    if request.prompt_token_ids is not None:
        return len(request.prompt_token_ids)
    return len(request.prompt or "")


def tool_parser_names() -> set[str]:
    """The names vLLM's tool-call parsers are registered under (`vllm/tool_parsers/__init__.py`),
    read from the source as `engine_arg_names` does, or from the module where it cannot be."""
    import ast
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("vllm")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("vllm is not installed")
    path = Path(next(iter(spec.submodule_search_locations)), "tool_parsers", "__init__.py")
    try:
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "_TOOL_PARSERS_TO_REGISTER" for t in node.targets
            ):
                return set(ast.literal_eval(node.value))
    except (OSError, SyntaxError, ValueError):
        pass
    from vllm.tool_parsers import ToolParserManager

    return set(ToolParserManager.lazy_parsers) | set(ToolParserManager.tool_parsers)


class _ToolCallReader:
    """One request's tool calls found by vLLM's parser for the model (one parser per choice: they keep state)."""

    def __init__(self, parser_cls: Any, tokenizer: Any, model_config: Any, served_name: str, tools: list[dict]) -> None:
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

        self._parser_cls = parser_cls
        self._tokenizer = tokenizer
        self._model_config = model_config
        # What vLLM's parsers read from a request: its tools (and, for some, skip_special_tokens).
        self.request = ChatCompletionRequest(
            model=served_name, messages=[{"role": "user", "content": ""}], tools=tools, tool_choice="auto"
        )
        self._parsers: dict[int, Any] = {}
        self.skip_special_tokens = getattr(self._new().adjust_request(self.request), "skip_special_tokens", True)

    def _new(self) -> Any:
        return self._parser_cls(self._tokenizer, self.request.tools, model_config=self._model_config)

    def split(self, output: Any, prompt_ids: list[int]) -> tuple[str, list[ToolCallDelta] | None]:
        parser = self._parsers.get(output.index)
        if parser is None:
            parser = self._parsers[output.index] = self._new()
        delta = parser.parse_delta(
            delta_text=output.text,
            delta_token_ids=list(output.token_ids),
            request=self.request,
            prompt_token_ids=prompt_ids,
            finished=output.finish_reason is not None,
        )
        if delta is None:
            return "", None
        calls = [
            ToolCallDelta(
                index=t.index,
                id=t.id,
                name=t.function.name if t.function is not None else None,
                arguments=(t.function.arguments or "") if t.function is not None else "",
            )
            for t in delta.tool_calls
        ]
        return delta.content or "", calls or None


def _trace_phases(trace: dict[str, str], metrics: Any, prompt_tokens: int) -> None:
    """A finished request's queue, prefill and decode as spans, from vLLM's timestamps (the engine core's
    `time.monotonic()`, the same clock in every process of the host: shifted here to wall-clock time)."""
    shift = time.time_ns() - time.monotonic_ns()

    def wall(ts: float) -> int | None:
        return int(ts * 1e9) + shift if ts else None

    queued = wall(metrics.queued_ts)
    if queued is None:
        return
    tracing.record_engine_phases(
        trace,
        queued,
        wall(metrics.scheduled_ts),
        wall(metrics.first_token_ts),
        wall(metrics.last_token_ts),
        prompt_tokens,
        metrics.num_generation_tokens,
    )


class VLLMEngine(Engine):
    def __init__(
        self,
        model_path: str,
        served_model_name: str,
        engine_args: dict[str, Any],
        tool_parser: str | None = None,
        task: str = "generate",
        adapters: AdapterCatalog | None = None,
    ):
        self._catalog = adapters  # models[].lora: vLLM's multi-LoRA, adapters loaded on first use
        self._adapters: AdapterCache[Any] | None = None
        self._lora_ids: dict[str, int] = {}  # vLLM's adapter ids (from 1), one per name for the engine's life
        self._task = task  # "embed": vLLM's pooling runner (models[].task)
        self._model_path = model_path
        self._served_name = served_model_name
        self._engine_args = dict(engine_args)
        self._tool_parser = tool_parser
        self._parser_cls: Any = None
        self._llm: Any = None  # vllm's AsyncLLM, once started
        self._tokenizer: Any = None
        self._max_model_len = 0
        self._collectors: list[Any] | None = None
        self._traced = False  # vLLM traces: requests carry their trace headers to it
        # Templating and tokenizing a long prompt run here, not on the event loop that
        # streams every token (a 1 MB body took 0.6-1.1 s): one thread, as a tokenizer is
        # not safe to share between threads, and a queue of prompts waits there, not the
        # loop. Short prompts (INLINE_PROMPT_CHARS) stay on the loop: see there.
        self._prepare = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="prompt-prep")

    async def start(self) -> EngineInfo:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        args = {"enable_log_requests": False, **self._engine_args}
        args["model"] = self._model_path
        args["served_model_name"] = [self._served_name]
        if self._task == "embed":
            args.setdefault("runner", "pooling")
        traced = tracing.config()
        # (An embedding model's requests carry no trace headers: vLLM would send each as a trace of its own.)
        if traced is not None and self._task == "generate" and args.get("otlp_traces_endpoint") is None:
            args["otlp_traces_endpoint"] = tracing.otlp_endpoint(traced)
            # For the exporters vLLM makes itself (its engine-core process inherits these): the protocol it
            # reads from the environment, and our service name on the spans it sends.
            os.environ.setdefault("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", traced.protocol)
            os.environ.setdefault("OTEL_SERVICE_NAME", traced.service_name)
        self._traced = args.get("otlp_traces_endpoint") is not None
        if self._catalog is not None:
            lora = self._catalog.lora
            # vLLM's own CPU cache of adapters is as large as ours, so it evicts none by itself:
            # ours unloads (remove_lora) what it evicts, and its counts are the engine's.
            args.update(
                enable_lora=True, max_loras=lora.max_loras, max_cpu_loras=lora.max_loaded, max_lora_rank=lora.max_rank
            )
            self._adapters = AdapterCache(self._catalog, self._add_lora, self._remove_lora)
            from vllm.platforms import current_platform

            if current_platform.is_cpu():
                # Measured here (vLLM 0.32, punica_cpu): with LoRA enabled on a bfloat16 model the
                # worker died at the first step (SIGILL, then no exit code), and vLLM's lora_dtype
                # takes no float32. float32 worked.
                dtype = str(args.get("dtype", "auto"))
                if dtype == "auto":
                    args["dtype"] = "float32"
                elif dtype not in ("float32", "float"):
                    raise ValueError(
                        f"model '{self._served_name}': LoRA adapters on CPU need dtype float32 (vLLM 0.32's CPU "
                        f"LoRA kernels crashed the worker with {dtype}): set engine_args.dtype: float32"
                    )
        engine_args = AsyncEngineArgs(**_config_objects(AsyncEngineArgs, args))
        self._llm = AsyncLLM.from_engine_args(engine_args)
        self._tokenizer = self._llm.get_tokenizer()
        self._max_model_len = self._llm.model_config.max_model_len
        # Code points -> tokens: a vocabulary string has one character per byte (byte-level
        # BPE) or per code point (SentencePiece), so prompt characters / the longest token
        # bound its tokens from below; x2 leaves room for normalization merging characters.
        longest = max((len(t) for t in self._tokenizer.get_vocab()), default=1)
        if self._tool_parser is not None:
            from vllm.parser import ParserManager

            self._parser_cls = ParserManager.get_parser(
                tool_parser_name=self._tool_parser,
                enable_auto_tools=True,
                model_name=self._served_name,
                tokenizer=self._tokenizer,
            )
        embedding_size = None
        if self._task == "embed":
            if self._llm.model_config.runner_type != "pooling":
                raise ValueError(f"model '{self._served_name}' (task: embed) did not start on vLLM's pooling runner")
            embedding_size = int(self._llm.model_config.embedding_size)
            await self._embed_ids([[self._tokenizer.bos_token_id or 0]], None, "warm-up")
        else:
            await self._warm_up()
        # As vLLM's engine core does: move the start-up heap (torch, transformers,
        # Ray) out of the cyclic GC, whose full passes over it stalled streams.
        gc.collect()
        gc.freeze()
        return EngineInfo(
            max_model_len=self._max_model_len,
            max_token_chars=2 * longest,
            tool_parser=self._tool_parser,
            task=self._task,
            embedding_size=embedding_size,
        )

    async def _warm_up(self) -> None:
        """One tiny request down the logprobs path before serving: its first use paused the
        engine ~0.1-0.15 s (measured with loadtests/hostile.py), stalling every stream then."""
        from vllm.sampling_params import RequestOutputKind, SamplingParams

        params = SamplingParams(
            n=2, max_tokens=2, logprobs=20, flat_logprobs=True, ignore_eos=True, output_kind=RequestOutputKind.DELTA
        )
        bos = self._tokenizer.bos_token_id
        # Traced, the warm-up says it belongs to a trace that is not sampled: vLLM would otherwise send it as one.
        unsampled = {"traceparent": f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-00"} if self._traced else None
        prompt = {"prompt_token_ids": [bos if bos is not None else 0]}
        async for _ in self._llm.generate(prompt, params, "warm-up", trace_headers=unsampled):
            pass

    # -- adapters ---------------------------------------------------------------

    async def _add_lora(self, name: str, folder: Any) -> Any:
        """vLLM loads the checked folder (serving/engine/adapters.py: its failure leaves the engine serving)."""
        from vllm.lora.request import LoRARequest

        lora_id = self._lora_ids.setdefault(name, len(self._lora_ids) + 1)
        request = LoRARequest(lora_name=name, lora_int_id=lora_id, lora_path=str(folder))
        try:
            await self._llm.add_lora(request)
        except Exception as exc:  # "Call to add_lora method failed: <the worker's error>"
            if self._llm.errored:
                logger.error("the engine died loading adapter %s: %s", name, exc)
                raise EngineUnavailableError("the engine died loading an adapter") from None
            # vLLM's message names the folder: no server paths in a client's error
            why = str(exc).removeprefix("Call to add_lora method failed: ").replace(str(folder), "<adapter>")
            inner = re.fullmatch(r"Worker failed with error '(.*)', please check the stack trace above.*", why, re.S)
            why = inner.group(1) if inner else why
            raise InvalidAdapterError(self._catalog.model_id(name) if self._catalog else name, why[:500]) from None
        return request

    async def _remove_lora(self, request: Any) -> None:
        await self._llm.remove_lora(request.lora_int_id)

    def adapters(self) -> list[str]:
        return self._adapters.loaded() if self._adapters is not None else []

    # -- requests ---------------------------------------------------------------

    async def tokenize(self, request: EngineRequest, add_special_tokens: bool = True) -> list[int]:
        if self._tokenizer is None:
            raise EngineUnavailableError("the engine has not started")
        if request.prompt is not None and not add_special_tokens:
            prompt = request.prompt
            return list(await asyncio.to_thread(self._tokenizer.encode, prompt, add_special_tokens=False))
        if _prompt_chars(request) <= INLINE_PROMPT_CHARS:
            return self._prompt_ids(request)
        return await asyncio.get_running_loop().run_in_executor(self._prepare, self._prompt_ids, request)

    async def detokenize(self, token_ids: list[int]) -> str:
        if self._tokenizer is None:
            raise EngineUnavailableError("the engine has not started")
        vocab = len(self._tokenizer)
        if any(t < 0 or t >= vocab for t in token_ids):
            raise InvalidRequestError(f"token ids must be in [0, {vocab})", param="tokens")
        text: str = await asyncio.get_running_loop().run_in_executor(self._prepare, self._tokenizer.decode, token_ids)
        return text

    def _prompt_ids(self, request: EngineRequest) -> list[int]:
        if request.messages is not None:
            try:
                ids = self._tokenizer.apply_chat_template(
                    request.messages, tools=request.tools, tokenize=True, add_generation_prompt=True
                )
            except Exception as exc:  # a template may reject a message order
                raise InvalidRequestError(f"cannot apply the chat template: {exc}", param="messages") from None
            if isinstance(ids, dict) or hasattr(ids, "input_ids"):
                ids = ids["input_ids"]
            return list(ids)
        if request.prompt_token_ids is not None:
            vocab = len(self._tokenizer)
            if any(t < 0 or t >= vocab for t in request.prompt_token_ids):
                raise InvalidRequestError("prompt contains token ids outside the vocabulary", param="prompt")
            return list(request.prompt_token_ids)
        try:
            return self._tokenizer.encode(request.prompt or "", add_special_tokens=True)
        except (TypeError, ValueError, UnicodeError) as exc:  # e.g. lone surrogates
            raise InvalidRequestError(f"cannot tokenize the prompt: {exc}", param="prompt") from None

    def _sampling_params(self, p: GenerationParams, max_tokens: int, skip_special_tokens: bool = True):
        from vllm.sampling_params import RequestOutputKind, SamplingParams, StructuredOutputsParams

        structured = None
        if p.json_schema is not None:
            structured = StructuredOutputsParams(json=p.json_schema)
        elif p.json_object:
            structured = StructuredOutputsParams(json_object=True)
        return SamplingParams(
            n=p.n,
            max_tokens=max_tokens,
            temperature=p.temperature,
            top_p=p.top_p,
            top_k=p.top_k if p.top_k is not None else 0,
            stop=p.stop,
            seed=p.seed,
            presence_penalty=p.presence_penalty,
            frequency_penalty=p.frequency_penalty,
            logprobs=p.logprobs,
            # vLLM keeps a request's logprobs for its whole life: as flat lists, not a
            # dict of Logprob objects per position, which the cyclic GC walks again and again.
            flat_logprobs=p.logprobs is not None,
            ignore_eos=p.ignore_eos,
            min_tokens=p.min_tokens,
            structured_outputs=structured,
            skip_special_tokens=skip_special_tokens,
            output_kind=RequestOutputKind.DELTA,
        )

    async def generate(self, request: EngineRequest) -> AsyncIterator[EngineOutput]:
        from vllm.v1.engine.exceptions import EngineDeadError

        if self._llm is None or self._llm.errored:
            raise EngineUnavailableError("the engine is not running")
        if self._task == "embed":
            raise InvalidRequestError(
                f"The model '{self._served_name}' is an embedding model: use /v1/embeddings.",
                param="model",
                code="model_not_generative",
            )
        if _prompt_chars(request) <= INLINE_PROMPT_CHARS:
            ids = self._prompt_ids(request)
        else:
            ids = await asyncio.get_running_loop().run_in_executor(self._prepare, self._prompt_ids, request)
        prompt_tokens = len(ids)
        room = self._max_model_len - prompt_tokens
        max_tokens = request.params.max_tokens
        if room <= 0 or (max_tokens is not None and max_tokens > room):
            err = PromptTooLongError(prompt_tokens, max_tokens or 1, self._max_model_len)
            err.param = "messages" if request.messages is not None else "prompt"
            raise err
        from vllm.exceptions import VLLMClientError

        lora = None
        if request.adapter is not None:
            lora = await acquire(self._adapters, request.adapter)
        tools = None
        if request.parse_tool_calls and request.tools and self._parser_cls is not None:
            try:
                tools = _ToolCallReader(
                    self._parser_cls, self._tokenizer, self._llm.model_config, self._served_name, request.tools
                )
            except ValueError as exc:  # vLLM's own check of the tool definitions
                raise InvalidRequestError(f"Invalid tools: {exc}", param="tools") from None
        try:
            sampling = self._sampling_params(
                request.params, max_tokens or room, tools.skip_special_tokens if tools is not None else True
            )
        except (ValueError, VLLMClientError) as exc:
            raise InvalidRequestError(str(exc)) from None
        want_logprobs = request.params.logprobs is not None
        top_k = request.params.logprobs or 0
        trace = request.trace_headers if self._traced else None
        cached = None  # the prompt's prefix-cache hits: vLLM sets them on every output, from the first on
        try:
            stream = self._llm.generate(
                {"prompt_token_ids": ids}, sampling, request.request_id, lora_request=lora, trace_headers=trace
            )
            async for out in stream:
                if cached is None:
                    # With n > 1 each sequence is a request of vLLM's with a count of its own (a later one
                    # may hit its siblings' blocks): the first one's stands for the request, as the contract
                    # wants one value.
                    cached = out.num_cached_tokens
                choices = [
                    ChoiceDelta(
                        index=o.index,
                        text=o.text,
                        num_tokens=len(o.token_ids),
                        finish_reason=o.finish_reason,
                        logprobs=self._logprobs(o, top_k) if want_logprobs else None,
                    )
                    for o in out.outputs
                ]
                if tools is not None:
                    for choice, o in zip(choices, out.outputs, strict=True):
                        choice.text, choice.tool_calls = tools.split(o, ids)
                queue_wait = None
                if out.finished and out.metrics is not None and out.metrics.scheduled_ts:
                    queue_wait = max(0.0, out.metrics.scheduled_ts - out.metrics.queued_ts)
                    if trace is not None and tracing.active():
                        _trace_phases(trace, out.metrics, prompt_tokens)
                yield EngineOutput(
                    prompt_tokens=prompt_tokens, choices=choices, queue_wait_s=queue_wait, cached_tokens=cached
                )
        except EngineDeadError as exc:
            raise EngineUnavailableError(f"the engine died: {exc}") from None
        except (asyncio.CancelledError, GeneratorExit, InvalidRequestError):
            raise
        except (ValueError, VLLMClientError) as exc:
            # vLLM validates sampling parameters and structured-output specs in add_request.
            raise InvalidRequestError(str(exc)) from None
        except Exception as exc:
            logger.exception("request %s failed in the engine", request.request_id)
            raise EngineError(f"the engine failed: {type(exc).__name__}") from None

    async def embed(self, request: EmbedRequest) -> EmbedOutput:
        if self._task != "embed":
            await super().embed(request)  # refuses
        if self._llm is None or self._llm.errored:
            raise EngineUnavailableError("the engine is not running")
        chars = sum(len(x) for x in request.inputs)
        if chars <= INLINE_PROMPT_CHARS:
            ids = self._input_ids(request)
        else:
            ids = await asyncio.get_running_loop().run_in_executor(self._prepare, self._input_ids, request)
        vectors = await self._embed_ids(ids, request.dimensions, request.request_id)
        return EmbedOutput(embeddings=vectors, prompt_tokens=sum(len(x) for x in ids))

    def _input_ids(self, request: EmbedRequest) -> list[list[int]]:
        return embedding_inputs(request, self._encode_input, len(self._tokenizer), self._max_model_len)

    def _encode_input(self, index: int, text: str) -> list[int]:
        try:
            return list(self._tokenizer.encode(text, add_special_tokens=True))
        except (TypeError, ValueError, UnicodeError) as exc:  # e.g. lone surrogates
            raise InvalidRequestError(f"cannot tokenize input {index}: {exc}", param="input") from None

    async def _embed_ids(self, ids: list[list[int]], dimensions: int | None, request_id: str) -> list[list[float]]:
        from vllm.exceptions import VLLMClientError
        from vllm.pooling_params import PoolingParams
        from vllm.v1.engine.exceptions import EngineDeadError

        params = PoolingParams(task="embed", dimensions=dimensions)

        async def one(i: int, prompt: list[int]) -> list[float]:
            last = None
            async for out in self._llm.encode({"prompt_token_ids": prompt}, params, f"{request_id}-{i}"):
                last = out
            if last is None:
                raise EngineError("the engine returned no embedding")
            vector: list[float] = last.outputs.data.tolist()
            return vector

        tasks = [asyncio.ensure_future(one(i, p)) for i, p in enumerate(ids)]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException as exc:
            for task in tasks:  # one failed, or the caller left: abort the others in the engine
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if isinstance(exc, EngineDeadError):
                raise EngineUnavailableError(f"the engine died: {exc}") from None
            if isinstance(exc, (asyncio.CancelledError, EngineError)) or not isinstance(exc, Exception):
                raise
            if isinstance(exc, (ValueError, VLLMClientError)):
                # vLLM checks `dimensions` against the model (Matryoshka or not, the range) in add_request.
                message = str(exc).split(" (parameter=")[0]
                raise InvalidRequestError(message, param="dimensions" if "imension" in message else "input") from None
            logger.exception("request %s failed in the engine", request_id)
            raise EngineError(f"the engine failed: {type(exc).__name__}") from None

    def _logprobs(self, output, top_k: int) -> list[TokenLogprob]:
        result = []
        decode = self._tokenizer.convert_ids_to_tokens
        for token_id, position in zip(output.token_ids, output.logprobs or [], strict=False):
            chosen = position.get(token_id)
            ranked = sorted(position.items(), key=lambda kv: kv[1].rank or 0)
            top = [
                (lp.decoded_token if lp.decoded_token is not None else decode(tid), lp.logprob)
                for tid, lp in ranked
                if lp.rank is not None and lp.rank <= top_k
            ]
            token = chosen.decoded_token if chosen and chosen.decoded_token is not None else decode(token_id)
            result.append(TokenLogprob(token=token, logprob=chosen.logprob if chosen else 0.0, top=top))
        return result

    # -- lifecycle --------------------------------------------------------------

    async def check_health(self) -> None:
        if self._llm is None:
            raise EngineUnavailableError("the engine has not started")
        try:
            await self._llm.check_health()
        except Exception as exc:
            raise EngineUnavailableError(f"the engine is unhealthy: {exc}") from None

    async def stats(self) -> dict[str, float]:
        """The engine's own counters: vLLM's Prometheus metrics in this process, plus its request count."""
        if self._llm is None:
            return {}
        stats = {name: 0.0 for name in _VLLM_STATS.values()}
        # Collect only vLLM's few collectors we export: REGISTRY.collect() walks every
        # histogram in the process and, on the engine loop, stalled streams for ~10 ms.
        for collector in self._stat_collectors():
            for metric in collector.collect():
                for sample in metric.samples:
                    key = _VLLM_STATS.get(sample.name)
                    if key is not None:
                        stats[key] += float(sample.value)
        stats["unfinished_requests"] = float(self._llm.get_num_unfinished_requests())
        if self._adapters is not None:
            stats.update(adapter_stats(self._adapters))
        return stats

    def _stat_collectors(self) -> list[Any]:
        if self._collectors is None:
            from prometheus_client import REGISTRY

            names = getattr(REGISTRY, "_names_to_collectors", {})
            found = {id(c): c for n, c in names.items() if n in _VLLM_STATS}
            self._collectors = list(found.values())
        return self._collectors

    async def shutdown(self) -> None:
        self._prepare.shutdown(wait=False, cancel_futures=True)
        if self._llm is not None:
            llm, self._llm = self._llm, None
            llm.shutdown()
