"""node_tuning renices Ray's control plane, never an engine, and the ingress only in direct mode."""

import subprocess
import sys

import psutil
import pytest

from serving.deployments.node_tuning import NICENESS, deprioritize_ray_control_plane


@pytest.fixture
def fake_processes():
    """Sleepers whose command lines look like Ray's processes (the renice matches command lines)."""
    names = {
        "gcs": "gcs_server",
        "controller": "ray::ServeController",
        "engine": "VLLM::EngineCore raylet",  # an engine is never reniced, whatever else it says
        "ingress": "ray::ServeReplica:llm:ingress",
        "other": "unrelated-job",
    }
    procs = {
        key: subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", text])
        for key, text in names.items()
    }
    yield {key: psutil.Process(p.pid) for key, p in procs.items()}
    for p in procs.values():
        p.kill()
        p.wait()


def test_proxy_mode_renices_the_control_plane_only(fake_processes):
    changed = set(deprioritize_ray_control_plane(direct_ingress=False))
    p = fake_processes
    assert {p["gcs"].pid, p["controller"].pid} <= changed
    assert p["gcs"].nice() == NICENESS and p["controller"].nice() == NICENESS
    assert p["engine"].nice() == 0 and p["ingress"].nice() == 0 and p["other"].nice() == 0


def test_direct_mode_also_renices_the_ingress(fake_processes):
    deprioritize_ray_control_plane(direct_ingress=True)
    p = fake_processes
    assert p["ingress"].nice() == NICENESS
    assert p["engine"].nice() == 0 and p["other"].nice() == 0


def test_never_raises_priority(fake_processes):
    p = fake_processes
    p["gcs"].nice(15)
    deprioritize_ray_control_plane(direct_ingress=True)
    assert p["gcs"].nice() == 15
