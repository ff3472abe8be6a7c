"""Engines behind one contract (`base.Engine`); `make_engine` picks one from a model's config."""

from __future__ import annotations

import importlib
from pathlib import Path

from serving.config import BUILTIN_PREFIX, ModelConfig
from serving.engine.base import Engine


def resolve_source(source: str) -> str:
    """A builtin model is built (once) into the local cache; anything else is passed through."""
    if source.startswith(BUILTIN_PREFIX):
        name = source[len(BUILTIN_PREFIX):]
        if name != "tiny-llama":
            raise ValueError(f"unknown builtin model '{name}' (known: tiny-llama)")
        from serving.models.tiny_llama import ensure_tiny_llama

        return str(ensure_tiny_llama())
    path = Path(source).expanduser()
    return str(path) if path.exists() else source


def make_engine(cfg: ModelConfig) -> Engine:
    if cfg.engine == "vllm":
        from serving.engine.vllm_engine import VLLMEngine

        return VLLMEngine(resolve_source(cfg.source), cfg.id, cfg.engine_args)
    if cfg.engine == "simulator":
        from serving.engine.simulator import SimulatedEngine

        return SimulatedEngine.from_engine_args(cfg.engine_args)
    module_name, class_name = cfg.engine.split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(cfg)
