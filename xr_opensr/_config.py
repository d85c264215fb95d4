"""The one loader of every config dataclass (model configs, training recipes, data, degradation, scene styles).

:func:`load_config` checks a JSON object against a dataclass's field annotations before anything is
built: keys (unknown ones rejected, missing ones required unless defaults apply), types, and the
bounds, choices and tuple lengths a class declares in its :class:`Rules`. Every problem is reported by
name, in one :class:`~xr_opensr.errors.ConfigError`.

This module imports neither torch nor numpy: the torch-free parts of the package (``xr_opensr.testing``)
load their configs with it too. A class with rules either registers them (:func:`register_rules`; needed
when the class is nested in another config) or passes them to :func:`load_config`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError, ModelError

__all__ = ["MAX_LENGTH", "Config", "Rules", "check_fields", "load_config", "plain", "register_rules"]

#: most entries of a tuple (bands, channel multipliers, ...), unless a class's rules say otherwise
MAX_LENGTH = 16


@dataclass(frozen=True)
class Rules:
    """What :func:`load_config` checks of one config class beyond its field annotations.

    Attributes
    ----------
    optional : keys a config may leave out (they take the class default) when ``defaults=False``;
        all others are then required.
    bounds : inclusive (low, high) of numbers, and of every entry of a tuple of numbers, per key.
    choices : the allowed strings of a key.
    max_length : most entries of a tuple field; None: any number.
    keys_name : how the unknown-key error names this class's keys (``"unknown degradation keys
        [...]"``); None: ``"unknown keys in <where>: [...]"``.
    """

    optional: frozenset[str] = frozenset()
    bounds: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    choices: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    max_length: int | None = MAX_LENGTH
    keys_name: str | None = None


_RULES: dict[type, Rules] = {}


def register_rules(kind: type, rules: Rules) -> None:
    """Make :func:`load_config` check ``kind`` (a dataclass), wherever it is nested, with ``rules``."""
    _RULES[kind] = rules


def load_config(kind: type, data: Any, where: str, *, defaults: bool = False, rules: Rules | None = None) -> Any:
    """The one loader of config dataclasses (model configs, their parts, training recipe sections).

    Checks ``data`` (a JSON object) against the fields of ``kind`` before anything is built:
    unknown keys, missing keys (all are required unless ``defaults`` or listed as optional for
    ``kind``), the type of every value (from the field annotations; nested dataclasses recursively;
    lists become tuples; an int is accepted for a float), bounds and choices. All problems are
    reported at once, by key, in one :class:`~xr_opensr.errors.ConfigError`.

    Parameters
    ----------
    kind : a dataclass.
    data : mapping of field name -> JSON value.
    where : what ``data`` is, for the messages (e.g. ``"model config 'denoiser'"``).
    defaults : missing keys take the dataclass defaults (training recipes), instead of being errors.
    rules : the checks of ``kind`` beyond its annotations (default: those registered with
        :func:`register_rules`, else none).
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where} must be a JSON object, got {type(data).__name__}")
    rules = rules if rules is not None else _RULES.get(kind, Rules())
    fields = {f.name: f for f in dataclasses.fields(kind) if f.init}
    hints = typing.get_type_hints(kind)
    problems = _key_problems(data, fields, where, rules, defaults)
    kwargs = {}
    for name, value in data.items():
        if name in fields:
            try:
                kwargs[name] = _check_value(rules, name, value, hints[name], where, defaults)
            except ConfigError as err:
                problems.append(str(err))
    if problems:
        raise ConfigError("; ".join(problems))
    try:
        return kind(**kwargs)
    except ConfigError:
        raise
    except (ModelError, TypeError, ValueError, ZeroDivisionError) as err:
        text = str(err)  # a class's own check names itself ("invalid data config: ..."): not said twice
        raise ConfigError(text if text.startswith("invalid ") else f"invalid {where}: {text}") from err


def check_fields(config: Any, where: str) -> list[str]:
    """The problems of the fields of a built dataclass ``config`` without nested configs (types, and
    the bounds and choices of its registered rules), as :func:`load_config` finds them in a JSON
    object: for a class that checks a direct construction too."""
    rules, hints, problems = _RULES.get(type(config), Rules()), typing.get_type_hints(type(config)), []
    for f in dataclasses.fields(config):
        try:
            _check_value(rules, f.name, getattr(config, f.name), hints[f.name], where, True)
        except ConfigError as err:
            problems.append(str(err))
    return problems


