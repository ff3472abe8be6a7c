"""Load-test scenarios: request mixes, length distributions, offline prompts, load shapes.

Pure Python (no locust import), so `loadtests.run` can list the scenarios without
gevent monkey-patching itself. `loadtests/locustfile.py` registers the command-line
options defined here (`add_arguments`) through `events.init_command_line_parser`
and picks the scenario with `--scenario NAME`.

Lengths are in tokens. Prompts are built offline from `WORDS`; a word is worth
`tokens_per_word` tokens, which the locustfile measures against the served model
before the run (one /v1/completions call per model, see `--tokens-per-word`).
Every random draw comes from a per-user `random.Random` seeded from `--seed`, so a
run with the same seed, users and spawn order sends the same prompts.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

# --------------------------------------------------------------------------- distributions


@dataclass(frozen=True)
class Dist:
    """An integer distribution, clipped to [lo, hi].

    kind: "const" (value=a), "uniform" (a..b inclusive), "lognormal" (median=a, sigma=b),
    "normal" (mean=a, stddev=b).
    """

    kind: str
    a: float
    b: float = 0.0
    lo: int = 1
    hi: int = 1_000_000

    def sample(self, rng: random.Random) -> int:
        if self.kind == "const":
            x = self.a
        elif self.kind == "uniform":
            x = rng.randint(int(self.a), int(self.b))
        elif self.kind == "lognormal":
            x = rng.lognormvariate(math.log(self.a), self.b)
        elif self.kind == "normal":
            x = rng.gauss(self.a, self.b)
        else:
            raise ValueError(f"unknown distribution {self.kind!r}")
        return max(self.lo, min(self.hi, int(round(x))))

    def describe(self) -> str:
        body = {
            "const": f"{self.a:g}",
            "uniform": f"uniform({self.a:g}..{self.b:g})",
            "lognormal": f"lognormal(median={self.a:g}, sigma={self.b:g})",
            "normal": f"normal(mean={self.a:g}, sd={self.b:g})",
        }[self.kind]
        return f"{body} clipped to [{self.lo}, {self.hi}]"


def const(n: int) -> Dist:
    return Dist("const", n, lo=n, hi=n)


def uniform(lo: int, hi: int) -> Dist:
    return Dist("uniform", lo, hi, lo=lo, hi=hi)


def lognormal(median: float, sigma: float, lo: int = 1, hi: int = 1_000_000) -> Dist:
    return Dist("lognormal", median, sigma, lo=lo, hi=hi)


# --------------------------------------------------------------------------- scenarios

# Request kinds a scenario mixes (weights): the OpenAI endpoint and whether it streams.
KINDS = {
    "chat:stream": ("/v1/chat/completions", True),
    "chat": ("/v1/chat/completions", False),
    "completions:stream": ("/v1/completions", True),
    "completions": ("/v1/completions", False),
}


@dataclass(frozen=True)
class Stage:
    """One step of a load shape: hold `users_fraction` x --users for `seconds`."""

    seconds: float
    users_fraction: float


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    prompt_tokens: Dist
    output_tokens: Dist
    kinds: dict[str, int]  # KINDS key -> weight
    think_time_s: tuple[float, float] = (0.0, 0.5)  # uniform pause between a user's requests
    system_prompts: int = 0  # K shared system prompts (prefix-cache scenario), 0 = none
    system_prompt_tokens: Dist | None = None
    multi_model: bool = False  # spread requests over --models (or every model of GET /v1/models)
    stages: tuple[Stage, ...] = ()  # load shape, cycled until --run-time; () = constant --users
    burst_spawn: bool = False  # jump between stages at once instead of at --spawn-rate

    def describe(self) -> str:
        lines = [
            f"{self.name}: {self.description}",
            f"  prompt tokens: {self.prompt_tokens.describe()}",
            f"  output tokens: {self.output_tokens.describe()}",
            f"  request mix:   {', '.join(f'{k} x{w}' for k, w in self.kinds.items())}",
            f"  think time:    uniform({self.think_time_s[0]}..{self.think_time_s[1]}) s",
        ]
        if self.system_prompts:
            lines.append(f"  system prompts: {self.system_prompts} shared, {self.system_prompt_tokens.describe()}")
        if self.multi_model:
            lines.append("  models: uniform over --models (default: all of GET /v1/models)")
        if self.stages:
            lines.append(
                "  shape: "
                + " -> ".join(f"{s.users_fraction:.0%} of --users for {s.seconds:g}s" for s in self.stages)
                + " (repeats)"
            )
        return "\n".join(lines)


_CHAT_PROMPT = lognormal(median=64, sigma=0.6, lo=8, hi=512)
_CHAT_OUTPUT = lognormal(median=96, sigma=0.5, lo=16, hi=384)
_CHAT_MIX = {"chat:stream": 6, "chat": 1, "completions:stream": 2, "completions": 1}

SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in [
        Scenario(
            name="chat",
            description="short interactive chat, mostly streaming, some completions",
            prompt_tokens=_CHAT_PROMPT,
            output_tokens=_CHAT_OUTPUT,
            kinds=_CHAT_MIX,
        ),
        Scenario(
            name="long",
            description="long prompts (prefill-bound), short answers",
            prompt_tokens=lognormal(median=1100, sigma=0.3, lo=512, hi=1800),
            output_tokens=uniform(32, 128),
            kinds={"chat:stream": 3, "completions:stream": 1},
            think_time_s=(0.0, 1.0),
        ),
        Scenario(
            name="prefix",
            description="K shared system prompts x short user turns (prefix-cache friendly)",
            prompt_tokens=uniform(8, 48),
            output_tokens=lognormal(median=64, sigma=0.4, lo=16, hi=256),
            kinds={"chat:stream": 4, "chat": 1},
            system_prompts=4,
            system_prompt_tokens=uniform(400, 800),
        ),
        Scenario(
            name="mix",
            description="short chat spread over several models",
            prompt_tokens=_CHAT_PROMPT,
            output_tokens=_CHAT_OUTPUT,
            kinds=_CHAT_MIX,
            multi_model=True,
        ),
        Scenario(
            name="burst",
            description="bursty arrivals: 25% of --users, then all of them at once, repeated",
            prompt_tokens=_CHAT_PROMPT,
            output_tokens=_CHAT_OUTPUT,
            kinds={"chat:stream": 4, "completions:stream": 1},
            stages=(Stage(10, 0.25), Stage(5, 1.0)),
            burst_spawn=True,
        ),
        Scenario(
            name="step",
            description="stepped ramp: 25%, 50%, 75%, 100% of --users, 15 s each, repeated",
            prompt_tokens=_CHAT_PROMPT,
            output_tokens=_CHAT_OUTPUT,
            kinds={"chat:stream": 4, "completions:stream": 1},
            stages=(Stage(15, 0.25), Stage(15, 0.5), Stage(15, 0.75), Stage(15, 1.0)),
        ),
    ]
}


def shape_tick(
    scenario: Scenario, elapsed_s: float, users: int, spawn_rate: float, run_time_s: float | None
) -> tuple[int, float] | None:
    """The (user count, spawn rate) a LoadTestShape should return `elapsed_s` into the run.

    None (stop) once --run-time is over: with a shape class, locust leaves --run-time to the shape.
    """
    if run_time_s and elapsed_s >= run_time_s:
        return None
    if not scenario.stages:
        return users, spawn_rate
    period = sum(s.seconds for s in scenario.stages)
    t = elapsed_s % period
    for stage in scenario.stages:
        if t < stage.seconds:
            break
        t -= stage.seconds
    n = max(1, round(users * stage.users_fraction))
    return n, float(max(users, spawn_rate)) if scenario.burst_spawn else spawn_rate


# --------------------------------------------------------------------------- prompts

WORDS = """
the of and to in is for on that with as it by at from this be are was or an have not
which but they all were we when your can there use each one time more how about many
then them these so some would other into has two like him see could no make than first
been its who now people my made over did down only way find long very after called just
where most know get through back much before go good new write our used me man too any
day same right look think also around another came come work three word must because
does part even place well such here take why things help put years different away again
off went old number great tell men say small every found still between name should home
big give air line set own under read last never us left end along while might next sound
below saw something thought both few those always looked show large often together asked
house world going want school important until form food keep children feet land side
without boy once animals life enough took sometimes four head above kind began almost
live page got earth need far hand high year mother light parts country father let night
following picture being study second eyes soon times story boys since white days paper
hard near sentence better best across during today others however sure means knew try
told young miles sun ways thing whole hear example heard several change answer room sea
against top turned learn point city play toward five using himself usually system network
latency request token model server cluster memory cache planning budget river mountain
""".split()

# Chat template and role tokens are not counted by the word budget: keep a margin.
TEMPLATE_MARGIN_TOKENS = 32


def words_for(tokens: int, tokens_per_word: float) -> int:
    return max(1, int(round(tokens / max(tokens_per_word, 0.1))))


def make_text(rng: random.Random, n_words: int) -> str:
    """n_words of sentence-shaped filler drawn from WORDS."""
    out: list[str] = []
    while len(out) < n_words:
        k = min(rng.randint(6, 14), n_words - len(out))
        sentence = [rng.choice(WORDS) for _ in range(k)]
        sentence[0] = sentence[0].capitalize()
        sentence[-1] += "."
        out.extend(sentence)
    return " ".join(out)


def system_prompts(scenario: Scenario, seed: int, tokens_per_word: float) -> list[str]:
    """The scenario's K shared system prompts: identical for every user of a run."""
    result = []
    for k in range(scenario.system_prompts):
        rng = random.Random(f"{seed}:system:{k}")
        n = words_for(scenario.system_prompt_tokens.sample(rng), tokens_per_word)
        result.append(f"You are assistant number {k}. Follow these house rules. " + make_text(rng, n))
    return result


