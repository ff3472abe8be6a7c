"""`python -m serving check FILE [--k8s KIND]`: every rule `serve run` and the renderer apply, before either.

A config that passes here is not refused later for its content. The rules come from
where they are enforced, not from copies:

1. the config tree (`serving.config`) and what the engines refuse (`serving.engine.factory`:
   `engine_args` keys and value types from a table of vLLM's own, tool parsers, GPUs against
   tensor x pipeline parallel size; simulator arguments);
2. Ray Serve's: the file against Ray's `ServeDeploySchema` (what `serve run FILE` validates first),
   keys Ray would silently ignore, then each of our applications built as Serve's controller builds
   it (`serving.deployments.app.build_from_config` and Ray's `build_app`: every deployment's options
   through Ray's own validation), and the file's `deployments:` overrides applied to them; a port the
   direct ingress and Serve's proxy would share (serve run takes it, and splits connections between them;
   no proxy with `proxy_location: Disabled`);
3. Kubernetes: the renderer (`serving_k8s.render.build_objects`, its `RenderError`s) for `--k8s KIND`,
   and for a file the repository renders (`serving_k8s.render.TARGETS`) with that target's kind. A laptop
   config is not held to cluster rules unless asked.

No engine, no Ray cluster: Ray is imported (about a second) but never started or connected to, and vLLM
is not imported (serving/engine/engine_arg_types.py). Called in a process where Ray is already initialized
(connected to a cluster), the check does not build the applications (building registers them with the
cluster it is connected to): it says so in a note, and checks the rest. The API keys a config names are the environment's,
not the file's: their absence here is a note, not an error.

This module is a command of the package, above every layer: it may import the deployments (Ray) and the
renderer, which the layers below may not.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from serving.config import (
    AppConfig,
    AuthConfig,
    ConfigError,
    did_you_mean,
    format_validation_error,
    is_our_app,
)
from serving.engine.factory import check_serve_config


@dataclass
class Report:
    path: str
    errors: list[str] = field(default_factory=list)  # "key.path: message", one per problem
    notes: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)


def check(path: str | Path, k8s_kinds: list[str] | None = None) -> Report:
    """Check one Serve config file; `k8s_kinds`: the renderer's kinds to hold it to (None: those it is rendered
    with in this repository, if any)."""
    report = Report(str(path))
    try:
        data = check_serve_config(path)
    except ConfigError as exc:
        report.errors += _config_error_lines(str(exc))
        return report
    report.checked.append("config and engine_args")
    report.errors += ray_problems(data, report)
    if not report.errors:
        report.checked.append("Ray Serve" if LIVE_RAY_NOTE not in report.notes else "Ray Serve (not the build)")
    kinds = k8s_kinds if k8s_kinds is not None else rendered_kinds(path)
    if kinds and not report.errors:
        for kind in kinds:
            problems = k8s_problems(path, kind)
            report.errors += [f"Kubernetes (--k8s {kind}): {p}" for p in problems]
        if not report.errors:
            report.checked.append(f"Kubernetes ({', '.join(kinds)})")
    return report


def _config_error_lines(text: str) -> list[str]:
    """A ConfigError's problems as key paths from the file's top: its first line names the file and the
    application ("invalid config in F (applications[0].args):"), the others are paths under it."""
    first, *rest = text.splitlines()
    m = re.search(r"\(applications\[(\d+)\]\.args\):$", first)
    if not rest:
        return [first.split(": ", 1)[-1]]
    prefix = f"applications.{m.group(1)}.args." if m else ""
    return [prefix + line.strip() for line in rest]


# -- Ray Serve --------------------------------------------------------------------------------------


LIVE_RAY_NOTE = (
    "Ray is initialized in this process: the applications were not built (building them would register "
    "them with its cluster); run `python -m serving check` in a process of its own for that part"
)


@contextlib.contextmanager
def _no_ray_connection() -> Iterator[None]:
    """Nothing here may start Ray or join a running cluster (Ray connects on first use unless told not to).

    Ray reads RAY_ENABLE_AUTO_CONNECT once, when it is first imported: in a process that imported Ray before,
    the variable alone changes nothing, so the flag Ray read it into is set too, for as long as this lasts."""
    before = os.environ.get("RAY_ENABLE_AUTO_CONNECT")
    os.environ["RAY_ENABLE_AUTO_CONNECT"] = "0"
    from ray._private import auto_init_hook  # imported after the variable is set: a first import reads it

    flag = "enable_auto_connect"
    had_flag = hasattr(auto_init_hook, flag)
    flag_before = getattr(auto_init_hook, flag, None)
    if had_flag:
        setattr(auto_init_hook, flag, False)
    try:
        yield
    finally:
        if had_flag:
            setattr(auto_init_hook, flag, flag_before)
        if before is None:
            os.environ.pop("RAY_ENABLE_AUTO_CONNECT", None)
        else:
            os.environ["RAY_ENABLE_AUTO_CONNECT"] = before


def ray_problems(data: dict[str, Any], report: Report) -> list[str]:
    with _no_ray_connection():
        import ray
        from ray.serve.schema import ServeDeploySchema

        try:
            schema = ServeDeploySchema.model_validate(data)
        except ValidationError as exc:
            return [line.strip() for line in format_validation_error(exc, "", ServeDeploySchema).splitlines()[1:]]
        problems = unknown_ray_keys(data, ServeDeploySchema)
        problems += port_problems(data)
        if ray.is_initialized():  # a live cluster: nothing of the check may reach it
            report.notes.append(LIVE_RAY_NOTE)
            return problems
        for i, (app, app_schema) in enumerate(zip(data["applications"], schema.applications, strict=True)):
            if is_our_app(app):
                problems += [f"applications.{i}.{p}" for p in _build_problems(app_schema, report)]
        return problems


# Mappings Ray passes on as they are (our app's args are checked by our models).
_FREE_FORM = {"args", "runtime_env", "user_config"}


def unknown_ray_keys(data: Any, model: type[BaseModel], path: str = "") -> list[str]:
    """Keys Ray Serve's schema does not have. Its models keep unknown keys (forward compatibility), so `serve run`
    ignores a misspelt `http_option` or `route_prefx` without a word."""
    if not isinstance(data, dict):
        return []
    names = {f.alias or n: n for n, f in model.model_fields.items()} | {n: n for n in model.model_fields}
    problems = []
    for key, value in data.items():
        where = f"{path}{key}"
        if key not in names:
            problems.append(f"{where}: unknown key '{key}' (Ray Serve would ignore it){did_you_mean(key, names)}")
            continue
        if key in _FREE_FORM:
            continue
        sub = _model_of(model.model_fields[names[key]].annotation)
        if sub is None:
            continue
        items = list(enumerate(value)) if isinstance(value, list) else [(None, value)]
        for j, item in items:
            problems += unknown_ray_keys(item, sub, f"{where}.{j}." if j is not None else f"{where}.")
    return problems


def _model_of(annotation: Any) -> type[BaseModel] | None:
    import typing

    for _ in range(3):
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            return annotation
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if not args:
            return None
        annotation = next((a for a in args if isinstance(a, type) and issubclass(a, BaseModel)), args[0])
    return None


def port_problems(data: dict[str, Any]) -> list[str]:
    """Ports two servers of one node would both bind: Serve's proxy (`http_options.port`, on every node) and each
    application's direct ingress (`ingress.port`) and fixed peer port (`ingress.peer_port`). `serve run` does not
    refuse it: Serve's proxy binds with SO_REUSEPORT (SERVE_SOCKET_REUSE_PORT_ENABLED, on by default), as the
    direct ingress does, so both listen and each connection reaches one of them by chance (the renderer refuses
    the same for a port it exposes). With `proxy_location: Disabled` Serve starts no proxy: its port is free."""
    from serving.config import AppConfig

    taken: dict[int, str] = {}
    if data.get("proxy_location") != "Disabled":
        http_port = int((data.get("http_options") or {}).get("port", 8000))
        taken[http_port] = "http_options.port (Serve's proxy)"
    problems = []
    for i, app in enumerate(data["applications"]):
        if not is_our_app(app):
            continue
        ingress = AppConfig.model_validate(app.get("args") or {}).ingress
        if ingress.mode != "direct":
            continue
        ports = [("port", ingress.port)] + ([("peer_port", ingress.peer_port)] if ingress.peer_port else [])
        for key, port in ports:
            where = f"applications.{i}.args.ingress.{key}"
            if port in taken:
                problems.append(
                    f"{where}: {port} is also {taken[port]}: both bind it with SO_REUSEPORT, and the kernel "
                    "would split the connections between the two at random"
                )
            else:
                taken[port] = where
    return problems


def _build_problems(app_schema: Any, report: Report) -> list[str]:
    """Our application built as Serve's controller builds it, without a cluster; then the file's overrides.
    Ray's warnings while building (what `serve run` would log) become notes."""
    from serving.api.security import AuthSetupError, load_api_keys
    from serving.config import parse_app_args

    cfg = parse_app_args(app_schema.args or {})
    try:
        load_api_keys(cfg.auth)
    except AuthSetupError as exc:
        report.notes.append(f"application '{app_schema.name}': on this machine serve run would refuse: {exc}")
    api_log = logging.getLogger("serving.api.app")  # it warns of an open API: the build's is ours (below)
    level = api_log.level
    api_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            problems = _built(cfg, app_schema)
    finally:
        api_log.setLevel(level)
    notes = {
        f"application '{app_schema.name}': Ray Serve warns: {w.message}"
        for w in caught
        if w.category is not DeprecationWarning
    }
    report.notes += sorted(notes)
    return problems


