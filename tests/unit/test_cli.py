"""`python -m serving`: the version comes from one place and the commands answer."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys

import serving
from serving.__main__ import main


def test_version_has_one_source(capsys):
    try:
        main(["--version"])
    except SystemExit as exc:
        assert exc.code == 0
    out = capsys.readouterr().out.strip()
    assert out == f"serving {serving.__version__}"
    # pyproject reads the version from serving.__version__ (dynamic), so the installed metadata agrees.
    assert importlib.metadata.version("serving") == serving.__version__


def test_version_from_the_command_line():
    done = subprocess.run([sys.executable, "-m", "serving", "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    assert done.stdout.strip() == f"serving {serving.__version__}"


def test_check_reports_a_bad_key_with_its_path(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "applications:\n  - name: llm\n    import_path: serving.deployments.app:build_app\n"
        "    args:\n      models:\n        - id: a\n          enigne: vllm\n"
    )
    assert main(["check", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "models.0.enigne: unknown key 'enigne'" in err and str(bad) in err
