"""Locust users for the OpenAI-compatible API (chat + completions, streaming or not).

    locust -f loadtests/locustfile.py --host http://localhost:8000 --scenario chat

Besides one entry per request kind ("chat:stream", "chat", "completions:stream",
"completions"; type POST, response time = full end-to-end latency incl. the whole
stream), every successful request reports LLM metrics as their own entries of
type METRIC, so they show in the web UI, the CSVs and the HTML report:

  METRIC ttft          time to first token (ms): request sent -> first chunk with output (streaming only)
  METRIC itl           inter-token latency (ms), see --itl-mode (streaming only)
  METRIC tokens_per_s  output tokens / end-to-end seconds of the request. The "response
                       time" columns of this row are tokens/s, not ms (higher is better,
                       so its slow tail is the low percentiles / Min), and its
                       "Average Content Size" is the mean output tokens per request.

Output tokens come from `usage` (streams ask for it with stream_options.include_usage).
A request fails on an HTTP error, an SSE `error` event, a stream without `data: [DONE]`,
malformed JSON, or a response without choices.

Note that locust's "Aggregated" row sums every entry, METRIC samples included; read
request totals from the POST rows (loadtests/run.py does).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import random
import sys
import time

import gevent
import gevent.lock
from locust import FastHttpUser, LoadTestShape, events, stats, task
from locust.exception import StopUser

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from loadtests import scenarios
from loadtests.sse import SSEError, SSEReader

logger = logging.getLogger("loadtests")

# Report low percentiles too: the slow tail of tokens_per_s is p5/p10, not p95.
for _p in (0.10, 0.05):
    if _p not in stats.PERCENTILES_TO_REPORT:
        stats.PERCENTILES_TO_REPORT.insert(0, _p)

METRIC = "METRIC"
_user_ids = itertools.count()


@events.init_command_line_parser.add_listener
def _add_arguments(parser):
    scenarios.add_arguments(parser)


@events.quitting.add_listener
def _final_csv_rows(environment, **_kwargs):
    # Locust's CSV writer greenlet snapshots the stats once a second and the files are
    # closed right after `quitting`: give it one more turn, or requests that finished in
    # the last second (e.g. during --stop-timeout) are missing from the CSVs.
    if getattr(environment.parsed_options, "csv_prefix", None):
        gevent.sleep(stats.CSV_STATS_INTERVAL_SEC + 0.5)


# --------------------------------------------------------------------------- run setup


class RunSetup:
    """Per-run facts resolved once at test start: models, tokens per word, system prompts."""

    def __init__(self):
        self._lock = gevent.lock.Semaphore()
        self.key = None
        self._reset()

    def _reset(self):
        self.models: list[str] = []
        self.tokens_per_word: dict[str, float] = {}
        self.system_prompts: list[str] = []
        self.error: str | None = None
        self.stopping = False

    def ensure(self, user: OpenAIUser) -> None:
        opts = user.environment.parsed_options
        key = (user.host, opts.scenario, opts.seed, opts.model, opts.models, opts.tokens_per_word, opts.api_key)
        with self._lock:
            if self.key == key:
                return
            self._reset()
            self.key = key
            scenario = scenarios.SCENARIOS[opts.scenario]
            try:
                self.models = self._models(user, opts, scenario)
                for m in self.models:
                    self.tokens_per_word[m] = self._tokens_per_word(user, opts, m)
            except Exception as exc:  # shown once per run; the users then stop
                self.error = f"setup against {user.host} failed: {exc}"
                logger.error(self.error)
                return
            tpw = self.tokens_per_word[self.models[0]]
            self.system_prompts = scenarios.system_prompts(scenario, opts.seed, tpw)
            logger.info(
                "scenario %s, models %s, tokens/word %s\n%s",
                scenario.name,
                self.models,
                {m: round(v, 2) for m, v in self.tokens_per_word.items()},
                scenario.describe(),
            )

    def _models(self, user, opts, scenario) -> list[str]:
        if scenario.multi_model and opts.models:
            return [m.strip() for m in opts.models.split(",") if m.strip()]
        if not scenario.multi_model and opts.model:
            return [opts.model]
        resp = user.client.get("/v1/models", headers=user.headers(), name="setup: /v1/models")
        if resp.status_code != 200:
            raise RuntimeError(f"GET /v1/models -> {_http_error(resp)}")
        ids = [m["id"] for m in resp.json()["data"]]
        if not ids:
            raise RuntimeError("GET /v1/models lists no model")
        return ids if scenario.multi_model else ids[:1]

    def _tokens_per_word(self, user, opts, model: str) -> float:
        if opts.tokens_per_word != "auto":
            return float(opts.tokens_per_word)
        n = 300
        prompt = scenarios.make_text(random.Random(f"{opts.seed}:calibrate"), n)
        body = {"model": model, "prompt": prompt, "max_tokens": 1}
        resp = user.client.post("/v1/completions", json=body, headers=user.headers(), name="setup: calibrate")
        if resp.status_code != 200:
            raise RuntimeError(f"calibration POST /v1/completions -> {_http_error(resp)}")
        return max(0.2, resp.json()["usage"]["prompt_tokens"] / n)


SETUP = RunSetup()


@events.test_start.add_listener
def _new_run(environment, **_kwargs):
    global _user_ids
    SETUP.key = None  # resolve again at every start (the web UI can change host and options)
    _user_ids = itertools.count()  # same seed -> same per-user prompt sequences, run after run


# --------------------------------------------------------------------------- SSE


class StreamFailure(Exception):
    pass


def _has_output(chunk: dict) -> bool:
    for c in chunk.get("choices") or ():
        if c.get("text"):
            return True
        delta = c.get("delta") or {}
        if delta.get("content") or delta.get("reasoning_content") or delta.get("tool_calls"):
            return True
    return False


def read_sse(resp) -> tuple[float | None, list[float], dict | None, int]:
    """Consume an SSE body as it arrives.

    Returns (first output time, times of every chunk with output, usage, bytes read).
    Raises StreamFailure on an `error` event, bad JSON or a missing [DONE], after reading
    the stream to its end (so the keep-alive connection goes back to the pool clean).
    """
    raw = resp._response  # geventhttpclient response: readline() returns as soon as a line is buffered
    reader = SSEReader()
    first = None
    times: list[float] = []
    usage = None
    problem = None
    nbytes = 0
    while True:
        line = raw.readline(b"\n")
        if not line:
            break
        now = time.perf_counter()
        nbytes += len(line)
        for event in reader.feed(line):
            if problem or event.done:
                continue
            if event.event == "error":
                problem = f"SSE event: error: {event.data.decode(errors='replace')[:200]}"
                continue
            try:
                chunk = event.json()
            except SSEError as exc:
                problem = f"bad SSE JSON: {exc}"
                continue
            if "error" in chunk:
                err = chunk["error"]
                problem = f"SSE error event: {err.get('message', err) if isinstance(err, dict) else err}"
                continue
            if chunk.get("usage"):
                usage = chunk["usage"]
            if _has_output(chunk):
                if first is None:
                    first = now
                times.append(now)
    done = reader.done
    if problem:
        raise StreamFailure(problem)
    if not done:
        raise StreamFailure("stream ended without data: [DONE]")
    return first, times, usage, nbytes


# --------------------------------------------------------------------------- users


class OpenAIUser(FastHttpUser):
    """One client session: draws requests from the scenario and sends them back to back."""

    network_timeout = 300.0
    connection_timeout = 30.0

    def wait_time(self):
        lo, hi = self.scenario.think_time_s
        return self.rng.uniform(lo, hi) if hi > 0 else 0

    def on_start(self):
        opts = self.environment.parsed_options
        self.scenario = scenarios.SCENARIOS[opts.scenario]
        worker = getattr(self.environment.runner, "worker_index", 0) if self.environment.runner else 0
        self.user_id = next(_user_ids)
        self.rng = random.Random(f"{opts.seed}:{worker}:{self.user_id}")
        SETUP.ensure(self)
        if SETUP.error:
            # Nothing can work (wrong host, key or model): end the run instead of idling.
            runner = self.environment.runner
            if runner is not None and not SETUP.stopping:
                SETUP.stopping = True
                headless = getattr(opts, "headless", False)
                gevent.spawn(runner.quit if headless else runner.stop)
            raise StopUser()

    def headers(self) -> dict:
        h = {"Accept-Encoding": "identity"}
        key = self.environment.parsed_options.api_key
        if key:
            h["Authorization"] = f"Bearer {key}"
        return h

    def metric(self, name: str, value: float, length: int = 0) -> None:
        self.environment.events.request.fire(
            request_type=METRIC,
            name=name,
            response_time=value,
            response_length=length,
            exception=None,
            context={},
        )

    def metrics(self, model: str, name: str, value: float, length: int = 0) -> None:
        self.metric(name, value, length)
        if self.scenario.multi_model:
            self.metric(f"{name} [{model}]", value, length)

    @task
    def one_request(self):
        opts = self.environment.parsed_options
        req = scenarios.plan_request(
            self.scenario,
            self.rng,
            SETUP.models,
            SETUP.tokens_per_word,
            opts.max_context,
            SETUP.system_prompts,
        )
        if not opts.no_ignore_eos:
            req.body["ignore_eos"] = True
        name = req.kind + (f" [{req.model}]" if self.scenario.multi_model else "")
        headers = self.headers()
        if req.stream:
            headers["Accept"] = "text/event-stream"
        started = time.perf_counter()
        with self.client.post(
            req.path, json=req.body, headers=headers, name=name, stream=req.stream, catch_response=True
        ) as resp:
            if resp.status_code != 200:
                resp.failure(_http_error(resp))
                return
            try:
                if req.stream:
                    first, times, usage, nbytes = read_sse(resp)
                    resp.request_meta["response_length"] = nbytes
                    if first is None:
                        raise StreamFailure("stream carried no output")
                else:
                    body = json.loads(resp.content)
                    if not body.get("choices"):
                        raise StreamFailure(f"response without choices: {resp.text[:200]}")
                    usage = body.get("usage")
            except StreamFailure as exc:
                resp.failure(str(exc))
                return
            except Exception as exc:  # connection dropped mid-stream, timeouts, ...
                resp.failure(f"{type(exc).__name__}: {exc}")
                return
            ended = time.perf_counter()
            e2e_ms = (ended - started) * 1000
            resp.request_meta["response_time"] = e2e_ms  # the whole request, stream included
            resp.success()

        tokens = int(usage["completion_tokens"]) if usage and "completion_tokens" in usage else None
        if req.stream:
            if tokens is None:  # server ignored include_usage: count chunks instead
                tokens = len(times)
            self.metrics(req.model, "ttft", (first - started) * 1000)
            if opts.itl_mode == "chunk":
                for a, b in zip(times, times[1:], strict=False):
                    self.metrics(req.model, "itl", (b - a) * 1000)
            elif tokens > 1 and len(times) > 1:
                self.metrics(req.model, "itl", (times[-1] - times[0]) * 1000 / (tokens - 1))
        if tokens:
            self.metrics(req.model, "tokens_per_s", tokens / (ended - started), length=tokens)


def _http_error(resp) -> str:
    if not resp.status_code:  # no HTTP response at all
        return f"{type(resp.error).__name__}: {resp.error}" if getattr(resp, "error", None) else "no response"
    try:
        detail = resp.json()["error"]["message"]
    except Exception:
        detail = (resp.text or "")[:200]
    return f"HTTP {resp.status_code}: {detail}"


# --------------------------------------------------------------------------- load shape


class ScenarioShape(LoadTestShape):
    """--users/--spawn-rate/--run-time as usual, or the scenario's stages (burst, step).

    use_common_options keeps the web UI's user count, spawn rate and run time fields.
    """

    use_common_options = True

    def tick(self):
        opts = self.runner.environment.parsed_options
        scenario = scenarios.SCENARIOS[opts.scenario]
        users = int(opts.num_users or 1)
        rate = float(opts.spawn_rate or 1)
        # Locust hands --run-time to the shape when there is one (headless and web UI);
        # returning None stops the users, honouring --stop-timeout.
        return scenarios.shape_tick(scenario, self.get_run_time(), users, rate, opts.run_time)