@dataclass
class PlannedRequest:
    kind: str  # KINDS key
    path: str
    stream: bool
    model: str
    prompt_tokens: int  # target (approximate)
    max_tokens: int
    body: dict = field(default_factory=dict)


def plan_request(
    scenario: Scenario,
    rng: random.Random,
    models: list[str],
    tokens_per_word: dict[str, float],
    max_context: int,
    shared_system: list[str],
) -> PlannedRequest:
    """Draw one request (kind, model, lengths, body) from the scenario with `rng`."""
    kinds = list(scenario.kinds)
    kind = rng.choices(kinds, weights=[scenario.kinds[k] for k in kinds])[0]
    path, stream = KINDS[kind]
    model = rng.choice(models) if scenario.multi_model else models[0]
    tpw = tokens_per_word.get(model, 1.3)
    max_tokens = scenario.output_tokens.sample(rng)
    prompt_tokens = scenario.prompt_tokens.sample(rng)
    system = rng.choice(shared_system) if shared_system else None
    system_tokens = int(len(system.split()) * tpw) if system else 0
    budget = max_context - TEMPLATE_MARGIN_TOKENS - system_tokens
    max_tokens = max(1, min(max_tokens, budget // 2))
    prompt_tokens = max(1, min(prompt_tokens, budget - max_tokens))
    user_text = make_text(rng, words_for(prompt_tokens, tpw))
    if path == "/v1/chat/completions":
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": user_text}
        ]
        body = {"model": model, "messages": messages, "max_tokens": max_tokens}
    else:
        prompt = f"{system}\n\nUser: {user_text}\nAssistant:" if system else user_text
        body = {"model": model, "prompt": prompt, "max_tokens": max_tokens}
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return PlannedRequest(kind, path, stream, model, prompt_tokens, max_tokens, body)


# --------------------------------------------------------------------------- options


def add_arguments(parser) -> None:
    """Custom locust options (also shown and editable in the web UI's "Custom parameters")."""
    import os

    # On the parser itself, not an argument group: only LocustArgumentParser.add_argument
    # understands is_secret / include_in_web_ui.
    group = parser
    group.add_argument(
        "--scenario",
        choices=sorted(SCENARIOS),
        default="chat",
        help="request mix, length distributions and load shape: "
        + "; ".join(f"{s.name}: {s.description}" for s in SCENARIOS.values()),
    )
    group.add_argument("--seed", type=int, default=0, help="seed for every random draw (prompts, lengths, mix)")
    group.add_argument(
        "--model", default="", help="model id for single-model scenarios (default: first of GET /v1/models)"
    )
    group.add_argument(
        "--models", default="", help="comma-separated model ids for the mix scenario (default: all of GET /v1/models)"
    )
    group.add_argument(
        "--api-key",
        default=os.environ.get("OPENAI_API_KEY", ""),
        is_secret=True,
        help="sent as 'Authorization: Bearer KEY' (default: $OPENAI_API_KEY; empty = no header)",
    )
    group.add_argument(
        "--itl-mode",
        choices=["mean", "chunk"],
        default="mean",
        help="itl entry: 'mean' = one sample per request, (last token time - first token time)/(tokens - 1); "
        "'chunk' = one sample per gap between streamed chunks (more samples, more locust CPU)",
    )
    group.add_argument(
        "--tokens-per-word",
        default="auto",
        help="tokens per prompt word, or 'auto' to measure it on each model before the run",
    )
    group.add_argument(
        "--max-context", type=int, default=2048, help="prompt + max_tokens are clipped to this many tokens"
    )
    group.add_argument(
        "--no-ignore-eos",
        action="store_true",
        default=False,
        help="do not send vLLM's ignore_eos=true (which forces exactly max_tokens output tokens)",
    )
