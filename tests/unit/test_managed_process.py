"""The harness that starts servers for tests and benchmarks: where it puts them in the process tree."""

import os
import sys

import httpx

from loadtests.servers import ManagedProcess, ServeProcess, free_ports


class _HTTPServer(ManagedProcess):
    """A stand-in server: Python's http.server answers the ready check."""

    def __init__(self, port, log_path):
        super().__init__(f"http://127.0.0.1:{port}/", log_path)
        self.port = port

    def command(self):
        return [sys.executable, "-m", "http.server", str(self.port), "--bind", "127.0.0.1"]


def test_server_gets_its_own_group_in_the_callers_session(tmp_path):
    server = _HTTPServer(free_ports(1)[0], tmp_path / "http.log").start(timeout_s=30)
    try:
        pid = server.proc.pid
        # own group: killpg reaches the server and its children, and not us
        assert os.getpgid(pid) == pid != os.getpgid(0)
        # our session: with autogroup scheduling a server in a session of its own starved its clients
        assert os.getsid(pid) == os.getsid(0)
    finally:
        server.stop()
    assert server.proc.returncode is not None


def test_context_manager_stops_the_server_when_the_block_fails(tmp_path):
    port = free_ports(1)[0]
    server = _HTTPServer(port, tmp_path / "http.log")
    try:
        with server:
            assert httpx.get(server.ready_url).status_code == 200
            raise KeyError("the test failed")
    except KeyError:
        pass
    assert server.proc.returncode is not None
    server.stop()  # a second stop is a no-op


def test_free_ports_are_distinct_and_bindable():
    ports = free_ports(8)
    assert len(set(ports)) == 8 and all(1024 < p < 65536 for p in ports)


def test_config_from_data_is_removed_when_the_server_stops(tmp_path):
    server = ServeProcess.from_dict({"applications": []}, "http://127.0.0.1:1/ready", tmp_path / "serve.log")
    assert server.config.exists() and "applications" in server.config.read_text()
    server.cleanup()  # what stop() calls last
    assert not server.config.exists()
    given = ServeProcess(tmp_path / "mine.yaml", "http://127.0.0.1:1/ready", tmp_path / "serve.log")
    given.config.write_text("{}")
    given.cleanup()
    assert given.config.exists()  # a config the caller wrote is the caller's
