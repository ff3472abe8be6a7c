"""The LLM-server deployment: one replica owns one engine for one model.

The engine client and, in `direct` ingress mode, the HTTP server that speaks the
whole OpenAI API live on the replica's own uvloop thread (`direct/engine_loop.py`), so a
token goes engine core -> this process -> socket with no Ray hop. Ray Serve
handle calls (the proxy path, and forwarding from another model's replica) are
bridged onto that loop. Serve's health check probes the engine, so a dead engine
gets the replica replaced; `__del__` drains HTTP and stops the engine processes.
The replica records metrics through `RayMetrics`, handed to the API layer.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import time
from typing import Any, AsyncIterator, Awaitable, Callable, Coroutine

import psutil

from serving.api.app import build_api
from serving.api.backend import Generation, ModelBackend, ModelRegistry
from serving.api.openai_serving import OpenAIServing
from serving.api.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    EmbeddingRequest,
    TokenizeRequest,
)
from serving.api.relay import RELAYS
from serving.api.streaming import EncodedBody
from serving.config import AppConfig, IngressConfig, ModelConfig
from serving.deployments import engine_watchdog, node_tuning, serve_stop
from serving.deployments.budget_holder import RayLedger
from serving.deployments.direct.engine_loop import EngineLoop
from serving.deployments.direct.http_server import ConnectionLimits, DirectHTTPServer, own_socket
from serving.deployments.handle_backend import HandleBackend
from serving.deployments.metrics import RayMetrics, export_engine_stats
from serving.deployments.registry import Reporter
from serving.deployments.response_store import RayResponseStore
from serving.engine.base import Engine
from serving.engine.factory import make_engine
from serving.routing.forward import PeerClient, RoutedBackend
from serving.routing.policy import PrefixAwarePolicy
from serving.routing.scheduler import DRAINING, READY, STARTING, UNHEALTHY, Endpoint, EndpointTable, Scheduler

logger = logging.getLogger(__name__)

# A handle hop costs per item (a Ray object each, twice on the proxy path). A stream's
# chunks that arrive within a window of the last item sent go as one item; the window
# is 4 ms for a lone stream, growing by 0.5 ms per stream this replica answers through
# handles, up to 20 ms from 40 streams on. Measured at one stream on the dev stack
# (tiny model, a token every ~2 ms): a fixed 20 ms window made the stream arrive in
# 20 ms bursts (8 arrival times for 65 events); no window (every chunk an item) made it
# arrive one by one but later than the engine made it (the last event at 208 ms against
# 168 ms), the hops being slower than the engine. A replica so sends at most ~250 items a
# second per stream alone, ~2,000 a second up to 40 streams and 50 a stream above.
COALESCE_MIN_S = 0.004
COALESCE_WINDOW_S = 0.02
COALESCE_S_PER_STREAM = 0.0005


class HandleStreams:
    """How many streams this replica answers through handle calls now, and the coalescing window that follows."""

    def __init__(self) -> None:
        self.open = 0

    def window_s(self) -> float:
        return min(COALESCE_WINDOW_S, max(COALESCE_MIN_S, COALESCE_S_PER_STREAM * self.open))


async def coalesce(
    stream: AsyncIterator[bytes], window_s: Callable[[], float], clock: Callable[[], float] = time.monotonic
) -> AsyncIterator[bytes]:
    """Yield the first chunk at once; after each yield, join the chunks arriving within `window_s()` of it."""
    buf: list[bytes] = []
    deadline: float | None = None
    async for chunk in stream:
        now = clock()
        if deadline is not None and now < deadline:
            buf.append(chunk)
            continue
        if buf:
            buf.append(chunk)
            chunk, buf = b"".join(buf), []
        yield chunk
        deadline = now + window_s()
    if buf:
        yield b"".join(buf)


async def _sse_stream(call: Awaitable[Generation]) -> AsyncIterator[bytes]:
    result = await call
    if isinstance(result, (dict, EncodedBody)):
        raise TypeError("a streaming request got a whole body")
    return result


class _Routing:
    """A replica's part in request routing: its own address, its table of the app's replicas, its reporter."""

    def __init__(self, server: LLMServer, app_name: str, replica_id: str, address: str, node: str) -> None:
        self.replica_id = replica_id
        self.address = address
        self.node = node
        self.state = STARTING
        self.kv_usage = 0.0
        self._server = server
        assert server._forward_token is not None
        self.client = PeerClient(server._forward_token, read_timeout_s=server.app_cfg.limits.request_timeout_s + 30)
        self.table = EndpointTable(replica_id, own_load=lambda: server.serving.in_flight)
        self.reporter = Reporter(app_name, self.table, self.endpoint)

    @classmethod
    def start(cls, server: LLMServer, app_name: str, host: str, port: int) -> _Routing:
        import ray
        from ray import serve

        replica_id = str(serve.get_replica_context().replica_id.unique_id)
        ip = ray.util.get_node_ip_address() if host in ("0.0.0.0", "::", "") else host
        address = f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
        return cls(server, app_name, replica_id, address, ray.get_runtime_context().get_node_id())

    def endpoint(self) -> Endpoint:
        serving = getattr(self._server, "serving", None)
        return Endpoint(
            replica_id=self.replica_id,
            model=self._server.cfg.id,
            address=self.address,
            node=self.node,
            state=self.state,
            in_flight=serving.in_flight if serving is not None else 0,
            load=serving.load.mean() if serving is not None else None,
            kv_usage=self.kv_usage,
            placed=self.table.report(),
            shared=self.table.report_shared(),
        )


class LLMServer:
    async def __init__(  # type: ignore[misc]  # Serve awaits an async constructor
        self,
        model: dict[str, Any],
        app: dict[str, Any],
        peers: dict[str, str],
        app_name: str | None = None,
        created: int | None = None,
        forward_token: str | None = None,
    ) -> None:
        self._http: DirectHTTPServer | None = None
        self._forward_token = forward_token
        self._routing: _Routing | None = None
        self._reporter_task: asyncio.Task[None] | None = None
        self.engine: Engine | None = None
        self.cfg = ModelConfig.model_validate(model)
        self.app_cfg = AppConfig.model_validate(app)
        # The deploy's time (the builder's), so /v1/models answers the same on every node
        # and ingress, and through replica restarts.
        self._created = created if created is not None else int(time.time())
        ingress_cfg = self.app_cfg.ingress
        self._loop = EngineLoop(f"engine-{self.cfg.id}")
        self._handle_streams = HandleStreams()
        if ingress_cfg.mode == "direct" and app_name is None:
            from ray import serve

            app_name = serve.get_replica_context().app_name
        self._draining: asyncio.Future[None] | None = None  # the drain, once begun (on the engine loop)
        self._stop_watch: asyncio.Task[None] | None = None
        self._watchdog: subprocess.Popen[bytes] | None = None
        try:
            await self._loop.run(self._start(ingress_cfg, peers, app_name))
        except BaseException:
            await self._shutdown()
            raise
        # The drain begins when Serve begins stopping the replica, not at __del__, which
        # Serve calls only once no handle call is left (serving/deployments/serve_stop.py).
        self._stop_watch = asyncio.get_running_loop().create_task(serve_stop.watch(self._drain_now))
        if self._routing is not None:  # request routing: report to the app's registry, refresh the table
            self._routing.state = READY
            self._reporter_task = asyncio.get_running_loop().create_task(self._routing.reporter.run())

    async def _start(self, ingress_cfg: IngressConfig, peers: dict[str, str], app_name: str | None) -> None:
        """Runs on the engine loop: start the engine, then (direct mode) the HTTP server."""
        self.metrics = RayMetrics()
        # Tracing (off by default) on before the engine starts: vLLM is given its OTLP endpoint then.
        from serving.observability import tracing

        tracing.configure(self.app_cfg.observability.tracing)
        if self.cfg.engine == "vllm":
            # Guarded from before its first process: a replica killed while its engine started
            # used to leave the engine running (a CI run). The mark makes them findable.
            engine_watchdog.mark_owner()
            self._watchdog = engine_watchdog.start()
        self.engine = engine = make_engine(self.cfg)
        info = await engine.start()
        d = self.cfg.deployment
        self.serving = OpenAIServing(
            engine,
            self.cfg.id,
            info.max_model_len,
            # The engine runs max_ongoing_requests at once; the rest wait in the fair queue (by class, then tenant).
            max_in_flight=None if d.max_queued_requests < 0 else d.max_ongoing_requests + d.max_queued_requests,
            max_running=d.max_ongoing_requests,
            timeout_s=self.app_cfg.limits.request_timeout_s,
            log_prompts=self.app_cfg.observability.log_prompts,
            metrics=self.metrics,
            limits=self.app_cfg.limits,
            max_token_chars=info.max_token_chars,
            tool_parser=info.tool_parser,
        )
        if self._watchdog is None and engine_watchdog.engine_processes(psutil.Process()):
            self._watchdog = engine_watchdog.start()  # another engine with processes of its own
        self._background_stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        self._stats_task = loop.create_task(
            export_engine_stats(
                self.metrics,
                self.cfg.id,
                self._engine_stats,
                lambda: self.serving.in_flight,
                self._background_stop,
                host=ingress_cfg.host,  # vLLM's own metrics: the node's port (serving/deployments/engine_metrics.py)
            )
        )
        threshold = self.cfg.colocate_engine_core_at
        placement = node_tuning.EngineCorePlacement() if threshold is not None else None
        if threshold is not None and placement is not None and placement.active:
            self._placement_task = loop.create_task(
                node_tuning.place_engine_core_by_load(
                    placement,
                    lambda: self.serving.in_flight,
                    threshold,
                    self._background_stop,
                )
            )
        if ingress_cfg.deprioritize_ray_control_plane:
            node_tuning.deprioritize_ray_control_plane(direct_ingress=ingress_cfg.mode == "direct")
        if ingress_cfg.mode == "direct":
            extra_sockets = []
            own_port = None
            routed = ingress_cfg.routing == "request" and self._forward_token is not None and app_name is not None
            if routed:
                assert app_name is not None and self._forward_token is not None
                sock = own_socket(ingress_cfg.host, ingress_cfg.peer_port)
                extra_sockets.append(sock)
                own_port = sock.getsockname()[1]
                self._routing = _Routing.start(self, app_name, ingress_cfg.host, own_port)
            backends = [self._backend(model_id, name, app_name) for model_id, name in peers.items()]
            api = build_api(
                ModelRegistry.for_models(backends, self._created, self.app_cfg.models),
                self.app_cfg.auth,
                self.app_cfg.limits,
                self.app_cfg.observability,
                metrics=self.metrics,
                forward_token=self._forward_token if routed else None,
                forward_port=own_port,
                response_store=RayResponseStore(self.app_cfg.responses, app_name),
                budget_ledger=RayLedger(app_name),
            )
            self._http = await DirectHTTPServer.start(
                api,
                ingress_cfg.host,
                ingress_cfg.port,
                self.cfg.deployment.graceful_shutdown_timeout_s,
                ConnectionLimits.from_config(ingress_cfg),
                extra_sockets=extra_sockets,
            )

    async def _engine_stats(self) -> dict[str, float]:
        """The engine's counters, for the metrics; their KV-cache use also goes to the routing registry."""
        assert self.engine is not None
        stats = await self.engine.stats()
        if self._routing is not None:
            self._routing.kv_usage = float(stats.get("kv_cache_usage", 0.0))
        return stats

    def _backend(self, model_id: str, deployment_name: str, app_name: str | None) -> ModelBackend:
        """This replica's engine for its own model, a Serve handle for the others; both placed per request when routed."""
        own = model_id == self.cfg.id
        handle = None if own else HandleBackend(model_id, deployment_name, app_name)
        routing = self._routing
        if routing is None:
            return self.serving if own else handle  # type: ignore[return-value]
        model = next((m for m in self.app_cfg.models if m.id == model_id), self.cfg)
        policy = PrefixAwarePolicy(
            model.router_prefix_chars, model.router_imbalance_threshold, model.router_load_factor
        )
        return RoutedBackend(
            model_id,
            routing.table,
            Scheduler(policy),
            routing.client,
            local=self.serving if own else None,
            fallback=handle,
            relays=RELAYS,
            on_placed=self.metrics.request_placed,
        )

    # -- handle calls (bridged onto the engine loop) --------------------------------

    # One method per endpoint, as `ModelBackend`; always a streaming handle call
    # (`HandleBackend`): SSE chunks for a streaming request, else its one body.

    async def chat(self, req: ChatCompletionRequest, request_id: str) -> AsyncIterator[Any]:
        async for item in self._answer(req.stream, lambda: self.serving.chat(req, request_id)):
            yield item

    async def completions(self, req: CompletionRequest, request_id: str) -> AsyncIterator[Any]:
        async for item in self._answer(req.stream, lambda: self.serving.completions(req, request_id)):
            yield item

    async def _answer(self, stream: bool, call: Callable[[], Coroutine[Any, Any, Generation]]) -> AsyncIterator[Any]:
        if not stream:
            yield await self._loop.run(call())
            return
        self._handle_streams.open += 1
        try:
            async for chunk in coalesce(self._loop.stream(lambda: _sse_stream(call())), self._handle_streams.window_s):
                yield chunk
        finally:
            self._handle_streams.open -= 1

    async def embeddings(self, req: EmbeddingRequest, request_id: str) -> AsyncIterator[Any]:
        async for item in self._answer(False, lambda: self.serving.embeddings(req, request_id)):
            yield item

    async def tokenize(self, req: TokenizeRequest) -> dict[str, Any]:
        return await self._loop.run(self.serving.tokenize(req))

    async def detokenize(self, req: DetokenizeRequest) -> dict[str, Any]:
        return await self._loop.run(self.serving.detokenize(req))

    async def ready(self) -> bool:
        await self._loop.run(self.serving.engine.check_health())
        return True

    async def context_length(self) -> int:
        return self.serving.max_model_len

    async def engine_stats(self) -> dict[str, float]:
        return await self._loop.run(self.serving.stats())

    async def record_autoscaling_stats(self) -> dict[str, float]:
        """Requests in flight in this replica, direct HTTP and handle calls alike (serving/deployments/autoscaling.py)."""
        serving = getattr(self, "serving", None)
        return {"in_flight": float(serving.in_flight if serving else 0)}

    async def check_health(self) -> None:
        routing = self._routing
        try:
            await self._loop.run(self.serving.engine.check_health())
        except BaseException:
            if routing is not None and routing.state != DRAINING:
                routing.state = UNHEALTHY
                routing.reporter.poke()
            raise
        if routing is not None and routing.state == UNHEALTHY:
            routing.state = READY
            routing.reporter.poke()

    # -- shutdown -----------------------------------------------------------------

    def _routing_draining(self) -> None:
        """Entry points stop placing requests here from their next refresh (on Serve's loop)."""
        routing = getattr(self, "_routing", None)
        if routing is not None and routing.state != DRAINING:
            routing.state = DRAINING
            routing.reporter.poke()

    async def _drain_now(self) -> None:
        """Serve began stopping the replica: drain from now, to the deadline a drain from __del__ would keep."""
        self._routing_draining()
        await self._loop.run(self._drain(serve_stop.drain_from_stop_s(self.cfg.deployment.graceful_shutdown_timeout_s)))

    async def _drain(self, drain_s: float) -> None:
        """On the engine loop, at most once (later callers wait for the first): the requests' drain."""
        if self._draining is None:
            self._draining = asyncio.ensure_future(self._drain_requests(drain_s))
        await asyncio.shield(self._draining)

    async def _drain_requests(self, drain_s: float) -> None:
        http, self._http = self._http, None
        # Stop accepting connections now; the requests in progress (direct and handle
        # calls alike) get the drain time to finish, then end with a 503 / an SSE error
        # event and [DONE] instead of being cut when Serve kills the replica.
        stopping = asyncio.ensure_future(http.stop()) if http is not None else None
        serving = getattr(self, "serving", None)
        # Its own engine's requests, and the streams its direct ingress relays for the app's other models.
        drains = [RELAYS.drain(drain_s)] + ([serving.drain(drain_s)] if serving is not None else [])
        ended = sum(await asyncio.gather(*drains))
        if ended:
            logger.warning("shutdown: ended %d requests still in progress after the drain time", ended)
        if stopping is not None:
            await stopping

    async def _stop_on_loop(self) -> None:
        stop = getattr(self, "_background_stop", None)
        if stop is not None:
            stop.set()
        try:
            await self._drain(serve_stop.drain_time_s(self.cfg.deployment.graceful_shutdown_timeout_s))
        finally:  # a drain that failed still stops the engine
            routing = getattr(self, "_routing", None)
            if routing is not None:
                await routing.client.close()
            engine, self.engine = self.engine, None
            if engine is not None:
                await engine.shutdown()

    async def _shutdown(self) -> None:
        # Once: a failed __init__ shuts down, and Serve then still calls __del__, whose
        # coroutine would wait forever on the stopped engine loop (until the force-kill).
        loop = getattr(self, "_loop", None)
        if loop is None or getattr(self, "_shut_down", False):
            return
        self._shut_down = True
        watch = getattr(self, "_stop_watch", None)
        if watch is not None:
            watch.cancel()  # a drain it began goes on (shielded); _stop_on_loop waits for it
        routing = getattr(self, "_routing", None)
        reporting = getattr(self, "_reporter_task", None)
        if routing is not None and reporting is not None:  # (a failed start never reported)
            self._routing_draining()
            reporting.cancel()
            await routing.reporter.leave(routing.replica_id)
        try:
            await loop.run(self._stop_on_loop())
        finally:
            loop.stop()

    async def __del__(self):
        # Also runs after a failed __init__: only stops what was started.
        await self._shutdown()
