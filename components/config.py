"""Typed configuration: dataclasses loaded from YAML, overridden by `a.b=value` strings, validated.

Every pipeline declares one root dataclass. Unknown keys, wrong types and out-of-range values raise
ConfigError naming the key (with a close-match suggestion for typos). Ranges are declared per field
with `field(metadata={"range": (lo, hi)})` or `{"choices": (...)}`.
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from components.errors import ConfigError

T = TypeVar("T")


def _suggest(key: str, options: list[str]) -> str:
    close = difflib.get_close_matches(key, options, n=1, cutoff=0.5)
    return f"; did you mean '{close[0]}'?" if close else f"; known keys: {', '.join(sorted(options))}"


def _coerce(where: str, tp: Any, value: Any) -> Any:
    """Convert `value` to type `tp` or raise ConfigError naming `where`."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(where, a, value)
            except ConfigError as e:
                errors.append(e)
        raise errors[0] if errors else ConfigError(where, f"cannot be {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(where, f"value {value!r} is not allowed", f"one of {list(args)}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(where, f"got {type(value).__name__} {value!r}", "a mapping")
        return from_dict(tp, value, prefix=where + ".")
    if origin in (list, tuple):
        if isinstance(value, str):
            try:
                value = yaml.safe_load(value)
            except yaml.YAMLError as e:
                raise ConfigError(where, f"cannot parse {value!r} as a list", "a list such as [a, b]") from e
        if not isinstance(value, (list, tuple)):
            raise ConfigError(where, f"got {type(value).__name__} {value!r}", "a list")
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(f"{where}[{i}]", args[0], v) for i, v in enumerate(value))
        if origin is tuple and args:
            if len(args) != len(value):
                raise ConfigError(where, f"has {len(value)} items", f"{len(args)} items")
            return tuple(_coerce(f"{where}[{i}]", a, v) for i, (a, v) in enumerate(zip(args, value)))
        inner = args[0] if args else Any
        return [_coerce(f"{where}[{i}]", inner, v) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(where, f"got {type(value).__name__} {value!r}", "a mapping")
        kt, vt = args if args else (Any, Any)
        return {_coerce(where, kt, k): _coerce(f"{where}.{k}", vt, v) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(where, f"got {value!r}", "a boolean (true/false)")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(where, f"got boolean {value!r}", "an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                pass
        raise ConfigError(where, f"got {type(value).__name__} {value!r}", "an integer")
    if tp is float:
        return _finite_float(where, value)
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(where, f"got {type(value).__name__} {value!r}", "a string")
    return value


def _finite_float(where: str, value: Any) -> float:
    """`value` as a finite float: NaN slips through every range check and no field means anything by inf."""
    if isinstance(value, bool):
        raise ConfigError(where, f"got boolean {value!r}", "a number")
    try:
        number = float(value) if isinstance(value, (int, float, str)) else None
    except ValueError:
        number = None
    if number is None:
        raise ConfigError(where, f"got {type(value).__name__} {value!r}", "a number")
    if not math.isfinite(number):
        raise ConfigError(where, f"got {value!r}", "a finite number")
    return number


def _check_meta(where: str, f: dataclasses.Field, value: Any) -> None:
    rng = f.metadata.get("range")
    if rng is not None and value is not None:
        items = value if isinstance(value, (list, tuple)) else [value]
        lo, hi = rng
        for v in items:
            if (lo is not None and v < lo) or (hi is not None and v > hi):
                raise ConfigError(where, f"value {v!r} is out of range", f"a value in [{lo}, {hi}]")
    choices = f.metadata.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(where, f"value {value!r} is not allowed", f"one of {list(choices)}")


def from_dict(cls: type[T], data: dict, prefix: str = "") -> T:
    """Build dataclass `cls` from a (possibly partial) mapping, validating keys, types and ranges."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if not isinstance(key, str) or key not in fields:  # YAML also allows keys such as 1 or null
            raise ConfigError(f"{prefix}{key}", "unknown config key" + _suggest(str(key), list(fields)))
    kwargs = {}
    for name, value in data.items():
        where = f"{prefix}{name}"
        v = _coerce(where, hints[name], value)
        _check_meta(where, fields[name], v)
        kwargs[name] = v
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()
    return obj


def to_dict(cfg: Any) -> dict:
    """Plain nested dict of a config (tuples become lists), suitable for YAML/JSON."""
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """Flatten a nested mapping to dotted keys (for MLflow params)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _set_dotted(d: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    cur = d
    for p in parts[:-1]:
        nxt = cur.get(p)
        if not isinstance(nxt, dict):
            nxt = {}
            cur[p] = nxt
        cur = nxt
    cur[parts[-1]] = value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `a.b=value` strings (value parsed as YAML) onto a nested mapping."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(item, "override is not of the form key=value", "e.g. hml.lam=0.5")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        _set_dotted(data, key.strip(), value)
    return data


def load_yaml(path: str | Path) -> dict:
    """Read a YAML mapping, with clear errors for a missing or malformed file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(str(p), "config file not found", "an existing YAML file")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(str(p), f"malformed YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(str(p), f"top level is {type(data).__name__}", "a mapping")
    return data


def merge(base: dict, extra: dict) -> dict:
    """Deep-merge `extra` onto `base` (new dict)."""
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None,
                base: dict | None = None) -> T:
    """Defaults <- `base` (e.g. a preset) <- YAML file <- command-line overrides, then validate."""
    data: dict = dict(base or {})
    if path is not None:
        data = merge(data, load_yaml(path))
    data = apply_overrides(data, list(overrides or []))
    return from_dict(cls, data)


def config_hash(obj: Any, length: int = 12) -> str:
    """Stable content hash of a config (or any JSON-able object) for content-addressed stages."""
    if dataclasses.is_dataclass(obj):
        obj = to_dict(obj)
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]
