"""Config dataclasses from JSON objects, with one set of checks for every config file.

:func:`build` makes a dataclass from a JSON object (missing keys keep their defaults; how
``cfd3d generate --config`` and run folders read a config back), :func:`merged` replaces
the fields a JSON object names in an existing one (how ``cfd3d train-prior --config``
changes the defaults). Both check every value against its field's type hint
(:func:`typed`) and raise a one-line :class:`~cfd3d.errors.ConfigError` naming the key.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any

from cfd3d.errors import ConfigError
from cfd3d.text import QUOTE_CHARS, quote


def build(cls: type, data: Any, where: str) -> Any:
    """The dataclass ``cls`` from the JSON object ``data``; ``where`` names it in errors.

    Raises:
        ConfigError: not an object, unknown keys, values of the wrong type, or values the
            dataclass itself rejects.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a JSON object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(unknown)} in {where}")
    values = {k: typed(hints[k], v, f"{where}.{k}") for k, v in data.items()}
    try:
        return cls(**values)
    except ConfigError as exc:
        raise ConfigError(_shortened(str(exc), values)) from None
    except (TypeError, ValueError) as exc:  # a component's own check of its values
        raise ConfigError(f"invalid {where}: {exc}") from None


def merged(base: Any, data: Any, where: str) -> Any:
    """``base`` (a config dataclass) with the fields the JSON object ``data`` names
    replaced; nested dataclasses are merged in turn, so ``{"cameras": {"distance": ...}}``
    keeps the other camera settings.

    Raises:
        ConfigError: as :func:`build`; an unknown key's message lists the valid ones.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a JSON object, got {type(data).__name__}")
    hints = typing.get_type_hints(type(base))
    names = [f.name for f in dataclasses.fields(base)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(names)}"
        )
    values = {}
    for key, value in data.items():
        if dataclasses.is_dataclass(hints[key]):
            values[key] = merged(getattr(base, key), value, f"{where}.{key}")
        else:
            values[key] = typed(hints[key], value, f"{where}.{key}")
    try:
        return dataclasses.replace(base, **values)
    except (TypeError, ValueError) as exc:  # a config's own check of its values
        raise ConfigError(f"{where}: {exc}") from None


def typed(hint: Any, value: Any, where: str) -> Any:
    """The JSON ``value`` as type ``hint``: a number, int, bool or str, a tuple of them
    (from a JSON list), an optional one (``None`` from ``null``), or a dataclass (from an
    object, by :func:`build`). Other hints (``Literal``, ``Any``) pass the value on for the
    dataclass to check.

    Raises:
        ConfigError: the value does not have the hint's type.
    """
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return typed(args[0], value, where)
    if dataclasses.is_dataclass(hint):
        return build(hint, value, where)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where} must be a list, got {quote(repr(value))}")
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(typed(args[0], v, where) for v in value)
        if len(args) != len(value):
            raise ConfigError(f"{where} must have {len(args)} entries, got {quote(repr(value))}")
        return tuple(typed(a, v, where) for a, v in zip(args, value, strict=True))
    if hint is float:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ConfigError(f"{where} must be a number, got {quote(repr(value))}")
        if not math.isfinite(value):
            raise ConfigError(f"{where} must be a finite number, got {value!r}")
        return float(value)
    if hint in (int, str, bool) and (
        not isinstance(value, hint) or (hint is not bool and isinstance(value, bool))
    ):
        raise ConfigError(f"{where} must be of type {hint.__name__}, got {quote(repr(value))}")
    return value


def _shortened(message: str, values: dict[str, Any]) -> str:
    """``message`` with every long text value it repeats quoted briefly."""
    for value in values.values():
        if isinstance(value, str) and len(value) > QUOTE_CHARS:
            message = message.replace(value, quote(value))
    return message
