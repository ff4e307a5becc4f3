"""Reading ``DATABASES[alias]["POOL"]`` (or Django's ``OPTIONS["pool"]``) into a config.

:func:`prepare` turns an alias's settings into a :class:`PoolConfig`, or into the
``ImproperlyConfigured`` that says why there is none. The error's class tells the
system checks which id reports it: :class:`UnimportablePath` is ``E007``, any
other ``E001``. One parser serves the backend, the system checks and the docs'
error list, so a message reads the same wherever a user meets it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

from .core import config as core_config
from .core.config import RESET_POLICIES, ConfigError, shown


@dataclass(frozen=True, slots=True)
class PoolConfig(core_config.PoolConfig):
    """The core pool's settings, and the one ``POOL`` key that only the system
    checks read.

    The pool never reads ``expected_processes``, so the Django-free core does not
    have it; it is still a ``POOL`` key, validated with the others in the same
    pass (the first error stays the one it always was), listed among the allowed
    keys, and shown in the figures with the settings in effect.
    """

    #: How many processes serve this settings file, for the connection-limit
    #: check (W002).
    expected_processes: int | None = None

    @classmethod
    def validate(cls, key: str, value: Any) -> Any:
        if key == "expected_processes":
            return _optional_count(key, value)
        # Named, not super(): a dataclass with slots is a new class, which the
        # zero-argument form does not know.
        return core_config.PoolConfig.validate(key, value)


def _optional_count(key: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(key, value, "must be an integer >= 1 or None")
    return value

#: psycopg_pool options (Django's built-in pool) that mean the same here.
_SHARED_KEYS = ("min_size", "max_size", "timeout", "max_waiting", "max_lifetime", "max_idle")
#: psycopg_pool options that have no effect with this pool and are accepted so a
#: project moving from Django's pool only changes ENGINE.
_IGNORED_KEYS = ("name", "num_workers", "reconnect_timeout", "open")


def prepare(
    settings_dict: dict[str, Any], alias: str
) -> tuple[dict[str, Any], PoolConfig | ImproperlyConfigured]:
    """Return the settings the stock backend may see, and the pool config or the
    error that explains why there is none.

    The error is returned, not raised: Django builds wrappers while it imports
    models, before ``manage.py check`` could report anything, so the backend
    raises it only when a connection is first wanted.

    ``OPTIONS["pool"]`` is always taken out (into ``POOL``) so the stock PostgreSQL
    code, which would start its own psycopg_pool, never sees it. The user's dict is
    not mutated; it is copied only when there is something to take out.
    """
    options = settings_dict.get("OPTIONS") or {}
    if "pool" not in options:
        where = f"DATABASES[{alias!r}]['POOL']"
        config = _parse(settings_dict.get("POOL"), where)
        return settings_dict, _checked(config, settings_dict, where)
    raw_pool = options["pool"]
    stripped = {
        **settings_dict,
        "OPTIONS": {k: v for k, v in options.items() if k != "pool"},
    }
    if settings_dict.get("POOL") is not None:
        return stripped, ImproperlyConfigured(
            f"DATABASES[{alias!r}] sets both 'POOL' and OPTIONS['pool']; "
            "django_poolbackend reads either one as the pool settings. "
            "Keep only 'POOL'."
        )
    try:
        stripped["POOL"] = _from_options_pool(alias, raw_pool)
    except ImproperlyConfigured as exc:
        return stripped, exc
    where = f"DATABASES[{alias!r}]['OPTIONS']['pool']"
    return stripped, _checked(_parse(stripped["POOL"], where), stripped, where)


class UnimportablePath(ImproperlyConfigured):
    """A dotted path in ``reset`` or ``connect_params`` that does not import or
    names something that can't be called (system check ``E007``)."""


#: The backends (by their stock wrapper's ``vendor``) that can't do reset="full",
#: and why.
_NO_FULL_RESET = {"sqlite": "a SQLite connection has no server session to reset"}

