"""Reading ``DATABASES[alias]["POOL"]`` (or Django's ``OPTIONS["pool"]``) into a PoolConfig.

One parser serves the backend, the system checks and the docs' error list, so a
message reads the same wherever a user meets it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

from .core.config import RESET_POLICIES, ConfigError, PoolConfig

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
            problem = f"names a {type(target).__name__}, which can't be called"
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
        return f"{where} = {exc.value!r} is invalid: {exc.allowed}."
    if exc.allowed.startswith("unknown key"):
        return f"{where} has an unknown key {exc.key!r}: allowed keys are " + (
            exc.allowed.split(": ", 1)[1] + "."
        )
    return f"{where}[{exc.key!r}] = {exc.value!r} is invalid: {exc.allowed}."


def _from_options_pool(alias: str, raw: Any) -> dict[str, Any]:
    if raw is True or raw is False or raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ImproperlyConfigured(
            f"DATABASES[{alias!r}]['OPTIONS']['pool'] = {raw!r} is invalid: must be "
            "True or a dict of pool settings."
        )
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key in _SHARED_KEYS:
            out[key] = value
        elif key == "check":
            # psycopg_pool's check runs at every checkout.
            out["pre_ping"] = value is not None
        elif key == "reset":
            if value is not None:
                out["reset"] = value
        elif key in _IGNORED_KEYS:
            continue
        else:
            raise ImproperlyConfigured(
                f"DATABASES[{alias!r}]['OPTIONS']['pool'] has the key {key!r}, a "
                "psycopg_pool option that django_poolbackend does not support. "
                "Supported there: "
                + ", ".join(_SHARED_KEYS + ("check", "reset"))
                + "; ignored: "
                + ", ".join(_IGNORED_KEYS)
                + ". Prefer DATABASES[alias]['POOL'] for the full set of settings."
            )
    return out
