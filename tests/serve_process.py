"""Start `serve run CONFIG` as a user would, wait until ready, and stop it cleanly.

Teardown sends SIGINT (what Ctrl-C does), waits for Ray to shut down, then
asserts that no vLLM engine process survived: a leaked EngineCore holds ~2 GB.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil
import yaml

ROOT = Path(__file__).resolve().parents[1]
SERVE = str(Path(sys.executable).with_name("serve"))


def engine_processes() -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["name", "cmdline"]):
        try:
            text = (p.info["name"] or "") + " " + " ".join(p.info["cmdline"] or [])
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if "VLLM::EngineCore" in text or "VLLM::Worker" in text:
            found.append(p)
    return found


def write_config(data: dict) -> Path:
    fd, path = tempfile.mkstemp(prefix="serving-test-", suffix=".yaml")
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(data, f)
    return Path(path)


class ServeProcess:
    def __init__(self, config: Path, ready_url: str, log_path: Path, env: dict | None = None):
        self.config = config
        self.ready_url = ready_url
        self.log_path = log_path
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 300) -> "ServeProcess":
        assert not engine_processes(), "vLLM engine processes are already running: stop them first"
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [SERVE, "run", str(self.config)],
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self.env,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve run exited with {self.proc.returncode}; log: {self.log_path}\n{self.tail()}")
            try:
                if httpx.get(self.ready_url, timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(1)
        self.stop()
        raise TimeoutError(f"not ready after {timeout_s}s; log: {self.log_path}\n{self.tail()}")

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self, timeout_s: float = 90) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()
        # Engines shut down asynchronously after their replica: give them a moment.
        deadline = time.monotonic() + 30
        while engine_processes() and time.monotonic() < deadline:
            time.sleep(0.5)
        leaked = engine_processes()
        for p in leaked:
            p.kill()
        assert not leaked, f"vLLM engine processes left running after shutdown: {[p.pid for p in leaked]}"
