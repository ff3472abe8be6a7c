"""Test-side names for the managed servers (the code lives in loadtests/servers.py)."""

from loadtests.servers import ROOT, ServeProcess, engine_processes, write_config  # noqa: F401
