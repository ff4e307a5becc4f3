"""The pool's settings and their validation.

Kept free of Django so the pool core can be tested with a fake driver; the Django
layer (``django_poolbackend.conf``) turns a :class:`ConfigError` into an
``ImproperlyConfigured`` that names the alias.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

RESET_POLICIES = ("rollback", "full")


class ConfigError(ValueError):
    """One bad setting: which key, what was given, what is allowed."""

    def __init__(self, key: str | None, value: Any, allowed: str) -> None:
        self.key = key
        self.value = value
        self.allowed = allowed
        super().__init__(f"{key}={value!r}: {allowed}")


@dataclass(frozen=True, slots=True)
class PoolConfig:
    min_size: int = 0
    max_size: int = 10
    timeout: float = 10.0
    max_waiting: int = 0
    max_lifetime: float | None = 1800.0
    max_idle: float | None = 600.0
    max_uses: int = 0
    pre_ping: bool | float = 1.0
    reset: str | Callable[[Any], None] = "rollback"
    leak_timeout: float = 0.0
    connect_params: str | Callable[..., Any] | None = None
    #: How many processes serve this settings file (for the connection-limit
    #: system check only; the pool itself never reads it).
    expected_processes: int | None = None

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> PoolConfig:
        """Validate every key, in a stable order, so the first error is reproducible."""
        if not isinstance(raw, Mapping):
            raise ConfigError(None, raw, "must be a dict of pool settings")
        known = [f.name for f in fields(cls)]
        for key in raw:
            if key not in known:
                raise ConfigError(key, raw[key], "unknown key; allowed keys: " + ", ".join(known))
        values = {key: _VALIDATORS[key](key, raw[key]) for key in known if key in raw}
        config = cls(**values)
        if config.min_size > config.max_size:
            raise ConfigError(
                "min_size",
                config.min_size,
                f"must not be greater than max_size ({config.max_size})",
            )
        return config

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe view: callables appear by their dotted name, never by value."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if callable(value):
                value = f"{value.__module__}.{value.__qualname__}"
            out[f.name] = value
        return out


def _int(minimum: int) -> Callable[[str, Any], int]:
    def check(key: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ConfigError(key, value, f"must be an integer >= {minimum}")
        return value

    return check


def _seconds(*, optional: bool, positive: bool) -> Callable[[str, Any], Any]:
    bound = "> 0" if positive else ">= 0"
    allowed = f"must be a number of seconds {bound}" + (" or None" if optional else "")

    def check(key: str, value: Any) -> float | None:
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(key, value, allowed)
        if not math.isfinite(value) or value < 0 or (positive and value == 0):
            raise ConfigError(key, value, allowed)
        return float(value)

    return check


def _pre_ping(key: str, value: Any) -> bool | float:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and math.isfinite(value) and value >= 0:
        return float(value)
    raise ConfigError(key, value, "must be True, False or a number of seconds >= 0 of idleness")


def _reset(key: str, value: Any) -> str | Callable[[Any], None]:
    if isinstance(value, str) and (value in RESET_POLICIES or "." in value.strip(".")):
        return value
    if callable(value):
        reset: Callable[[Any], None] = value
        return reset
    raise ConfigError(
        key,
        value,
        'must be "rollback", "full" or the dotted path of a callable (connection)',
    )


def _optional_count(key: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(key, value, "must be an integer >= 1 or None")
    return value


def _dotted_or_none(key: str, value: Any) -> str | Callable[..., Any] | None:
    if value is None:
        return None
    if callable(value):
        hook: Callable[..., Any] = value
        return hook
    if isinstance(value, str) and "." in value.strip("."):
        return value
    raise ConfigError(key, value, "must be None or the dotted path of a callable")


_VALIDATORS: dict[str, Callable[[str, Any], Any]] = {
    "min_size": _int(0),
    "max_size": _int(1),
    "timeout": _seconds(optional=False, positive=False),
    "max_waiting": _int(0),
    "max_lifetime": _seconds(optional=True, positive=True),
    "max_idle": _seconds(optional=True, positive=True),
    "max_uses": _int(0),
    "pre_ping": _pre_ping,
    "reset": _reset,
    "leak_timeout": _seconds(optional=False, positive=False),
    "connect_params": _dotted_or_none,
    "expected_processes": _optional_count,
}