def _built(cfg: AppConfig, app_schema: Any) -> list[str]:
    from ray import serve
    from ray.serve._private.build_app import build_app

    from serving.deployments.app import build_from_config, llm_deployment_options
    from serving.deployments.llm_server import LLMServer

    # Each model's deployment on its own first, so that a refusal names the model.
    problems = []
    for k, m in enumerate(cfg.models):
        try:
            serve.deployment(LLMServer).options(**llm_deployment_options(m, cfg.ingress))
        except Exception as exc:  # Ray's own validation: TypeError, ValueError, RayServeException
            problems.append(f"args.models.{k}.deployment: Ray Serve refuses this deployment: {_exc_text(exc)}")
    if problems:
        return problems
    # The API keys come from the environment (a note above): the build must not depend on them.
    open_cfg: AppConfig = cfg.model_copy(update={"auth": AuthConfig(mode="open", api_keys_env=None)})
    try:
        built = build_app(build_from_config(open_cfg), name=app_schema.name, default_runtime_env={})
        built.validate_single_fastapi_ingress()
    except Exception as exc:
        return [f"args: Ray Serve refuses the application built from it: {_exc_text(exc)}"]
    deployments = {d.name: d for d in built.deployments}
    allowed = set(inspect.signature(type(next(iter(deployments.values()))).options).parameters) - {"self", "name"}
    for j, override in enumerate(app_schema.deployments):
        where = f"deployments.{j}"
        if override.name not in deployments:
            problems.append(
                f"{where}.name: no deployment '{override.name}' in this application"
                f"{did_you_mean(override.name, deployments)} (it has: {', '.join(sorted(deployments))})"
            )
            continue
        options = {k: v for k, v in override.model_dump(exclude_unset=True).items() if k in allowed}
        try:
            deployments[override.name].options(**options)
        except Exception as exc:
            problems.append(f"{where}: Ray Serve refuses these options for '{override.name}': {_exc_text(exc)}")
    return problems


def _exc_text(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors(include_url=False)
        )
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


# -- Kubernetes ---------------------------------------------------------------------------------------


def rendered_kinds(path: str | Path) -> list[str]:
    """The renderer's kinds this file is rendered with in this repository (none for any other file)."""
    try:
        from serving_k8s import render
    except ImportError:  # an install without the renderer
        return []
    resolved = Path(path).resolve()
    kinds = []
    for target in render.TARGETS:
        if (render.REPO_ROOT / target.config).resolve() == resolved and target.kind not in kinds:
            kinds.append(target.kind)
    return kinds


def k8s_kinds() -> list[str]:
    try:
        from serving_k8s import render
    except ImportError:
        return []
    return list(render.KINDS)


def k8s_problems(path: str | Path, kind: str) -> list[str]:
    """What the renderer refuses about this config for `kind`, as it says it (its rules, not a copy)."""
    try:
        from serving_k8s import render
    except ImportError:
        return ["the renderer (serving_k8s) is not installed here"]
    try:
        render.build_objects(Path(path).resolve(), kind)
    except render.RenderError as exc:
        return [str(exc).removeprefix(f"{Path(path).resolve()}: ")]
    except ConfigError as exc:
        return _config_error_lines(str(exc))
    return []
