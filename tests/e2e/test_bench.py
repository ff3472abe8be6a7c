"""The side-by-side benchmark command works end to end (a short run; targets are for the full run)."""

import json
import subprocess
import sys

from loadtests.servers import ROOT, free_port
from tests.e2e.conftest import API_KEY, DIRECT_URL


def test_short_benchmark_writes_results(dev_server, tmp_path):
    out = tmp_path / "bench"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "loadtests.bench",
            "--config",
            str(ROOT / "configs" / "dev.yaml"),
            "--concurrency",
            "16",
            "--warmup",
            "1",
            "--duration",
            "3",
            "--our-url",
            DIRECT_URL,
            "--api-key",
            API_KEY,
            "--plain-port",
            str(free_port()),
            "--allow-other-engines",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((out / "bench.json").read_text())
    run = result["runs"][0]
    for side in ("ours", "plain"):
        (level,) = run[side]
        assert level["concurrency"] == 16
        assert level["errors"] == 0 and level["requests"] > 0
        assert level["output_tok_s"] > 0 and level["ttft_p50_ms"] > 0
        # what ran beside the server in the window: the engine's worker is the busiest part
        assert any("VLLM::Worker" in p["process"] and p["cpu_pct"] > 10 for p in level["busiest_processes"])
        assert set(level["machine_cpu"]) == {"idle", "iowait", "steal"}
    assert set(run["background_cpu_pct"]) == {"ours", "plain"}
    assert "ratio ours/plain" in proc.stdout
    assert (out / "bench.png").stat().st_size > 1000
