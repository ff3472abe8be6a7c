"""tests/cluster.py refuses, with the reason, where a multi-node cluster cannot be made (nothing started)."""

from __future__ import annotations

import subprocess

import pytest

from tests import cluster as harness


def test_refuses_without_root(monkeypatch):
    monkeypatch.setattr(harness.os, "geteuid", lambda: 1000)
    with pytest.raises(harness.ClusterUnavailable, match="not root"):
        harness.Cluster([harness.NodeSpec()]).up()


def test_refuses_where_namespaces_cannot_be_made(monkeypatch, tmp_path):
    def run(*cmd, check=True, timeout=30):
        if cmd[:3] == ("ip", "netns", "add"):
            return subprocess.CompletedProcess(cmd, 1, "", "mount --make-shared /run/netns failed: Permission denied")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(harness.os, "geteuid", lambda: 0)
    monkeypatch.setattr(harness.shutil, "which", lambda name: f"/usr/sbin/{name}")
    monkeypatch.setattr(harness, "_run", run)
    (tmp_path / "cgroup.procs").write_text("")  # a cgroup2 hierarchy, as far as the check looks
    monkeypatch.setattr(harness, "CGROUP_ROOT", tmp_path)
    with pytest.raises(harness.ClusterUnavailable, match="ip netns add.*Permission denied"):
        harness.check_machine()


def test_the_subnet_avoids_the_machines_networks(monkeypatch):
    taken = "1: lo inet 127.0.0.1/8\n2: eth0 inet 10.0.0.5/8\n"  # all of 10/8 in use: nothing is free
    monkeypatch.setattr(harness, "_run", lambda *cmd, **kw: subprocess.CompletedProcess(cmd, 0, taken, ""))
    with pytest.raises(harness.ClusterUnavailable, match="no free"):
        harness._free_subnet()
    monkeypatch.setattr(
        harness, "_run", lambda *cmd, **kw: subprocess.CompletedProcess(cmd, 0, "2: eth0 inet 10.200.0.0/13\n", "")
    )
    net = harness._free_subnet()
    assert not net.overlaps(harness.ipaddress.ip_network("10.200.0.0/13")) and net.prefixlen == 24
