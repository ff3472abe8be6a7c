"""The rules tests/conftest.py enforces on the fast suite (they would let Ray in silently if broken)."""

import subprocess
import sys

import psutil
import pytest

from tests.conftest import heavy_descendants


def test_ray_init_is_refused_outside_e2e():
    import ray

    with pytest.raises(RuntimeError, match="starts no Ray"):
        ray.init()


def test_a_started_ray_or_engine_process_is_seen():
    before = {p.pid for p in psutil.Process().children(recursive=True)}  # e.g. an e2e session server
    # A stand-in whose command line names a raylet, as Ray's own does.
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "/ray/core/src/ray/raylet/raylet"])
    try:
        assert any(str(proc.pid) in found for found in heavy_descendants(before))
    finally:
        proc.kill()
        proc.wait()
    assert not heavy_descendants(before)


def test_tests_under_e2e_are_marked(request):
    session_items = [i for i in request.session.items if "/tests/e2e/" in str(i.fspath)]
    assert all(i.get_closest_marker("e2e") for i in session_items)


@pytest.fixture(scope="module")
def stand_in_started_before_the_test():
    # As an e2e session server still running while later fast tests run.
    before = {p.pid for p in psutil.Process().children(recursive=True)}  # (maybe a real one)
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "/ray/core/src/ray/raylet/raylet"])
    yield proc, before
    proc.kill()
    proc.wait()


def test_processes_started_before_a_test_are_not_its_doing(stand_in_started_before_the_test):
    # The guard runs after this test: it must not count the module fixture's process.
    proc, before = stand_in_started_before_the_test
    assert any(str(proc.pid) in f for f in heavy_descendants(before))
    assert not heavy_descendants(before | {proc.pid})
