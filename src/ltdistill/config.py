"""Typed configs: dataclasses, YAML presets and validated ``key=value`` overrides.

A config is a (possibly nested) dataclass. Overrides use dotted keys
(``data.imbalance=50``, ``options.lr_img=10``); a bare key, or the dotted tail of a key,
is accepted when it names exactly one field anywhere in the tree (``imbalance=50``,
``experts.epochs=10`` for ``options.experts.epochs``). Unknown keys and values
that do not parse as the field's type raise :class:`ConfigError`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

from .errors import ConfigError

PRESET_DIR = Path(__file__).parent / "presets"


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Coerce ``value`` (a string from the CLI, or a YAML value) to type ``tp``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        errors = []
        for a in args:
            try:
                return _convert(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"bad value {value!r} for {key}: {'; '.join(errors)}")
    if origin in (list, tuple):
        (elem,) = typing.get_args(tp)[:1] or (Any,)
        if isinstance(value, str):
            value = [v for v in value.split(",") if v != ""]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} expects a list, got {value!r}")
        out = [_convert(v, elem, key) for v in value]
        return tuple(out) if origin is tuple else out
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{key} expects true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key} expects an integer, got {value!r}")
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key} expects an integer, got {value!r}") from None
        if f != int(f):
            raise ConfigError(f"{key} expects an integer, got {value!r}")
        return int(f)
    if tp is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key} expects a number, got {value!r}") from None
    if tp is str:
        return str(value)
    raise ConfigError(f"cannot set {key} of type {tp}")


def _paths(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted key -> type for every leaf field; recurses into dataclass-valued fields."""
    out = {}
    for name, tp in _field_types(type(obj)).items():
        value = getattr(obj, name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            out.update(_paths(value, f"{prefix}{name}."))
        else:
            out[prefix + name] = tp
    return out


def valid_keys(cfg: Any) -> list[str]:
    """All dotted keys an override may set on ``cfg``."""
    return sorted(_paths(cfg))


def set_key(cfg: Any, key: str, value: Any) -> Any:
    """Return a copy of ``cfg`` with dotted ``key`` set to ``value`` (validated)."""
    paths = _paths(cfg)
    if key not in paths:
        key = resolve_key(paths, key)
    head, _, rest = key.partition(".")
    if rest:
        return dataclasses.replace(cfg, **{head: set_key(getattr(cfg, head), rest, value)})
    return dataclasses.replace(cfg, **{head: _convert(value, paths[key], key)})


def _candidates(paths: dict | list, key: str) -> list[str]:
    """Keys ``key`` may mean: those ending in it (a bare name or a dotted tail), else those
    that start with its first part and end with its last (``options.lr_img`` for
    ``options.synthetic.lr_img``: a key named as it was before sections existed)."""
    tail = [p for p in paths if p.endswith("." + key)]
    if tail or "." not in key:
        return tail
    first, last = key.split(".", 1)[0], key.rsplit(".", 1)[1]
    return [p for p in paths if p.startswith(first + ".") and p.endswith("." + last)]


def resolve_key(paths: dict, key: str) -> str:
    """The one full key ``key`` names, or a :class:`ConfigError`."""
    if key in paths:
        return key
    matches = _candidates(paths, key)
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise ConfigError(f"ambiguous key {key!r}: say one of {matches}")
    raise ConfigError(f"unknown config key {key!r}; valid keys: {', '.join(sorted(paths))}")


def has_key(cfg: Any, key: str) -> bool:
    """Whether :func:`set_key` would find ``key`` (dotted, or a bare name of exactly one field)."""
    paths = _paths(cfg)
    return key in paths or len(_candidates(paths, key)) == 1


def deep_merge(base: dict, update: dict) -> dict:
    """A new dict: ``update`` merged into ``base`` key by key, recursing into nested
    mappings (a later preset changes only the keys it names, never a whole section)."""
    out = dict(base)
    for k, v in update.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def flatten(values: dict, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    out: dict[str, Any] = {}
    for k, v in values.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def apply_overrides(cfg: Any, overrides: list[str] | None) -> Any:
    """Apply ``key=value`` strings in order."""
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        k, v = item.split("=", 1)
        cfg = set_key(cfg, k.strip(), v.strip())
    return cfg


def apply_dict(cfg: Any, values: dict, prefix: str = "") -> Any:
    """Apply a nested dict (from YAML) to ``cfg``; unknown keys are errors."""
    for k, v in values.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            cfg = apply_dict(cfg, v, key + ".")
        else:
            cfg = set_key(cfg, key, v)
    return cfg


def to_dict(cfg: Any) -> dict:
    """Plain nested dict (safe for JSON and ``torch.load(weights_only=True)``)."""
    return dataclasses.asdict(cfg)


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_yaml(name_or_path: str) -> dict:
    """A preset by name (see :func:`list_presets`) or a YAML file by path."""
    import yaml

    path = Path(name_or_path)
    if not path.is_file():
        path = PRESET_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ConfigError(
            f"no config file or preset {name_or_path!r}; presets: {', '.join(list_presets())}"
        )
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"cannot parse {path}: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of keys to values")
    return data
