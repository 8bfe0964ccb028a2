"""Config loading shared by every command: YAML defaults, then a named recipe, then overrides.

YAML in `configs/` is data only. A recipe name such as `coinrun` resolves to
`configs/<group>/coinrun.yaml`, laid over `configs/<group>/defaults.yaml` (the shared layer, not
a recipe) when that exists; `key=value` overrides (dotted keys for nested dataclasses) come last.
Unknown keys are errors that name the key, so a typo never silently trains the wrong model.
Names mean one thing: a recipe named like a model preset (`tiny`, `coinrun`, `base`, `large`)
trains that preset (tests/worldsim/test_config.py checks every group).
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")
DEFAULTS = "defaults"  # the shared layer of each config group


def preset_path(group: str, name_or_path: str) -> Path:
    """`coinrun` -> the packaged configs/<group>/coinrun.yaml; an existing path is used as is."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.is_file():
        if not p.is_file():
            raise FileNotFoundError(f"config file not found: {p}")
        return p
    packaged = Path(str(resources.files("configs") / group / f"{name_or_path}.yaml"))
    if not packaged.is_file() or name_or_path == DEFAULTS:
        available = sorted(q.stem for q in packaged.parent.glob("*.yaml") if q.stem != DEFAULTS)
        raise FileNotFoundError(
            f"no {group} preset named {name_or_path!r}; available: {', '.join(available) or 'none'}"
        )
    return packaged


def load_yaml_layers(path: Path) -> dict[str, Any]:
    """defaults.yaml beside `path` (if any), with `path` laid over it."""
    merged: dict[str, Any] = {}
    base = path.parent / f"{DEFAULTS}.yaml"
    for layer in ([base] if base.is_file() and base != path else []) + [path]:
        data = yaml.safe_load(layer.read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(
                f"{layer}: a config file must hold a mapping, got {type(data).__name__}"
            )
        deep_update(merged, data)
    return merged


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """["model.width=128", "lr=1e-3"] -> nested dict; values are parsed as YAML scalars."""
    out: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r} is not of the form key=value")
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(raw)
    return out


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Build dataclass `cls` from a dict, recursing into nested dataclass fields; strict keys."""
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; valid keys are {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        ftype = hints[name]
        if dataclasses.is_dataclass(ftype) and isinstance(value, dict):
            value = from_dict(ftype, value, f"{where}.{name}")  # type: ignore[arg-type]
        kwargs[name] = _coerce(value, ftype, f"{where}.{name}")
    return cls(**kwargs)


def load_config(cls: type[T], group: str, preset: str, overrides: list[str]) -> T:
    data = load_yaml_layers(preset_path(group, preset))
    deep_update(data, parse_overrides(overrides))
    return from_dict(cls, data, where=f"{group}/{preset}")


def add_dataclass_flags(parser: argparse.ArgumentParser, cls: type, skip: set[str]) -> None:
    """One `--field-name` flag per dataclass field, defaulting to None so that only flags the
    user typed override the YAML preset."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        base = _scalar_type(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        parser.add_argument(flag, type=base, default=None, dest=f.name)


def flags_to_dict(ns: argparse.Namespace, cls: type, skip: set[str]) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)} - skip
    return {k: v for k, v in vars(ns).items() if k in names and v is not None}


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """YAML 1.1 reads `3e-4` as a string and `1` where a float is meant; fix both against the
    field's declared type, and name the key when the value cannot be one."""
    target = _scalar_type(tp)
    if value is None or target is str or isinstance(value, bool) or target not in (int, float):
        return value
    if target is float and isinstance(value, (int, str)):
        try:
            return float(value)
        except ValueError:
            pass
    elif target is int and isinstance(value, int):
        return value
    if isinstance(value, target):
        return value
    raise ValueError(f"{where}: expected {target.__name__}, got {value!r}")


def _scalar_type(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    return tp if tp in (int, float, str) else str


def preset_fields(preset: Any, overrides: dict[str, Any]) -> dict[str, Any]:
    """A model preset's fields (a dataclass) with a task's `model:` overrides laid over them,
    nested keys merged: what each training task turns into its model config."""
    fields = dataclasses.asdict(preset)
    deep_update(fields, overrides)
    return fields


def deep_update(dst: dict[str, Any], src: dict[str, Any]) -> None:
    """Lay `src` over `dst` in place, merging nested mappings key by key."""
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            deep_update(dst[k], v)
        else:
            dst[k] = v


class _Validated(typing.Protocol):
    def validate(self) -> None: ...


V = TypeVar("V", bound=_Validated)


def build_preset(
    presets: Mapping[str, Callable[[], V]], name: str, kind: str, overrides: dict[str, Any]
) -> V:
    """A fresh, validated copy of the `kind` preset `name` (e.g. "tokenizer", "coinrun") with
    top-level fields replaced by `overrides`; unknown names list the valid ones."""
    if name not in presets:
        raise ValueError(f"unknown {kind} preset {name!r}; choose one of {sorted(presets)}")
    cfg = dataclasses.replace(presets[name](), **overrides)  # type: ignore[type-var]
    cfg.validate()
    return cfg