#: The keys that may hold a dotted path, and what each must name.
_DOTTED_KEYS = {
    "reset": '"rollback", "full", or the dotted path of an importable callable '
    "(connection) -> None",
    "connect_params": "None, or the dotted path of an importable callable "
    "(alias, params) -> params",
}


def _checked(
    config: PoolConfig | ImproperlyConfigured, settings_dict: dict[str, Any], where: str
) -> PoolConfig | ImproperlyConfigured:
    """The rules that need more than the POOL dict: the engine's, and the
    importability of dotted paths.

    Dotted paths are imported only once Django's app registry is ready: a wrapper
    built while the apps load (a model module that touches ``connection``) must
    not import user code that may import models in turn. Such a wrapper finds a
    bad path when it is used, as before; ``manage.py check`` always reports it.
    """
    if isinstance(config, ImproperlyConfigured):
        return config
    if config.reset == "full":
        engine = settings_dict.get("ENGINE")
        why = _NO_FULL_RESET.get(_vendor(engine) or "")
        if why is not None:
            return ImproperlyConfigured(
                f"{where}['reset'] = 'full' is not supported by {engine}: {why}. "
                "Use 'rollback' (the default) or a dotted path to a callable."
            )
    from django.apps import apps

    if apps.ready:
        problems = import_problems(config, where)
        if problems:
            return UnimportablePath(problems[0])
    return config


def checked_params(alias: str, hook: Any, params: Any) -> dict[str, Any]:
    """What a ``connect_params`` hook returned, if the driver's ``connect()`` can
    take it as keyword arguments: a mapping with str keys (a copy when it is not a
    plain dict). Anything else is refused here, with a message that names the hook;
    the driver's own error ("argument after ** must be a mapping") would not. The
    message names only types, never a value: the parameters hold the password."""
    if isinstance(params, Mapping):
        bad = next((key for key in params if not isinstance(key, str)), None)
        if bad is None:
            return params if type(params) is dict else dict(params)
        problem = f"a mapping with {_article(type(bad).__name__)} {type(bad).__name__} key"
    else:
        kind = type(params).__name__
        problem = f"{_article(kind)} {kind}"
    name = hook if isinstance(hook, str) else _dotted_name(hook)
    raise ImproperlyConfigured(
        f"DATABASES[{alias!r}]['POOL']['connect_params'] = {name!r} returned {problem}. "
        "Allowed: a dict of connection parameters with str keys (the params it was "
        "given, changed as needed)."
    )


def _dotted_name(hook: Any) -> str:
    module = getattr(hook, "__module__", "?")
    return f"{module}.{getattr(hook, '__qualname__', type(hook).__name__)}"


def _vendor(engine: Any) -> str | None:
    """The vendor of the wrapper an ENGINE names (no I/O); None if it doesn't load."""
    from django.db.utils import load_backend

    try:
        return str(load_backend(str(engine or "")).DatabaseWrapper.vendor)
    except Exception:  # Django reports an ENGINE that doesn't load.
        return None


def import_problems(config: PoolConfig, where: str) -> list[str]:
    """What is wrong with each dotted path of *config*: it does not import, or it
    names something that is not callable. Imports user code."""
    out = []
    for key, allowed in _DOTTED_KEYS.items():
        path = getattr(config, key)
        if not isinstance(path, str) or (key == "reset" and path in RESET_POLICIES):
            continue
        try:
            target = import_string(path)
        except Exception as exc:  # ImportError, or whatever the module raised
            detail = (str(exc).strip().splitlines() or [""])[0][:200]
            problem = f"can't be imported: {type(exc).__name__}: {detail}"
        else:
            if callable(target):
                continue
            kind = type(target).__name__
            problem = f"names {_article(kind)} {kind}, which can't be called"
        out.append(f"{where}[{key!r}] = {path!r} {problem}. Allowed: {allowed}.")
    return out


def _parse(raw: Any, where: str) -> PoolConfig | ImproperlyConfigured:
    if raw is None:
        return PoolConfig()
    try:
        return PoolConfig.from_mapping(raw)
    except ConfigError as exc:
        return ImproperlyConfigured(describe(exc, where))


