"""Fixtures and rules for every suite.

* Every test under tests/e2e is marked `e2e` here, in one place, so
  `pytest -m "not e2e"` is the fast suite whatever a test file declares.
* The fast suite starts no Ray and no engine: after each test not marked
  `e2e`, a process that Ray or vLLM starts (raylet, GCS, a vLLM engine core or
  worker, `serve run`) that appeared among the test run's descendants during
  the test fails it. An in-process `ray.init` is refused outright.
* `make_app` builds the in-process app (tests/inprocess.py).
"""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest

from tests.inprocess import InProcessApp, simulated_app

E2E_DIR = Path(__file__).parent / "e2e"
# Names (in the process name or command line) of what only the e2e suite may start.
HEAVY = ("raylet", "gcs_server", "VLLM::EngineCore", "VLLM::Worker", "ray::", "bin/serve run", "vllm.entrypoints")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if E2E_DIR in Path(item.fspath).parents:
            item.add_marker(pytest.mark.e2e)


def heavy_descendants(ignore: frozenset[int] | set[int] = frozenset()) -> list[str]:
    """Ray or engine processes among this test run's descendants, except the pids in `ignore`."""
    found = []
    for p in psutil.Process().children(recursive=True):
        if p.pid in ignore:
            continue
        try:
            text = p.name() + " " + " ".join(p.cmdline())
        except psutil.Error:
            continue
        if p.status() != psutil.STATUS_ZOMBIE and any(n in text for n in HEAVY):
            found.append(f"{p.pid} {text[:120]}")
    return found


@pytest.fixture(autouse=True)
def _fast_suite_starts_no_ray(request, monkeypatch):
    if request.node.get_closest_marker("e2e"):
        yield
        return
    import ray

    def refuse(*args, **kwargs):
        raise RuntimeError("ray.init in a test not marked e2e: the fast suite starts no Ray")

    monkeypatch.setattr(ray, "init", refuse)
    # What runs already is not this test's doing (an e2e session server stays up until the run ends).
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    yield
    started = heavy_descendants(before)
    assert not started, f"a test not marked e2e started Ray or an engine: {started}"


@pytest.fixture
async def make_app():
    """Build in-process apps on the simulated engine inside a test: `await make_app(engine_args, **options)`.

    Options are `simulated_app`'s (auth, limits, max_in_flight, metrics, ...); every app is closed at the test's end.
    """
    made: list[InProcessApp] = []

    async def make(engine_args: dict | None = None, **options) -> InProcessApp:
        app = await simulated_app(engine_args, **options)
        made.append(app)
        return app

    yield make
    for app in made:
        await app.aclose()
