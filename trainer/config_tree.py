"""Typed config trees: nested dataclasses loaded from YAML, with dotted command-line overrides.

Every layer declares its own section as a dataclass (fields documented where declared, ranges checked
in ``__post_init__``); this module only knows how to fill such a tree from plain data and refuse what
does not fit, naming the key and where it came from (the file or the override).
"""
from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

import yaml

T = TypeVar("T")
_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


class ConfigError(ValueError):
    """A config value that cannot be accepted; the message names the key and its source."""


def load_config(cls: type[T], path: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> T:
    """Build ``cls`` from a YAML file (or its defaults) and ``key.sub=value`` overrides."""
    source = str(path) if path is not None else "<defaults>"
    raw: Any = {}
    if path is not None:
        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except OSError as err:
            raise ConfigError(f"{source}: cannot read config: {err.strerror}") from err
        except yaml.YAMLError as err:
            raise ConfigError(f"{source}: not valid YAML: {err}") from err
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections")
    overridden: dict[str, str] = {}
    for item in overrides:
        key = apply_override(raw, item)
        overridden[key] = item
    return from_dict(cls, raw, _Sources(source, overridden))


def apply_override(raw: dict, item: str) -> str:
    """Set ``a.b.c=value`` in a nested dict (value parsed as YAML); returns the dotted key."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override '{item}': expected dotted.key=value")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override '{item}': value is not valid YAML: {err}") from err
    if _has_key_without_value(value):
        # YAML reads {255:1} as one key, 255:1 (a base-60 number, 15301), with no value.
        raise ConfigError(f"override '{item}': a mapping key without a value (YAML reads {{255:1}} as one key: "
                          "write a space after each ':', as in {255: 1})")
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override '{item}': '{part}' is a value, not a section")
        node = child
    node[parts[-1]] = value
    return key


def _has_key_without_value(value: Any) -> bool:
    if isinstance(value, dict):
        return any(v is None or _has_key_without_value(v) for v in value.values())
    return isinstance(value, list) and any(_has_key_without_value(v) for v in value)


@dataclasses.dataclass
class _Sources:
    file: str
    overrides: dict[str, str]

    def of(self, key: str) -> str:
        """Where ``key`` (or the section that holds it) was set: an override or the file."""
        probe = key
        while probe:
            if probe in self.overrides:
                return f"command-line override '{self.overrides[probe]}'"
            probe = probe.rpartition(".")[0]
        return self.file

    def of_section(self, section: str) -> str:
        """Where a section's values came from, for a check across its fields (``__post_init__``): the
        override that set the section, else the file with the overrides that set keys inside it."""
        direct = self.of(section)
        if direct != self.file:
            return direct
        inside = [item for key, item in self.overrides.items() if section == "config" or key.startswith(f"{section}.")]
        if not inside:
            return self.file
        return (f"{self.file} with command-line override{'s' if len(inside) > 1 else ''} "
                + ", ".join(f"'{item}'" for item in inside))


def from_dict(cls: type[T], data: Any, sources: _Sources | str, prefix: str = "") -> T:
    """Fill dataclass ``cls`` from ``data``, checking every key and type against its annotations."""
    if isinstance(sources, str):
        sources = _Sources(sources, {})
    where = prefix.rstrip(".") or "config"
    if not isinstance(data, dict):
        raise ConfigError(f"{sources.of(where)}: '{where}' must be a mapping, got {type(data).__name__}")
    hints = get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}{name}"
        if name not in known:
            raise ConfigError(
                f"{sources.of(key)}: unknown key '{key}' (known in '{where}': {', '.join(sorted(known))})")
        kwargs[name] = _coerce(hints[name], value, key, sources)
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"{sources.of_section(where)}: invalid '{where}': {err}") from err


def _coerce(hint: Any, value: Any, key: str, sources: _Sources) -> Any:
    origin, args = get_origin(hint), get_args(hint)

    def refuse(expected: str) -> ConfigError:
        return ConfigError(f"{sources.of(key)}: '{key}' must be {expected}, got {value!r}")

    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, sources, prefix=f"{key}.")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        for option in options:
            try:
                return _coerce(option, value, key, sources)
            except ConfigError:
                continue
        raise refuse(" or ".join(_name(a) for a in args))
    if origin is Literal:
        if value not in args:
            raise refuse("one of " + ", ".join(repr(a) for a in args))
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise refuse(f"a list of {_name(args[0]) if args else 'values'}")
        item = args[0] if args else Any
        items = [_coerce(item, v, f"{key}[{i}]", sources) for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise refuse("a mapping")
        kt, vt = args or (Any, Any)
        return {_coerce(kt, k, f"{key}.{k}", sources): _coerce(vt, v, f"{key}.{k}", sources)
                for k, v in value.items()}
    if hint is Any:
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise refuse("true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise refuse("an integer")
        return value
    if hint is float:
        # YAML 1.1 reads `1e-4` (no dot) as a string; take it as the number everyone means.
        if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
            return float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise refuse("a number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise refuse("a string")
        return value
    raise ConfigError(f"{key}: unsupported annotation {hint!r}")


def _name(hint: Any) -> str:
    return "null" if hint is type(None) else getattr(hint, "__name__", str(hint))


def to_dict(cfg: Any) -> dict:
    """The plain-data form of a config tree (for YAML, MLflow params and checkpoints)."""
    return dataclasses.asdict(cfg)


def to_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def flatten(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """``{"data.clip_frames": 16, ...}``: the dotted form used for tracking params."""
    out: dict[str, Any] = {}
    for name, value in (to_dict(cfg) if dataclasses.is_dataclass(cfg) else cfg).items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{name}."))
        else:
            out[f"{prefix}{name}"] = value
    return out
