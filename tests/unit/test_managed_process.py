"""The harness that starts servers for tests and benchmarks: where it puts them in the process tree."""

import os
import socket
import sys

from loadtests.servers import ManagedProcess


class _HTTPServer(ManagedProcess):
    """A stand-in server: Python's http.server answers the ready check."""

    def __init__(self, port, log_path):
        super().__init__(f"http://127.0.0.1:{port}/", log_path)
        self.port = port

    def command(self):
        return [sys.executable, "-m", "http.server", str(self.port), "--bind", "127.0.0.1"]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_server_gets_its_own_group_in_the_callers_session(tmp_path):
    server = _HTTPServer(_free_port(), tmp_path / "http.log").start(timeout_s=30)
    try:
        pid = server.proc.pid
        # own group: killpg reaches the server and its children, and not us
        assert os.getpgid(pid) == pid != os.getpgid(0)
        # our session: with autogroup scheduling a server in a session of its own starved its clients
        assert os.getsid(pid) == os.getsid(0)
    finally:
        server.stop()
    assert server.proc.returncode is not None