def plain(value: Any) -> Any:
    """A JSON-able copy of a config: dataclasses as dicts, tuples as lists (recursively)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    return value


class Config:
    """Base of the config dataclasses: :meth:`from_dict` by :func:`load_config` and :meth:`to_dict`
    (:func:`plain`, its inverse). A class names itself for the messages (``WHERE``); ``RULES``: its
    rules unless registered; ``DEFAULTS``: missing keys take the class defaults (training sections)."""

    WHERE: typing.ClassVar[str] = "config"
    RULES: typing.ClassVar[Rules | None] = None
    DEFAULTS: typing.ClassVar[bool] = True

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Any:
        """Inverse of :meth:`to_dict`, checked by :func:`load_config`: unknown keys and wrong types or
        values raise ``ConfigError`` (a ``ValueError``) naming the key."""
        return load_config(cls, data, cls.WHERE, defaults=cls.DEFAULTS, rules=cls.RULES)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (:func:`plain`)."""
        return plain(self)


def _key_problems(data: Mapping[str, Any], fields: Mapping[str, Any], where: str, rules: Rules,
                  defaults: bool) -> list[str]:
    """The unknown and the missing keys of ``data``, as messages."""
    problems = []
    unknown = sorted(map(str, set(data) - set(fields)))
    if unknown:
        said = f"unknown {rules.keys_name} keys {unknown}" if rules.keys_name else f"unknown keys in {where}: {unknown}"
        problems.append(f"{said}; expected a subset of {sorted(fields)}")
    optional = set(fields) if defaults else rules.optional
    missing = [name for name in fields if name not in data and name not in optional]
    if missing:
        problems.append(f"missing keys in {where}: {missing} (no default is assumed for them)")
    return problems


def _check_value(rules: Rules, name: str, value: Any, hint: Any, where: str, defaults: bool) -> Any:
    """``value`` of field ``name`` checked against its annotation ``hint``, bounds and choices."""
    label = _key(where, name)
    if dataclasses.is_dataclass(hint):
        return load_config(hint, value, label, defaults=defaults)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):  # e.g. str | None
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        for option in options[:-1]:
            with contextlib.suppress(ConfigError):
                return _check_value(rules, name, value, option, where, defaults)
        return _check_value(rules, name, value, options[-1], where, defaults)
    if origin is tuple:
        return _check_tuple(rules, name, value, args, where, defaults)
    if origin is dict or hint is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{label} must be a JSON object, got {type(value).__name__}")
        if len(args) != 2:
            return dict(value)
        return {k: _check_value(rules, name, v, args[1], where, defaults) for k, v in value.items()}
    if hint is Any:
        return value
    value = _scalar(value, hint, label)
    choices = rules.choices.get(name)
    if choices is not None and value not in choices:
        raise ConfigError(f"{label} must be one of {list(choices)}, got {value!r}")
    lo, hi = rules.bounds.get(name, (-math.inf, math.inf))
    if isinstance(value, int | float) and not isinstance(value, bool) and not lo <= value <= hi:
        raise ConfigError(f"{label} must be in [{lo:g}, {hi:g}], got {value!r}")
    return value


def _check_tuple(rules: Rules, name: str, value: Any, args: tuple[Any, ...], where: str, defaults: bool) -> tuple:
    """A JSON list checked against ``tuple[X, ...]`` (at most ``rules.max_length`` entries) or ``tuple[X, Y]``."""
    label = _key(where, name)
    if not isinstance(value, list | tuple):
        raise ConfigError(f"{label} must be a list, got {type(value).__name__} {value!r}")
    items = args[:1] * len(value) if len(args) == 2 and args[1] is Ellipsis else args
    too_long = rules.max_length is not None and len(value) > rules.max_length
    if len(items) != len(value) or too_long:
        size = f"{len(args)} entries" if items is args else f"at most {rules.max_length} entries"
        raise ConfigError(f"{label} must have {size}, got {len(value)}")
    return tuple(_check_value(rules, name, v, t, where, defaults) for v, t in zip(value, items))


def _scalar(value: Any, hint: Any, label: str) -> Any:
    """A JSON scalar checked against ``bool``, ``int``, ``float`` or ``str`` (float: int accepted, finite)."""
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, int | float) and not isinstance(value, bool),
        str: isinstance(value, str | os.PathLike),  # a path object for a path field, as before
    }
    if hint not in ok:
        raise ConfigError(f"{label}: unsupported annotation {hint!r} (a bug in xr-opensr)")
    if not ok[hint]:
        raise ConfigError(f"{label} must be {hint.__name__}, got {type(value).__name__} {value!r}")
    if hint is float:
        if not math.isfinite(value):
            raise ConfigError(f"{label} must be a finite number, got {value!r}")
        return float(value)
    return os.fspath(value) if hint is str else value


def _key(where: str, name: str) -> str:
    """``"model config"``, ``"denoiser"`` -> ``"model config 'denoiser'"``; one level down: ``"... 'a.b'"``."""
    return f"{where[:-1]}.{name}'" if where.endswith("'") else f"{where} '{name}'"