def describe(exc: ConfigError, where: str) -> str:
    if exc.key is None:
        return f"{where} = {shown(exc.value)} is invalid: {exc.allowed}."
    if exc.allowed.startswith("unknown key"):
        return f"{where} has an unknown key {shown(exc.key)}: allowed keys are " + (
            exc.allowed.split(": ", 1)[1] + "."
        )
    return f"{where}[{exc.key!r}] = {shown(exc.value)} is invalid: {exc.allowed}."


def _from_options_pool(alias: str, raw: Any) -> dict[str, Any]:
    """``OPTIONS["pool"]`` (the keyword arguments Django gives psycopg_pool's
    ``ConnectionPool``) as a ``POOL`` dict: each key either means the same here, or
    is translated, or is ignored because it has no counterpart, or is refused with
    a message that says why. The values go on to the same validation as ``POOL``'s.
    """
    where = f"DATABASES[{alias!r}]['OPTIONS']['pool']"
    if raw is True or raw is False or raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ImproperlyConfigured(
            f"{where} = {shown(raw)} is invalid: must be True or a dict of pool settings."
        )
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "max_size" and value is None:
            # psycopg_pool's spelling of "as many as min_size" (its default).
            if raw.get("min_size") is None:
                raise ImproperlyConfigured(
                    f"{where}['max_size'] = None is invalid here: psycopg_pool reads it as "
                    "'equal to min_size', and min_size is not set (psycopg_pool's default "
                    "of 4 is not django_poolbackend's 0). Allowed: an integer >= 1, or "
                    "None together with min_size."
                )
            out["max_size"] = raw["min_size"]
        elif key in _SHARED_KEYS:
            out[key] = value
        elif key == "check":
            out["pre_ping"] = _pre_ping_for_check(where, value)
        elif key == "reset":
            if value is not None:
                out["reset"] = value
        elif key in _IGNORED_KEYS:
            continue
        else:
            raise ImproperlyConfigured(
                f"{where} has the key {shown(key)}, a "
                "psycopg_pool option that django_poolbackend does not support. "
                "Supported there: "
                + ", ".join(_SHARED_KEYS + ("check", "reset"))
                + "; ignored: "
                + ", ".join(_IGNORED_KEYS)
                + ". Prefer DATABASES[alias]['POOL'] for the full set of settings."
            )
    return out


def _pre_ping_for_check(where: str, value: Any) -> bool:
    """psycopg_pool's ``check``: ``None`` (no check) or a callable run on every
    checkout. Its own ``ConnectionPool.check_connection``, the one Django uses, is
    what ``pre_ping=True`` does here. Any other callable would be silently not run,
    and anything else (a number, a string) is not a check at all: both are refused.
    """
    if value is None:
        return False
    if _is_psycopg_pool_check(value):
        return True
    what = (
        "a callable django_poolbackend would not run"
        if callable(value)
        else f"{_article(type(value).__name__)} {type(value).__name__}, not a callable"
    )
    raise ImproperlyConfigured(
        f"{where}['check'] = {shown(value)} is invalid: it is {what}. Allowed: None (no "
        "check at checkout, POOL['pre_ping'] = False) or "
        "psycopg_pool.ConnectionPool.check_connection (a check at every checkout, "
        "POOL['pre_ping'] = True). For another schedule, move the settings to POOL and set "
        "its pre_ping."
    )


def _is_psycopg_pool_check(value: Any) -> bool:
    # By name, so that psycopg_pool need not be installed to validate settings.
    return (
        getattr(value, "__qualname__", None)
        in ("ConnectionPool.check_connection", "AsyncConnectionPool.check_connection")
        and str(getattr(value, "__module__", "")).split(".")[0] == "psycopg_pool"
    )


def _article(noun: str) -> str:
    """'a' or 'an' before *noun*, by its first letter (type names: 'an int', 'a str')."""
    return "an" if noun and noun[0].lower() in "aeiou" else "a"
