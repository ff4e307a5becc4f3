"""System checks: ``manage.py check`` reports bad pool settings before a request does.

Ids are stable and never reused:

======================== ===================================================================
``E001``                 ``POOL`` (or ``OPTIONS["pool"]``) is invalid
``E002``                 both ``POOL`` and ``OPTIONS["pool"]`` are set
``E003``                 Django's own psycopg_pool is, or would be, active behind ours
``W001``                 ``CONN_MAX_AGE`` is not 0
``W002``  (database)     worst-case connections exceed the server's (or PgBouncer's) limit
``W003``  (database)     the server could not be reached, so nothing was checked
``W004``  (database)     retired, never raised: ``QuerySet.iterator()`` behind a proxy
                         reads through a client-side cursor by itself
``E004``  (database)     PgBouncer in transaction mode with psycopg prepared statements on
``W005``  (database)     behind a connection proxy whose pool mode could not be read
``E005``  (debug toolbar) ``PoolPanel`` is used but ``django_poolbackend`` is not installed
``E006``  (database)     PgBouncer in transaction mode with ``OPTIONS["assume_role"]``
``E007``                 a dotted path in ``reset`` or ``connect_params`` does not import
``W006``                 a leftover ``POOL_OPTIONS`` of django-db-connection-pool
``W007``                 ``release="transaction"`` with ``ATOMIC_REQUESTS``: no request can release
``E008``                 ``release="transaction"`` with ``AUTOCOMMIT=False``: nothing can release
======================== ===================================================================

The static checks read settings (E007 also imports the dotted paths they name,
as the pool would). The server check (run by ``manage.py check --database ALIAS``
and by ``migrate``) opens one short-lived connection per alias outside the pool,
so it never leaves a connection checked out or a pool started in the checking
process.

The static check carries only the tag ``django_poolbackend`` (``STATIC_TAGS``):
Django 6.1 leaves every ``database``-tagged check out of a run that names no
``--database`` (plain ``check``, ``check --deploy``, ``runserver``), and these
need no server. The server check carries ``database`` too (``SERVER_TAGS``), so
it runs exactly when Django's own database checks do.

Who registers them: the app (``apps.py``), and the engines too, when Django
imports one while it sets up (:func:`register_during_setup`). Defining any
model opens nothing but imports the ``default`` alias's engine, so a project
whose ``default`` is pooled has the checks without the app. Otherwise, the
engines run the same checks for the aliases that ``--database`` names through
Django's backend validation hook (:mod:`django_poolbackend.validation`), and the
first pool of each process logs the warnings that need no server
(:func:`log_settings_warnings`).
"""

from __future__ import annotations

import copy
import logging
import os
import re
from typing import Any

from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured

from . import introspect
from . import settings as pool_settings
from .aliases import is_pooled_engine

#: Seconds the database check waits for a server that does not answer.
CHECK_CONNECT_TIMEOUT = 5

#: The static check's tags: the package's own (``check --tag django_poolbackend``
#: selects it), and not ``database``, which would keep it out of every run that
#: names no ``--database`` on Django 6.1.
STATIC_TAGS = ("django_poolbackend",)
#: The server check's tags: ``database``, so that it runs only where Django runs
#: its own checks that talk to a server, and the package's own.
SERVER_TAGS = (checks.Tags.database, "django_poolbackend")

logger = logging.getLogger("django_poolbackend")

def is_pooled(db: dict[str, Any]) -> bool:
    """Whether a DATABASES entry uses django_poolbackend (one of its engines, or a
    backend composed with the mixin): by the wrapper's class, not the ENGINE name."""
    return is_pooled_engine(db.get("ENGINE"))


def register_checks() -> None:
    """Register both checks with Django's registry. Its registry is a set, so the
    app and the engines registering the same functions run them once."""
    checks.register(check_pool_settings, *STATIC_TAGS)
    checks.register(check_server_limits, *SERVER_TAGS)


def register_during_setup() -> None:
    """Register the checks from an engine's import, if Django is still setting up.

    Only then: every check run starts after ``django.setup()``, so a check
    registered now is in every run of the process. An engine imported later
    may be imported by a run that has already listed its checks; the backend
    validation hook reports for that alias instead, and registering then would
    make a later run report twice.
    """
    from django.apps import apps

    if not apps.ready:
        register_checks()


