"""The pool's settings and their validation.

Kept free of Django so the pool core can be tested with a fake driver; the Django
layer (``django_poolbackend.settings``) adds the one key only its system checks
read and turns a :class:`ConfigError` into an ``ImproperlyConfigured`` that names
the alias. Every field here is one the pool itself reads.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any, Self

RESET_POLICIES = ("rollback", "full")
#: When a borrower gives its connection back: at its end, or between transactions.
RELEASE_MODES = ("request", "transaction")

#: The largest number of seconds any seconds key accepts: the longest wait a
#: ``threading`` lock accepts on this platform (about 292 years on Linux, 49 days on
#: Windows), in whole seconds. ``timeout`` is handed to such a wait, where a larger
#: value raises ``OverflowError``; the other keys share the bound so that one rule
#: covers every seconds key. A value that large means "never", which each key
#: already spells otherwise (``None``, ``0`` or ``False``).
MAX_SECONDS = math.floor(threading.TIMEOUT_MAX)


class ConfigError(ValueError):
    """One bad setting: which key, what was given, what is allowed."""

    def __init__(self, key: str | None, value: Any, allowed: str) -> None:
        self.key = key
        self.value = value
        self.allowed = allowed
        super().__init__(f"{key}={shown(value)}: {allowed}")


def shown(value: Any) -> str:
    """*value* as a message shows it: its repr, except where that would be unreadable
    or fail. An int of thousands of digits is described by its size (Python refuses
    to convert one of more than 4300 digits to text), and a repr that raises or runs
    past 200 characters is replaced or cut."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        digits = int(value.bit_length() * math.log10(2)) + 1
        sign = "a negative" if value < 0 else "an"
        return f"{sign} integer of about {digits} digits"
    try:
        text = repr(value)
    except Exception:
        return f"<a {type(value).__name__} that can't be shown>"
    return text if len(text) <= 200 else text[:199] + "…"


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
    #: "request": back when Django closes the connection; "transaction": also
    #: between the borrower's transactions (the Django layer does that part).
    release: str = "request"

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> Self:
        """Validate every key, in a stable order, so the first error is reproducible."""
        if not isinstance(raw, Mapping):
            raise ConfigError(None, raw, "must be a dict of pool settings")
        known = [f.name for f in fields(cls)]
        for key in raw:
            if key not in known:
                raise ConfigError(key, raw[key], "unknown key; allowed keys: " + ", ".join(known))
        values = {key: cls.validate(key, raw[key]) for key in known if key in raw}
        config = cls(**values)
        if config.min_size > config.max_size:
            raise ConfigError(
                "min_size",
                config.min_size,
                f"must not be greater than max_size ({config.max_size})",
            )
        return config

    @classmethod
    def validate(cls, key: str, value: Any) -> Any:
        """One key's value, checked and normalised, or a :class:`ConfigError`.

        A layer above that reads more keys from the same dict (the Django layer's
        ``expected_processes``, which only its system checks read) subclasses this
        class with fields of its own and extends this method for them, so that
        every key is still checked in one pass, in field order, before the sizes
        are compared.
        """
        return _VALIDATORS[key](key, value)

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
    # A value above MAX_SECONDS gets the whole range, so the message says what is
    # allowed at both ends; every other mistake keeps the shorter message.
    too_large = f"must be a number of seconds {bound} and at most {MAX_SECONDS}" + (
        ", or None" if optional else ""
    )

    def check(key: str, value: Any) -> float | None:
        if value is None and optional:
            return None
        if not _is_number(value) or not (value > 0 if positive else value >= 0):
            # NaN fails both comparisons, so it lands here.
            raise ConfigError(key, value, allowed)
        if value > MAX_SECONDS:
            # Infinity, and an int too large for a float, land here: both are
            # compared exactly, never converted.
            raise ConfigError(key, value, too_large)
        return float(value)

    return check


def _is_number(value: Any) -> bool:
    """An int or a float, but not a bool (``True`` is an int to Python)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _pre_ping(key: str, value: Any) -> bool | float:
    if isinstance(value, bool):
        return value
    if _is_number(value) and 0 <= value <= MAX_SECONDS:
        return float(value)
    if _is_number(value) and value > MAX_SECONDS:
        raise ConfigError(
            key,
            value,
            f"must be True, False or a number of seconds >= 0 and at most {MAX_SECONDS} "
            "of idleness",
        )
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


def _release(key: str, value: Any) -> str:
    if isinstance(value, str) and value in RELEASE_MODES:
        return value
    raise ConfigError(key, value, 'must be "request" or "transaction"')


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
    "release": _release,
}
