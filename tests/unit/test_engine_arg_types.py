"""`engine_args` value types: the committed table is vLLM's, and what it refuses vLLM refuses.

These tests import vLLM (its classes only; no engine starts). The table itself is read
without vLLM by `python -m serving check` and by the app's build.
"""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import vllm
import yaml
from vllm.engine.arg_utils import AsyncEngineArgs

from serving.config import ConfigError, app_configs, parse_app_args
from serving.engine.engine_arg_types import TABLE_PATH, dump_table, engine_arg_problems, load_table, table_from
from serving.engine.factory import check_engine_args
from serving.engine.vllm_engine import _config_objects
from serving.models.tiny_llama import ensure_tiny_llama

ROOT = Path(__file__).resolve().parents[2]


def test_the_table_is_the_installed_vllm_s():
    """Fails when vLLM's AsyncEngineArgs changed (a new pin): run `python scripts/engine_arg_types.py`."""
    assert TABLE_PATH.read_text() == dump_table(table_from(AsyncEngineArgs, vllm.__version__)), (
        "serving/engine/vllm_engine_args.py is stale: python scripts/engine_arg_types.py"
    )
    assert set(load_table()["fields"]) == {f.name for f in __import__("dataclasses").fields(AsyncEngineArgs)}


def _vllm_refuses(args: dict[str, Any]) -> str | None:
    """What vLLM says when it builds its engine config from these engine_args (as VLLMEngine.start does), or None."""
    full = {"model": str(ensure_tiny_llama()), "enable_log_requests": False, **args}
    try:
        AsyncEngineArgs(**_config_objects(AsyncEngineArgs, full)).create_engine_config()
    except Exception as exc:  # vLLM raises pydantic's ValidationError, TypeError, ValueError
        return f"{type(exc).__name__}: {exc}"
    return None


# (engine_args, the key path the check names)
REFUSED = [
    ({"max_model_len": "long"}, "max_model_len"),
    ({"max_model_len": 2048.5}, "max_model_len"),
    ({"dtype": "bf16"}, "dtype"),
    ({"enable_prefix_caching": "maybe"}, "enable_prefix_caching"),
    ({"tensor_parallel_size": 1.5}, "tensor_parallel_size"),
    ({"gpu_memory_utilization": "high"}, "gpu_memory_utilization"),
    ({"kv_cache_memory_bytes": "1GiB"}, "kv_cache_memory_bytes"),
    ({"max_num_seqs": "many"}, "max_num_seqs"),
    ({"seed": [1]}, "seed"),
    ({"structured_outputs_config": {"backend": "xgramar"}}, "structured_outputs_config.backend"),
    ({"structured_outputs_config": {"disable_any_whitspace": True}}, "structured_outputs_config.disable_any_whitspace"),
    ({"compilation_config": {"cudagraph_capture_sizes": ["a"]}}, "compilation_config.cudagraph_capture_sizes.0"),
]

# vLLM converts these (pydantic's lax mode), so the check must take them too.
ACCEPTED = [
    {"max_model_len": "2048"},
    {"max_model_len": 2048.0},
    {"enable_prefix_caching": "yes"},
    {"gpu_memory_utilization": 1},
    {"max_model_len": 1024, "dtype": "float32", "structured_outputs_config": {"backend": "xgrammar"}},
    # null where vLLM's default is None (`max_model_len: int = None`): vLLM takes its own default
    {"max_model_len": None},
    {"elastic_ep_max_dp_size": None},
    {"enable_flashinfer_autotune": None},
]


@pytest.mark.parametrize("args, where", REFUSED, ids=[w for _, w in REFUSED])
def test_check_refuses_what_vllm_refuses(args, where):
    assert _vllm_refuses(args) is not None, "vLLM took it: the case proves nothing"
    problems = dict(engine_arg_problems(args))
    assert where in problems, problems


@pytest.mark.parametrize("args", ACCEPTED, ids=lambda a: ",".join(f"{k}={v!r}" for k, v in a.items()))
def test_check_takes_what_vllm_takes(args):
    assert _vllm_refuses(args) is None
    assert engine_arg_problems(args) == []


def _shipped_vllm_models():
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        for cfg in app_configs(yaml.safe_load(path.read_text())):
            for m in cfg.models:
                if m.engine == "vllm":
                    yield pytest.param(m.engine_args, id=f"{path.name}:{m.id}")


@pytest.mark.parametrize("args", list(_shipped_vllm_models()))
def test_shipped_engine_args_pass_both(args):
    # Values sized for the config's own model and GPUs (a 16k context, TP 2) do not fit the tiny model on
    # this CPU: vLLM checks those against the model and the machine, not their types.
    sized = ("max_model_len", "tensor_parallel_size", "distributed_executor_backend")
    cpu_safe = {k: v for k, v in args.items() if k not in sized}
    assert engine_arg_problems(args) == []
    assert _vllm_refuses({**cpu_safe, "gpu_memory_utilization": 0.9}) is None


def test_every_field_whose_default_is_none_takes_null():
    """A YAML `null` for such a field means vLLM's own default, whatever the annotation (`int = None`) says."""
    defaults_none = [f.name for f in __import__("dataclasses").fields(AsyncEngineArgs) if f.init and f.default is None]
    assert "max_model_len" in defaults_none
    assert [(n, p) for n in defaults_none for p in engine_arg_problems({n: None})] == []


def test_a_wrong_type_in_a_config_names_the_key_path(tmp_path):
    args = yaml.safe_load((ROOT / "configs" / "dev.yaml").read_text())["applications"][0]["args"]
    bad = copy.deepcopy(args)
    bad["models"][0]["engine_args"]["max_model_len"] = "2k"
    bad["models"][0]["engine_args"]["structured_outputs_config"]["backend"] = "xgramar"
    with pytest.raises(ConfigError) as info:
        check_engine_args(parse_app_args(bad), "dev.yaml")
    msg = str(info.value)
    assert "models.0.engine_args.max_model_len: Input should be a valid integer" in msg and "(got '2k')" in msg
    assert "models.0.engine_args.structured_outputs_config.backend: Input should be 'auto', 'xgrammar'" in msg


def test_the_check_reads_the_table_without_importing_vllm(tmp_path):
    code = (
        "import sys; from serving.engine.engine_arg_types import engine_arg_problems; "
        "p = engine_arg_problems({'max_model_len': 'x', 'dtyp': 'auto'}); "
        "print(len(p), 'vllm' in sys.modules, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.split() == ["2", "False", "False"]


def test_another_vllm_than_the_table_s_checks_names_from_its_source_and_not_types(monkeypatch):
    """After a vLLM upgrade without a new table: its own field names (read from its source), no stale types."""
    from serving.engine import factory

    monkeypatch.setattr(factory, "installed_vllm_version", lambda: "0.0.0-other")
    m = parse_app_args({"models": [{"id": "m", "engine_args": {"max_model_len": "2k", "max_model_lenn": 1}}]}).models[0]
    problems = dict(factory.model_problems(m))
    assert (
        "engine_args.max_model_lenn" in problems
        and "did you mean 'max_model_len'" in problems["engine_args.max_model_lenn"]
    )
    assert "engine_args.max_model_len" not in problems