def registered() -> bool:
    """Whether the package's checks are in Django's registry (by the app, or by an
    engine imported while Django set up)."""
    from django.core.checks.registry import registry

    # Django keeps the function itself (register() only sets its tags); its stubs
    # type the entries as wrapped callables, hence the plain objects.
    present: list[object] = list(registry.get_checks(include_deployment_checks=True))
    return check_pool_settings in present


# -- static checks (no I/O) -------------------------------------------------------


def check_pool_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    return pool_settings_messages(settings.DATABASES)


def pool_settings_messages(databases: dict[str, dict[str, Any]]) -> list[checks.CheckMessage]:
    errors: list[checks.CheckMessage] = []
    for alias, db in databases.items():
        if not is_pooled(db):
            continue
        options = db.get("OPTIONS") or {}
        if "pool" in options and db.get("POOL") is not None:
            errors.append(
                checks.Error(
                    f"DATABASES[{alias!r}] sets both 'POOL' and OPTIONS['pool']; "
                    "django_poolbackend reads either one as the pool settings, and "
                    "would not know which one you meant.",
                    hint="Keep only 'POOL' (OPTIONS['pool'] is accepted so that a project "
                    "moving from Django's built-in pool only changes ENGINE).",
                    id="django_poolbackend.E002",
                )
            )
            # Still report what is wrong inside POOL itself.
            db = {**db, "OPTIONS": {k: v for k, v in options.items() if k != "pool"}}
        _, config = pool_settings.prepare(db, alias)
        if isinstance(config, pool_settings.UnimportablePath):
            errors.append(
                checks.Error(
                    str(config),
                    hint="Name a callable the project can import (the module's dotted "
                    "path, then the callable's name), or put the callable itself in "
                    "POOL. Until then the pool raises this at the first checkout.",
                    id="django_poolbackend.E007",
                )
            )
        elif isinstance(config, ImproperlyConfigured):
            errors.append(
                checks.Error(
                    str(config),
                    hint="Fix the pool settings; the documentation's configuration "
                    "reference lists every key with its type and default.",
                    id="django_poolbackend.E001",
                )
            )
        elif config.release == "transaction" and db.get("AUTOCOMMIT", True) is False:
            errors.append(
                checks.Error(
                    f"DATABASES[{alias!r}] sets POOL['release'] = 'transaction' and "
                    "AUTOCOMMIT = False: without autocommit every statement opens a "
                    "transaction that only the code's own commit() ends, and Django "
                    "never turns autocommit back on, so no connection could ever go "
                    "back to the pool before the end of the request.",
                    hint="Keep AUTOCOMMIT = True (Django's default) to release "
                    "connections between transactions, or use release = 'request'.",
                    id="django_poolbackend.E008",
                )
            )
        errors.extend(settings_warnings(alias, db))
        errors.extend(_stock_pool_messages(alias, db))
    return errors


def settings_warnings(alias: str, db: dict[str, Any]) -> list[checks.CheckMessage]:
    """The warnings a settings dict earns by itself, without importing anything or
    asking a server (W001, W006): what the first pool of a process logs."""
    out: list[checks.CheckMessage] = []
    max_age = db.get("CONN_MAX_AGE", 0)
    if max_age != 0:
        out.append(
            checks.Warning(
                f"DATABASES[{alias!r}]['CONN_MAX_AGE'] is {max_age!r} with a "
                "pooled ENGINE: each thread keeps its connection out of the "
                "pool between requests.",
                hint="Set CONN_MAX_AGE to 0 so connections return to the pool "
                "at the end of each request; the pool keeps them open. Under ASGI "
                "a non-zero value exhausts the pool (each request's thread ends "
                "holding its connection).",
                id="django_poolbackend.W001",
            )
        )
    if "POOL_OPTIONS" in db:
        out.append(_pool_options_message(alias, db["POOL_OPTIONS"]))
    if db.get("ATOMIC_REQUESTS") and _release_mode(db) == "transaction":
        out.append(
            checks.Warning(
                f"DATABASES[{alias!r}] sets POOL['release'] = 'transaction' and "
                "ATOMIC_REQUESTS = True: every request is one transaction, so its "
                "connection goes back only at the end of the request, as with "
                "release = 'request'. Only code outside requests (management "
                "commands, Celery tasks) releases between transactions.",
                hint="Turn ATOMIC_REQUESTS off and wrap the views that need it in "
                "transaction.atomic(), or leave release at 'request'.",
                id="django_poolbackend.W007",
            )
        )
    return out


