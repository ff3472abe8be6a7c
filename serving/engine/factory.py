"""Engines from a model's config: `make_engine` picks one, `check_engine_args` vets its arguments.

The config layer (`serving.config`) knows nothing of engines; this module reads
it. vLLM itself is imported only by `serving.engine.vllm_engine`, lazily.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from serving.config import BUILTIN_PREFIX, AppConfig, ConfigError, ModelConfig, app_configs, load_serve_config
from serving.engine.adapters import AdapterCatalog
from serving.engine.base import Engine


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
    """Reject engine_args keys that vLLM's AsyncEngineArgs does not have, and tool parsers it does not
    register (when vLLM is installed); a simulated model has no tool parser to choose."""
    for i, m in enumerate(cfg.models):
        if m.engine == "simulator" and m.tool_parser is not None:
            raise ConfigError(
                f"invalid config in {where}:\n  models.{i}.tool_parser: the simulator has its own (remove it)"
            )
    vllm_models = [m for m in cfg.models if m.engine == "vllm" and (m.engine_args or m.tool_parser)]
    if not vllm_models:
        return
    try:
        from serving.engine.vllm_engine import engine_arg_names, tool_parser_names

        known = engine_arg_names()
        parsers = tool_parser_names()
    except ImportError:
        return
    for i, m in enumerate(cfg.models):
        if m.engine != "vllm":
            continue
        unknown = sorted(set(m.engine_args) - known)
        if unknown:
            raise ConfigError(
                f"invalid config in {where}:\n  models.{i}.engine_args: unknown vLLM engine argument(s) {unknown}"
            )
        if m.tool_parser is not None and m.tool_parser not in parsers:
            raise ConfigError(
                f"invalid config in {where}:\n  models.{i}.tool_parser: vLLM has no tool parser "
                f"'{m.tool_parser}' (known: {', '.join(sorted(parsers))})"
            )


def check_serve_config(path: str | Path) -> dict[str, Any]:
    """`load_serve_config` plus the engine-argument check: what `python -m serving check` runs."""
    data = load_serve_config(path)
    for i, cfg in enumerate(app_configs(data)):
        check_engine_args(cfg, f"{path} (applications[{i}].args)")
    return data
