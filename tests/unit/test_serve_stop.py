"""serving/deployments/serve_stop.py: the drain starts when Serve begins stopping the replica."""

from __future__ import annotations

import asyncio
import inspect
import logging
import types

import pytest

from serving.deployments import serve_stop


async def test_on_stop_runs_once_the_flag_turns():
    replica = types.SimpleNamespace(_shutting_down=False)
    probe = serve_stop.stopping_probe(lambda: replica)
    calls = []

    async def on_stop():
        calls.append(asyncio.get_running_loop().time())

    watcher = asyncio.create_task(serve_stop.watch(on_stop, probe, poll_s=0.01))
    await asyncio.sleep(0.1)
    assert not calls and not watcher.done()
    replica._shutting_down = True
    await asyncio.wait_for(watcher, 1)
    assert len(calls) == 1


async def test_without_the_flag_the_watcher_says_so_and_leaves_the_drain_to_del(caplog):
    assert serve_stop.stopping_probe(lambda: None) is None
    calls = []

    async def on_stop():
        calls.append(1)

    with caplog.at_level(logging.WARNING, logger=serve_stop.__name__):
        await asyncio.wait_for(serve_stop.watch(on_stop, None), 1)  # outside Ray: nothing to find
    assert not calls
    assert "drain starts at __del__" in caplog.text


def test_finds_serve_replica_among_the_workers_actors(monkeypatch):
    import ray

    impl = types.SimpleNamespace(_shutting_down=False)
    actor = types.SimpleNamespace(_replica_impl=impl)
    monkeypatch.setattr(ray._private.worker.global_worker, "actors", {"other": object(), "replica": actor})
    probe = serve_stop.stopping_probe()
    assert probe is not None and probe() is False
    impl._shutting_down = True
    assert probe() is True


@pytest.mark.parametrize(
    "where, needle",
    [
        ("ReplicaActor.__init__", "self._replica_impl"),
        ("Replica._perform_graceful_shutdown", "self._shutting_down = True"),
    ],
)
def test_the_ray_version_installed_still_has_what_the_probe_reads(where, needle):
    """A Ray upgrade that moves the flag fails here, not silently in a drain."""
    from ray.serve._private import replica

    cls, method = where.split(".")
    assert needle in inspect.getsource(getattr(getattr(replica, cls), method))