def _release_mode(db: dict[str, Any]) -> Any:
    """POOL['release'] as given (or in OPTIONS['pool']), unvalidated: E001 says
    what is wrong with a bad value."""
    raw = db.get("POOL")
    if raw is None:
        raw = (db.get("OPTIONS") or {}).get("pool")
    return raw.get("release") if isinstance(raw, dict) else None


#: The (pid, alias) pairs whose settings warnings this process has logged.
_logged: set[tuple[int, str]] = set()


def log_settings_warnings(alias: str, settings_dict: dict[str, Any]) -> None:
    """Log each of :func:`settings_warnings` once per process and alias, when the
    first pool is made.

    A project that never runs ``manage.py check`` (or runs it without the app in
    INSTALLED_APPS, where Django runs no check of ours unless ``--database`` is
    given) still finds ``CONN_MAX_AGE`` or a leftover ``POOL_OPTIONS`` in its
    logs. Ids listed in SILENCED_SYSTEM_CHECKS stay silent here too.
    """
    key = (os.getpid(), alias)
    if key in _logged:
        return
    _logged.add(key)
    silenced = set(getattr(settings, "SILENCED_SYSTEM_CHECKS", ()))
    for message in settings_warnings(alias, settings_dict):
        if message.id not in silenced:
            logger.warning(
                "Pool %r: %s (%s) HINT: %s", alias, message.msg, message.id, message.hint
            )


#: django-db-connection-pool's size defaults (``PoolContainer.pool_default_params``
#: of version 1.2.6): its cap was POOL_SIZE + MAX_OVERFLOW, with these for a key
#: left out.
_DBCP_SIZES = {"POOL_SIZE": 10, "MAX_OVERFLOW": 10}
#: The keys django-db-connection-pool reads; it ignored any other one silently.
_DBCP_KEYS = ("POOL_SIZE", "MAX_OVERFLOW", "RECYCLE", "TIMEOUT", "PRE_PING", "ECHO")


def _pool_options_message(alias: str, raw: Any) -> checks.CheckMessage:
    """W006: django-db-connection-pool's ``POOL_OPTIONS`` is read by nobody here.

    The hint translates the values given into ``POOL``, so that moving keeps the
    cap the project ran with.
    """
    hint = (
        f"Move the settings to DATABASES[{alias!r}]['POOL'] and delete POOL_OPTIONS: "
        "POOL_SIZE + MAX_OVERFLOW -> max_size, TIMEOUT -> timeout, RECYCLE -> "
        "max_lifetime (-1 -> None), PRE_PING -> pre_ping, ECHO -> the "
        "django_poolbackend logger; POOL_SIZE -> min_size only to keep that many "
        "connections open while idle."
    )
    suggestion = _pool_from_pool_options(raw)
    if suggestion:
        hint += f" For these values: 'POOL': {suggestion!r}."
    return checks.Warning(
        f"DATABASES[{alias!r}] has 'POOL_OPTIONS', the setting of "
        "django-db-connection-pool; django_poolbackend does not read it, so it has "
        "no effect and the pool runs with 'POOL' (or its defaults).",
        hint=hint + " See the migration guide (docs/migrating.md).",
        id="django_poolbackend.W006",
    )


