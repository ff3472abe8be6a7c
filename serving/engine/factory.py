"""Engines from a model's config: `make_engine` picks one, `check_engine_args` vets its arguments.

The config layer (`serving.config`) knows nothing of engines; this module reads
it. vLLM itself is imported only by `serving.engine.vllm_engine`, lazily.
"""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path
from typing import Any

from serving.config import (
    BUILTIN_PREFIX,
    AppConfig,
    ConfigError,
    ModelConfig,
    app_configs,
    did_you_mean,
    load_serve_config,
)
from serving.engine.adapters import AdapterCatalog
from serving.engine.base import Engine
from serving.engine.engine_arg_types import engine_arg_problems, installed_vllm_version, load_table


def resolve_source(source: str) -> str:
    """A builtin model is built (once) into the local cache; anything else is passed through."""
    if source.startswith(BUILTIN_PREFIX):
        name = source[len(BUILTIN_PREFIX) :]
        if name == "tiny-llama":
            from serving.models.tiny_llama import ensure_tiny_llama

            return str(ensure_tiny_llama())
        if name == "tiny-embed":
            from serving.models.tiny_embed import ensure_tiny_embed

            return str(ensure_tiny_embed())
        raise ValueError(f"unknown builtin model '{name}' (known: tiny-llama, tiny-embed)")
    path = Path(source).expanduser()
    return str(path) if path.exists() else source


def make_engine(cfg: ModelConfig) -> Engine:
    adapters = AdapterCatalog(cfg.id, cfg.lora) if cfg.lora is not None else None
    if cfg.engine == "vllm":
        from serving.engine.vllm_engine import VLLMEngine

        return VLLMEngine(
            resolve_source(cfg.source),
            cfg.id,
            cfg.engine_args,
            tool_parser=cfg.tool_parser,
            task=cfg.task,
            adapters=adapters,
        )
    if cfg.engine == "simulator":
        from serving.engine.simulator import SimulatedEngine

        return SimulatedEngine.from_engine_args(cfg.engine_args, task=cfg.task, adapters=adapters)
    module_name, class_name = cfg.engine.split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    engine: Engine = cls(cfg)
    return engine


def check_engine_args(cfg: AppConfig, where: str) -> None:
    """What the engines would refuse at start-up, found before a replica starts: every problem at once.

    * vLLM models: each `engine_args` key is a field of vLLM's AsyncEngineArgs and each value one vLLM's
      configs take (serving/engine/engine_arg_types.py, a table made from vLLM: no import of vLLM here);
      the tool parser is one vLLM registers (read from its source, when vLLM is installed).
    * GPUs and parallelism: a replica that reserves GPUs holds those of all its vLLM workers
      (tensor_parallel_size x pipeline_parallel_size of them, local processes: configs/cluster.yaml).
    * Simulated models: `engine_args` make a `SimulatorConfig`, which checks its own values.
    """
    problems: list[str] = []
    for i, m in enumerate(cfg.models):
        problems += [f"models.{i}.{path}: {msg}" for path, msg in model_problems(m)]
    if problems:
        raise ConfigError("\n".join([f"invalid config in {where}:", *(f"  {p}" for p in problems)]))


def model_problems(m: ModelConfig) -> list[tuple[str, str]]:
    """(key path under the model, message) for what its engine would refuse."""
    if m.engine == "simulator":
        return _simulator_problems(m)
    if m.engine != "vllm":
        return []  # a custom engine checks its own arguments
    problems: list[tuple[str, str]] = []
    installed = installed_vllm_version()
    if installed is None or installed == load_table()["vllm"]:
        problems += [(f"engine_args.{path}", msg) for path, msg in engine_arg_problems(m.engine_args)]
    else:
        # Another vLLM than the table's: its fields are read from its source, its value types are not known.
        from serving.engine.vllm_engine import engine_arg_names

        problems += [(f"engine_args.{p}", msg) for p, msg in engine_arg_problems(m.engine_args, engine_arg_names())]
    if m.tool_parser is not None and installed is not None:
        from serving.engine.vllm_engine import tool_parser_names

        parsers = tool_parser_names()
        if m.tool_parser not in parsers:
            problems.append(
                (
                    "tool_parser",
                    f"vLLM has no tool parser '{m.tool_parser}'{did_you_mean(m.tool_parser, parsers)} "
                    f"(known: {', '.join(sorted(parsers))})",
                )
            )
    if not problems:
        problems += _gpu_problems(m)
    return problems


def workers_per_replica(m: ModelConfig) -> int:
    """vLLM workers (processes, one per GPU on a GPU) of one replica: tensor x pipeline parallel size.

    The values are those vLLM takes (lax: a string of digits is an int); call after the types are checked.
    """
    args = m.engine_args
    return int(args.get("tensor_parallel_size") or 1) * int(args.get("pipeline_parallel_size") or 1)


def _gpu_problems(m: ModelConfig) -> list[tuple[str, str]]:
    gpus = m.deployment.num_gpus
    workers = workers_per_replica(m)
    if gpus == 0 or workers == 1:
        return []
    if not float(gpus).is_integer():
        return [
            (
                "deployment.num_gpus",
                f"{gpus:g} is a fraction of a GPU, but tensor_parallel_size x pipeline_parallel_size is {workers}: "
                "each of vLLM's workers needs a whole GPU of the replica",
            )
        ]
    if gpus < workers:
        return [
            (
                "deployment.num_gpus",
                f"{gpus:g} GPU(s) for tensor_parallel_size x pipeline_parallel_size = {workers} vLLM workers: "
                f"the replica holds the GPUs of all its workers (set num_gpus: {workers})",
            )
        ]
    return []


def _simulator_problems(m: ModelConfig) -> list[tuple[str, str]]:
    from serving.engine.simulator import SimulatorConfig

    problems: list[tuple[str, str]] = []
    if m.tool_parser is not None:
        problems.append(("tool_parser", "the simulator has its own (remove it)"))
    known = {f.name for f in dataclasses.fields(SimulatorConfig)}
    unknown = [k for k in m.engine_args if k not in known]
    problems += [
        (f"engine_args.{k}", f"unknown simulator engine argument '{k}'{did_you_mean(k, known)}") for k in unknown
    ]
    if not unknown:
        try:
            SimulatorConfig(**m.engine_args)
        except (TypeError, ValueError) as exc:
            problems.append(("engine_args", str(exc)))
    return problems


def check_serve_config(path: str | Path) -> dict[str, Any]:
    """`load_serve_config` plus what the engines would refuse (`check_engine_args`): the checks of the config
    and its engines that need neither Ray nor an engine (serving/check.py adds Ray's, and the renderer's)."""
    data = load_serve_config(path)
    for i, cfg in enumerate(app_configs(data)):
        check_engine_args(cfg, f"{path} (applications[{i}].args)")
    return data
