"""TOML tables into frozen dataclasses, every key checked: the one set of rules the config
file (`pushwire.config`) and app settings (`pushwire.apps.model`) are read with.

An unknown key or a wrong type raises `ConfigError` with one line naming where it was, the
key and the problem.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any


class ConfigError(Exception):
    """A configuration problem; its message is one line meant for the operator."""


def _check_type(where: str, key: str, value: Any, expected: Any) -> Any:
    if expected is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value
        if ok and not math.isfinite(value):
            raise ConfigError(f"{where}: key '{key}' must be a finite number, got {value!r}")
    elif expected is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, expected)
    if not ok:
        name = getattr(expected, "__name__", str(expected))
        raise ConfigError(f"{where}: key '{key}' must be of type {name}, got {value!r}")
    return value


def build(cls: Any, data: Mapping[str, Any], where: str, skip: tuple[str, ...] = ()) -> Any:
    """`cls(**data)`, each key known to `cls` (but those in `skip`) and of its field's type
    (str, int, float, bool, or a list of strings for a tuple[str, ...])."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a table, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in skip}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key in skip:
            continue
        f = fields.get(key)
        if f is None:
            raise ConfigError(f"{where}: unknown key '{key}' (known: {', '.join(fields)})")
        expected = {"str": str, "int": int, "float": float, "bool": bool}.get(
            str(f.type).split(" |")[0]
        )
        if expected is not None:
            value = _check_type(where, key, value, expected)
        elif str(f.type).startswith("tuple[str"):
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{where}: key '{key}' must be a list of strings")
            value = tuple(value)
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from None