def _pool_from_pool_options(raw: Any) -> dict[str, Any]:
    """The ``POOL`` that keeps what *raw* (a ``POOL_OPTIONS``) asked for, as far as
    it has an equivalent here; {} when there is nothing to translate."""
    if not isinstance(raw, dict):
        return {}

    def number(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    out: dict[str, Any] = {}
    if "POOL_SIZE" in raw or "MAX_OVERFLOW" in raw:
        sizes = {**_DBCP_SIZES, **raw}
        size, overflow = sizes["POOL_SIZE"], sizes["MAX_OVERFLOW"]
        # MAX_OVERFLOW = -1 (no cap) has no equivalent: this pool always has one.
        if number(size) and number(overflow) and overflow >= 0 and size + overflow >= 1:
            out["max_size"] = int(size + overflow)
    if number(raw.get("TIMEOUT")):
        out["timeout"] = raw["TIMEOUT"]
    recycle: Any = raw.get("RECYCLE")
    if number(recycle):
        out["max_lifetime"] = None if recycle < 0 else recycle
    if isinstance(raw.get("PRE_PING"), bool):
        out["pre_ping"] = raw["PRE_PING"]
    return out


def _stock_pool_messages(alias: str, db: dict[str, Any]) -> list[checks.CheckMessage]:
    """E003: what can make Django's own psycopg_pool run behind ours.

    Detectable without I/O: (1) the ENGINE's wrapper class resolves ``__init__``,
    ``connect`` or ``_close`` to a stock class ahead of the mixin (the mixin listed
    after the stock wrapper), so ``OPTIONS["pool"]`` is never taken out and our
    pool never runs; (2) a live wrapper of this process still has
    ``OPTIONS["pool"]`` (the settings were changed after it was built);
    (3) Django's class-level registry of its own pools holds this alias.
    Not detectable: code that builds a psycopg_pool by hand.
    """
    out: list[checks.CheckMessage] = []
    hint = (
        "Put PooledDatabaseWrapperMixin first in the bases of the DatabaseWrapper "
        "(class DatabaseWrapper(PooledDatabaseWrapperMixin, base.DatabaseWrapper)), and "
        "configure the pool only through DATABASES[alias]['POOL'] in the settings."
    )
    try:
        from django.db.utils import load_backend

        cls = load_backend(str(db.get("ENGINE", ""))).DatabaseWrapper
    except Exception:
        return out
    overridden = [
        name
        for name in ("__init__", "connect", "_close")
        if not _resolves_to_mixin(cls, name)
    ]
    if overridden:
        out.append(
            checks.Error(
                f"DATABASES[{alias!r}]['ENGINE'] = {db.get('ENGINE')!r}: its DatabaseWrapper "
                f"takes {', '.join(overridden)} from the stock backend, not from "
                "django_poolbackend, so the pool is bypassed and Django's own pool "
                "(OPTIONS['pool']) or a connection per request is used instead.",
                hint=hint,
                id="django_poolbackend.E003",
            )
        )
        return out
    stock_pools = getattr(cls, "_connection_pools", None)
    if isinstance(stock_pools, dict) and alias in stock_pools:
        out.append(
            checks.Error(
                f"Django's own connection pool (psycopg_pool) is open for "
                f"DATABASES[{alias!r}] in this process, behind django_poolbackend's pool.",
                hint=hint,
                id="django_poolbackend.E003",
            )
        )
        return out
    from django.db import connections

    try:
        live_options = connections[alias].settings_dict.get("OPTIONS") or {}
    except Exception:  # not this process's settings (a dict passed in by a caller)
        live_options = {}
    if "pool" in live_options:
        out.append(
            checks.Error(
                f"The connection of DATABASES[{alias!r}] has OPTIONS['pool'] although "
                "django_poolbackend took it out when the connection was built: the "
                "settings were changed afterwards, and Django's own pool would start.",
                hint=hint,
                id="django_poolbackend.E003",
            )
        )
    return out


def _resolves_to_mixin(cls: type, name: str) -> bool:
    """Whether *cls* takes *name* from django_poolbackend's mixin or a subclass of it.

    The pooled classes are told by their ``is_pooled_backend`` attribute, so this
    module need not import the mixin. An override in a subclass of the mixin is
    the user's own (and calls super()); one in a stock class ahead of the mixin
    bypasses the pool.
    """
    for klass in cls.__mro__:
        if name in vars(klass):
            return bool(getattr(klass, "is_pooled_backend", False))
    return False


# -- database check (one short connection per alias) --------------------------------


def check_server_limits(
    app_configs: Any = None, databases: Any = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    if not databases:
        return []
    from django.db import connections

    out: list[checks.CheckMessage] = []
    for alias in databases:
        try:
            wrapper = connections[alias]
        except Exception:
            continue
        settings_dict = wrapper.settings_dict
        # SQLite has no server and no connection limit to compare with.
        if is_pooled(settings_dict) and wrapper.vendor != "sqlite":
            out.extend(server_messages(alias, settings_dict))
    return out


def expected_processes(config: pool_settings.PoolConfig) -> tuple[int | None, str]:
    """The process count of the worst case, and where it came from."""
    if config.expected_processes is not None:
        return config.expected_processes, "POOL['expected_processes']"
    raw = os.environ.get("WEB_CONCURRENCY", "").strip()
    if raw.isdigit() and int(raw) >= 1:
        return int(raw), "WEB_CONCURRENCY"
    return None, ""


def server_messages(alias: str, settings_dict: dict[str, Any]) -> list[checks.CheckMessage]:
    """The database-tagged messages for one alias; *settings_dict* as a wrapper has it."""
    from django.db.utils import load_backend

    _, config = pool_settings.prepare(settings_dict, alias)
    if isinstance(config, ImproperlyConfigured):
        return []  # E001 already says why.
    wrapper = load_backend(settings_dict["ENGINE"]).DatabaseWrapper(
        copy.deepcopy(settings_dict), alias
    )
    try:
        facts = _server_facts(wrapper, settings_dict)
    except Exception as exc:
        return [unreachable_message(alias, settings_dict, exc)]
    return _limit_messages(alias, config, facts) + _pgbouncer_messages(
        alias, settings_dict, facts
    )


def unreachable_message(
    alias: str, settings_dict: dict[str, Any], exc: BaseException
) -> checks.CheckMessage:
    """W003: the check's connection failed, with a hint for that kind of failure."""
    detail = (str(exc).strip().splitlines() or [""])[0][:200]
    password = settings_dict.get("PASSWORD") or ""
    if password:
        detail = detail.replace(str(password), "********")
    return checks.Warning(
        f"Could not check the connection limits of DATABASES[{alias!r}]: "
        f"{type(exc).__name__}: {detail}",
        hint=_UNREACHABLE_HINTS[failure_kind(exc)].format(
            alias=alias,
            where=_where(settings_dict),
            name=settings_dict.get("NAME") or "",
        ),
        id="django_poolbackend.W003",
    )


#: What W003's hint says for each kind of connect failure.
_UNREACHABLE_HINTS = {
    "unreachable": "Nothing answered at {where}: start the server, or fix "
    "DATABASES[{alias!r}]['HOST'] and ['PORT'], then run `manage.py check --database "
    "{alias}` again.",
    "authentication": "The server refused the login: check DATABASES[{alias!r}]['USER'] "
    "and ['PASSWORD'] (or what POOL['connect_params'] returns), and that the role or "
    "account exists and may connect from this host (pg_hba.conf on PostgreSQL, the "
    "account's host on MySQL). Every pooled connection would fail the same way.",
    "database": "The database {name!r} does not exist on {where}: create it (migrate "
    "does not), or fix DATABASES[{alias!r}]['NAME'].",
    "full": "The server accepted no more connections: its limit or the account's is "
    "reached. W002 compares the pool's worst case with that limit once this check "
    "can connect; see the sizing guide.",
    "other": "Run `manage.py check --database {alias}` again when the server is "
    "reachable.",
}

#: MySQL/MariaDB client and server error numbers, by kind of failure.
_MYSQL_KINDS = {
    **dict.fromkeys((2002, 2003, 2005, 2006, 2013, 2055), "unreachable"),
    **dict.fromkeys((1044, 1045, 1251, 1698, 2059), "authentication"),
    1049: "database",
    **dict.fromkeys((1040, 1203, 1226), "full"),
}

#: libpq's (and the PostgreSQL server's) messages, by kind of failure, in the
#: order they are tried. English only: with translated messages the hint is the
#: generic one.
_POSTGRESQL_KINDS = tuple(
    (kind, re.compile(pattern))
    for kind, pattern in (
        (
            "authentication",
            r"password authentication failed|authentication failed|no pg_hba\.conf entry"
            r'|no password supplied|is not permitted to log in|role "[^"]*" does not exist',
        ),
        ("database", r'database "[^"]*" does not exist'),
        ("full", r"too many clients|remaining connection slots|too many connections"),
        (
            "unreachable",
            r"connection refused|could not translate host name|name or service not known"
            r"|timeout expired|no route to host|network is unreachable"
            r"|server closed the connection unexpectedly|no such file or directory",
        ),
    )
)


def failure_kind(exc: BaseException) -> str:
    """Why a connect failed: "unreachable", "authentication", "database" (it does
    not exist), "full" (no connection slot left) or "other"."""
    args = getattr(exc, "args", ())
    if args and isinstance(args[0], int):  # mysqlclient: (errno, message)
        return _MYSQL_KINDS.get(args[0], "other")
    text = str(exc).lower()
    for kind, pattern in _POSTGRESQL_KINDS:
        if pattern.search(text):
            return kind
    return "other"


def _where(settings_dict: dict[str, Any]) -> str:
    host = settings_dict.get("HOST") or "localhost"
    port = settings_dict.get("PORT")
    return f"{host}:{port}" if port else str(host)


def _server_facts(wrapper: Any, settings_dict: dict[str, Any]) -> dict[str, Any]:
    params = (
        wrapper.pool_connect_params()
        if getattr(type(wrapper), "is_pooled_backend", False)
        else wrapper.get_connection_params()
    )
    params.setdefault("connect_timeout", CHECK_CONNECT_TIMEOUT)
    return introspect.server_facts(
        wrapper, params, settings_dict.get("NAME") or "", settings_dict.get("USER") or ""
    )


def _limit_messages(alias: str, config: Any, facts: dict[str, Any]) -> list[checks.CheckMessage]:
    processes, source = expected_processes(config)
    worst = config.max_size * (processes or 1)
    bouncer = facts.get("pgbouncer") or {}
    if facts.get("proxied"):
        # Behind a proxy the server's limit is the proxy's business; ours is
        # the proxy's client limit, when it can be read.
        max_client = bouncer.get("max_client_conn")
        limits = [] if max_client is None else [
            (max_client, f"PgBouncer accepts {max_client} clients (max_client_conn)")
        ]
    else:
        limits = facts["limits"]
    out: list[checks.CheckMessage] = []
    for limit, described in sorted(limits, key=lambda item: item[0]):
        if worst <= limit:
            continue
        if processes is None:
            count = f"POOL['max_size'] is {config.max_size} in a single process"
        else:
            count = (
                f"up to {config.max_size} x {processes} processes = {worst} connections "
                f"(POOL['max_size'] x {source})"
            )
        out.append(
            checks.Warning(
                f"DATABASES[{alias!r}]: {count}, but {described}.",
                hint="Lower POOL['max_size'], run fewer processes, or raise the limit; "
                "other clients need connections too. Set POOL['expected_processes'] "
                "(or WEB_CONCURRENCY) to the number of processes that serve this "
                "settings file so this check can compute the real worst case.",
                id="django_poolbackend.W002",
            )
        )
        break  # the tightest limit says enough
    return out


def _pgbouncer_messages(
    alias: str, settings_dict: dict[str, Any], facts: dict[str, Any]
) -> list[checks.CheckMessage]:
    if not facts.get("proxied"):
        return []
    bouncer = facts.get("pgbouncer") or {}
    mode = bouncer.get("mode")
    if mode is not None and mode not in introspect.TRANSACTION_POOLING:
        return []  # session pooling keeps a server connection per client.
    prepared_on = facts.get("prepare_threshold") is not None and not bouncer.get(
        "prepared_statements"
    )
    role = (settings_dict.get("OPTIONS") or {}).get("assume_role")
    out: list[checks.CheckMessage] = []
    if mode is None:
        risky = []
        if prepared_on:
            risky.append("psycopg prepared statements (prepare_threshold is not None)")
        if role:
            risky.append("OPTIONS['assume_role'] (its SET ROLE stays on a shared server session)")
        if risky:
            out.append(
                checks.Warning(
                    f"DATABASES[{alias!r}] reaches PostgreSQL through a connection proxy "
                    "(PgBouncer or similar) whose pool mode could not be read; in "
                    "transaction mode these break: " + "; ".join(risky) + ".",
                    hint="If the proxy pools by transaction, set "
                    "OPTIONS['prepare_threshold'] = None and connect as the role instead "
                    "of assume_role. Listing the user in PgBouncer's stats_users lets "
                    "this check read the mode.",
                    id="django_poolbackend.W005",
                )
            )
        return out
    if prepared_on:
        out.append(
            checks.Error(
                f"DATABASES[{alias!r}] goes through PgBouncer in {mode} mode with psycopg's "
                f"prepared statements on (prepare_threshold={facts['prepare_threshold']!r}): "
                "a query run often enough is prepared on one server connection and "
                "fails on the next ('prepared statement ... does not exist').",
                hint=f"Set DATABASES[{alias!r}]['OPTIONS']['prepare_threshold'] = None, or "
                "enable max_prepared_statements in PgBouncer 1.21+.",
                id="django_poolbackend.E004",
            )
        )
    if role:
        out.append(
            checks.Error(
                f"DATABASES[{alias!r}] goes through PgBouncer in {mode} mode with "
                f"OPTIONS['assume_role'] = {role!r}: the SET ROLE a new connection runs "
                "changes whichever server session PgBouncer lent it, which then serves "
                "other clients with that role, while later transactions of this "
                "connection may run without it.",
                hint=f"Remove OPTIONS['assume_role'] and connect as that role (USER), or "
                f"give DATABASES[{alias!r}] a PgBouncer database in session mode "
                "(pool_mode=session in its [databases] line).",
                id="django_poolbackend.E006",
            )
        )
    return out
