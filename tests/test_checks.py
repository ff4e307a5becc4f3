"""System checks: each fires with its id on its case and stays silent on a good
configuration. The database-tagged ones run against the real servers (and a real
PgBouncer when Debian's package is installed)."""

from __future__ import annotations

import copy
import io
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import MySQLdb
import psycopg
import pytest
from django.conf import settings
from django.core.checks import run_checks
from django.core.management import call_command
from django.db import connections
from django.db.backends.postgresql import base as stock_postgresql

from django_poolbackend import checks, pool_stats
from django_poolbackend.mixin import PooledDatabaseWrapperMixin

from .conftest import RUN_TAG, free_port, require_file, wait_for, wait_listening
from .fresh_project import NO_ISSUES, FreshProject, copy_of, make_pristine

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "mysql"])

#: A role of this run's own (two runs at once must not drop each other's).
PLAIN_ROLE = f"dpb_h4_plain{RUN_TAG}"

PGBOUNCER = "/usr/sbin/pgbouncer"


def ids(messages: list[Any]) -> list[str]:
    return [m.id for m in messages]


def ours(messages: list[Any]) -> list[Any]:
    return [m for m in messages if (m.id or "").startswith("django_poolbackend.")]


def pooled(**changes: Any) -> dict:
    db = copy.deepcopy(connections["default"].settings_dict)
    db.update(changes)
    return db


# -- static checks ---------------------------------------------------------------


def test_good_settings_are_silent():
    assert checks.pool_settings_messages(settings.DATABASES) == []
    assert ours(run_checks()) == []


def test_every_message_has_a_hint():
    messages = checks.pool_settings_messages(
        {
            "a": pooled(POOL={"max_size": 0}, CONN_MAX_AGE=60),
            "b": pooled(POOL={"max_size": 2}, OPTIONS={"pool": {"max_size": 3}}),
        }
    )
    assert sorted(ids(messages)) == [
        "django_poolbackend.E001",
        "django_poolbackend.E002",
        "django_poolbackend.W001",
    ]
    assert all(m.hint for m in messages)


@pytest.mark.parametrize(
    ("pool", "needle"),
    [
        ({"max_size": 0}, "['max_size'] = 0 is invalid: must be an integer >= 1"),
        ({"maxsize": 3}, "unknown key 'maxsize'"),
        ({"expected_processes": 0}, "['expected_processes'] = 0 is invalid"),
        ({"expected_processes": "4"}, "must be an integer >= 1 or None"),
    ],
)
def test_e001_invalid_pool(pool, needle):
    (message,) = checks.pool_settings_messages({"default": pooled(POOL=pool)})
    assert message.id == "django_poolbackend.E001"
    assert needle in message.msg
    assert "DATABASES['default']" in message.msg


def test_expected_processes_is_a_pool_key():
    for value in (None, 1, 12):
        db = pooled(POOL={"expected_processes": value})
        assert checks.pool_settings_messages({"d": db}) == []


def test_e002_pool_and_options_pool():
    db = pooled(POOL={"max_size": 2}, OPTIONS={"pool": {"max_size": 3}})
    (message,) = checks.pool_settings_messages({"default": db})
    assert message.id == "django_poolbackend.E002"
    assert "both 'POOL' and OPTIONS['pool']" in message.msg
    # A bad POOL beside it is still reported, under its own id.
    db["POOL"] = {"max_size": -1}
    assert ids(checks.pool_settings_messages({"default": db})) == [
        "django_poolbackend.E002",
        "django_poolbackend.E001",
    ]
    # OPTIONS["pool"] alone is Django's spelling, accepted.
    db = pooled(POOL=None, OPTIONS={"pool": True})
    assert checks.pool_settings_messages({"default": db}) == []


def test_w001_conn_max_age():
    (message,) = checks.pool_settings_messages({"default": pooled(CONN_MAX_AGE=60)})
    assert message.id == "django_poolbackend.W001"
    assert "is 60 with a pooled ENGINE" in message.msg
    assert checks.pool_settings_messages({"default": pooled(CONN_MAX_AGE=0)}) == []


def importable_reset(conn: Any) -> None:
    pass


def importable_params(alias: str, params: dict) -> dict:
    return params


NOT_CALLABLE = "a module-level string"


@pytest.mark.parametrize(
    ("key", "path", "problem"),
    [
        (
            "reset",
            "dpb_no_such_module.reset",
            "can't be imported: ModuleNotFoundError: No module named 'dpb_no_such_module'",
        ),
        (
            "connect_params",
            f"{__name__}.no_such_hook",
            f'can\'t be imported: ImportError: Module "{__name__}" does not define a '
            '"no_such_hook" attribute/class',
        ),
        ("reset", f"{__name__}.NOT_CALLABLE", "names a str, which can't be called"),
    ],
)
def test_e007_dotted_path_that_does_not_import(key, path, problem):
    allowed = {
        "reset": '"rollback", "full", or the dotted path of an importable callable '
        "(connection) -> None",
        "connect_params": "None, or the dotted path of an importable callable "
        "(alias, params) -> params",
    }[key]
    (message,) = checks.pool_settings_messages({"default": pooled(POOL={key: path})})
    assert message.id == "django_poolbackend.E007"
    assert message.msg == (
        f"DATABASES['default']['POOL'][{key!r}] = {path!r} {problem}. Allowed: {allowed}."
    )
    assert message.hint
    # Django's spelling of the pool settings is checked the same way.
    db = pooled(POOL=None, OPTIONS={"pool": {"reset": "dpb_no_such_module.reset"}})
    (message,) = checks.pool_settings_messages({"default": db})
    assert message.id == "django_poolbackend.E007"
    assert message.msg.startswith("DATABASES['default']['OPTIONS']['pool']['reset'] = ")


def test_e007_silent_for_importable_paths_and_callables():
    for pool in (
        {"reset": f"{__name__}.importable_reset", "connect_params": f"{__name__}.importable_params"},
        {"reset": importable_reset, "connect_params": importable_params},
        {"reset": "full", "connect_params": None},
    ):
        assert checks.pool_settings_messages({"default": pooled(POOL=pool)}) == []


def test_stock_engine_is_not_ours():
    db = pooled(ENGINE="django.db.backends.postgresql", CONN_MAX_AGE=60, POOL={"max_size": 0})
    assert checks.pool_settings_messages({"x": db}) == []


@pytest.fixture
def engine_module(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Register an ENGINE package made of a DatabaseWrapper class, for this test."""

    def make(name: str, wrapper: type) -> str:
        package = types.ModuleType(name)
        package.__path__ = []  # type: ignore[attr-defined]
        module = types.ModuleType(f"{name}.base")
        module.DatabaseWrapper = wrapper  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, name, package)
        monkeypatch.setitem(sys.modules, f"{name}.base", module)
        return name

    return make


def test_e003_mixin_after_the_stock_wrapper(engine_module):
    class WrongOrder(stock_postgresql.DatabaseWrapper, PooledDatabaseWrapperMixin):
        pass

    class RightOrder(PooledDatabaseWrapperMixin, stock_postgresql.DatabaseWrapper):
        def connect(self) -> None:  # the user's own override, calling super()
            super().connect()

    wrong = engine_module("dpb_h4_wrong_order", WrongOrder)
    right = engine_module("dpb_h4_right_order", RightOrder)
    (message,) = checks.pool_settings_messages({"default": pooled(ENGINE=wrong)})
    assert message.id == "django_poolbackend.E003"
    assert "__init__, connect, _close" in message.msg
    assert "PooledDatabaseWrapperMixin first" in message.hint
    assert checks.pool_settings_messages({"default": pooled(ENGINE=right)}) == []


def test_e003_djangos_own_pool_opened_for_the_alias():
    alias = "dpb_h4_stock_pool"
    stock = stock_postgresql.DatabaseWrapper(
        pooled(
            ENGINE="django.db.backends.postgresql",
            OPTIONS={"pool": {"min_size": 1, "max_size": 2}},
        ),
        alias,
    )
    assert stock.pool is not None  # made (not opened): Django's pool for this alias
    try:
        (message,) = checks.pool_settings_messages({alias: pooled()})
        assert message.id == "django_poolbackend.E003"
        assert "Django's own connection pool (psycopg_pool) is open" in message.msg
    finally:
        stock.close_pool()
    assert checks.pool_settings_messages({alias: pooled()}) == []


def test_e003_options_pool_put_back_on_a_live_connection():
    db = pooled()
    options = connections["default"].settings_dict["OPTIONS"]
    assert "pool" not in options
    options["pool"] = True
    try:
        messages = checks.pool_settings_messages({"default": db})
    finally:
        del options["pool"]
    assert ids(messages) == ["django_poolbackend.E003"]
    assert "settings were changed afterwards" in messages[0].msg


# -- the database check ------------------------------------------------------------


def run_check_command(alias: str) -> str:
    out, err = io.StringIO(), io.StringIO()
    call_command("check", "--database", alias, stdout=out, stderr=err)
    return out.getvalue() + err.getvalue()


@pytest.mark.parametrize("alias", ["default", "mysql"])
def test_database_check_silent_within_limits(alias, monkeypatch):
    monkeypatch.delenv("WEB_CONCURRENCY", raising=False)
    output = run_check_command(alias)
    assert "django_poolbackend." not in output
    assert checks.server_messages(alias, connections[alias].settings_dict) == []


def server_limit(alias: str) -> int:
    connection = connections[alias]
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                "SELECT current_setting('max_connections')::int"
                " - current_setting('superuser_reserved_connections')::int"
                " - coalesce(current_setting('reserved_connections', true), '0')::int"
            )
        else:
            cursor.execute("SELECT @@max_connections")
        limit = int(cursor.fetchone()[0])
    connection.close()
    return limit


@pytest.mark.parametrize("alias", ["default", "mysql"])
def test_w002_web_concurrency_through_manage_py_check(alias, monkeypatch):
    limit = server_limit(alias)
    processes = limit  # 4 connections each: four times what the server takes
    monkeypatch.setenv("WEB_CONCURRENCY", str(processes))
    output = run_check_command(alias)
    assert "(django_poolbackend.W002)" in output
    assert f"up to 4 x {processes} processes = {4 * processes} connections" in output
    assert "(POOL['max_size'] x WEB_CONCURRENCY)" in output
    assert f"allows {limit}" in output
    # Not a bare `check`: only --database talks to the server.
    out, err = io.StringIO(), io.StringIO()
    call_command("check", stdout=out, stderr=err)
    assert "W002" not in out.getvalue() + err.getvalue()


def test_w002_expected_processes_wins_over_web_concurrency(monkeypatch):
    monkeypatch.setenv("WEB_CONCURRENCY", "1")
    limit = server_limit("default")
    db = pooled(POOL={"max_size": 2, "expected_processes": limit})
    (message,) = checks.server_messages("default", db)
    assert message.id == "django_poolbackend.W002"
    assert f"2 x {limit} processes" in message.msg
    assert "POOL['expected_processes']" in message.msg
    db["POOL"]["expected_processes"] = 1
    assert checks.server_messages("default", db) == []


@pytest.fixture
def limited_pg_role() -> Iterator[str]:
    role = f"dpb_h4_role_{os.getpid()}"
    admin = psycopg.connect(host="127.0.0.1", user="postgres", dbname="postgres", autocommit=True)
    admin.execute(f"CREATE ROLE {role} LOGIN CONNECTION LIMIT 2")
    try:
        yield role
    finally:
        admin.execute(f"DROP ROLE {role}")
        admin.close()


def test_w002_role_connection_limit(limited_pg_role):
    db = pooled(USER=limited_pg_role, POOL={"max_size": 3})
    (message,) = checks.server_messages("default", db)
    assert message.id == "django_poolbackend.W002"
    assert "POOL['max_size'] is 3 in a single process" in message.msg
    assert "the role's CONNECTION LIMIT is 2" in message.msg


@pytest.fixture
def limited_mysql_account() -> Iterator[tuple[str, str]]:
    user, password = f"dpb_h4_lim_{os.getpid()}", "dpb-h4-secret-pw"
    admin = MySQLdb.connect(host="127.0.0.1", user="root", autocommit=True)
    cursor = admin.cursor()
    cursor.execute(
        f"CREATE USER '{user}'@'%' IDENTIFIED BY '{password}' WITH MAX_USER_CONNECTIONS 2"
    )
    cursor.execute(f"GRANT ALL ON `dpb\\_%`.* TO '{user}'@'%'")
    try:
        yield user, password
    finally:
        cursor.execute(f"DROP USER '{user}'@'%'")
        admin.close()


def test_w002_mysql_max_user_connections(limited_mysql_account):
    user, password = limited_mysql_account
    db = copy.deepcopy(connections["mysql"].settings_dict)
    db.update(USER=user, PASSWORD=password, POOL={"max_size": 3})
    (message,) = checks.server_messages("mysql", db)
    assert message.id == "django_poolbackend.W002"
    assert "the account may open 2 (max_user_connections)" in message.msg
    assert password not in message.msg + message.hint


@pytest.mark.parametrize("alias", ["default", "mysql"])
def test_w003_server_down(alias):
    db = copy.deepcopy(connections[alias].settings_dict)
    db.update(PORT=str(free_port()), PASSWORD="dpb-h4-do-not-print")
    (message,) = checks.server_messages(alias, db)
    assert message.id == "django_poolbackend.W003"
    assert f"Could not check the connection limits of DATABASES[{alias!r}]" in message.msg
    assert "OperationalError" in message.msg
    assert "dpb-h4-do-not-print" not in message.msg + message.hint


def test_database_check_leaves_nothing_checked_out():
    marker = f"dpb_h4_check_{os.getpid()}"
    options = connections["default"].settings_dict["OPTIONS"]
    db = pooled(OPTIONS={**options, "application_name": marker})
    before = pool_stats("default").get("in_use", 0)
    assert checks.server_messages("default", db) == []
    assert pool_stats("default").get("in_use", 0) == before
    observer = psycopg.connect(
        host="127.0.0.1", user="postgres", dbname="postgres", autocommit=True
    )
    try:

        def sessions() -> int:
            sql = "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
            return observer.execute(sql, (marker,)).fetchone()[0]

        wait_for(lambda: sessions() == 0, what="the check's session to end")
    finally:
        observer.close()


# -- behind PgBouncer ------------------------------------------------------------------


class Bouncer:
    def __init__(self, port: int, session_db: str) -> None:
        self.port = port
        self.session_db = session_db


@pytest.fixture(scope="module")
def pgbouncer(django_db_setup: Any, django_db_blocker: Any) -> Iterator[Bouncer]:
    """A private PgBouncer in transaction mode in front of the shared PostgreSQL,
    with one database alias in session mode, run as the postgres OS user."""
    require_file(PGBOUNCER, "pgbouncer", "Debian package pgbouncer; ./dev installs it")
    with django_db_blocker.unblock():
        test_db = connections["default"].settings_dict["NAME"]
    workdir = Path(tempfile.mkdtemp(prefix="dpb_h4_pgbouncer_"))
    port = free_port()
    session_db = "dpb_h4_session"
    (workdir / "users.txt").write_text(f'"postgres" ""\n"{PLAIN_ROLE}" ""\n')
    (workdir / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"{session_db} = host=127.0.0.1 port=5432 dbname={test_db} pool_mode=session\n"
        "* = host=127.0.0.1 port=5432\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {workdir}/users.txt\n"
        "admin_users = postgres\npool_mode = transaction\n"
        f"logfile = {workdir}/pgbouncer.log\n"
    )
    shutil.chown(workdir, "postgres")
    for path in workdir.iterdir():
        shutil.chown(path, "postgres")
    process = subprocess.Popen(
        [PGBOUNCER, str(workdir / "pgbouncer.ini")],
        user="postgres",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_listening(process, port, "pgbouncer", workdir / "pgbouncer.log")
        yield Bouncer(port, session_db)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(workdir, ignore_errors=True)


def via_bouncer(bouncer: Bouncer, **changes: Any) -> dict:
    db = pooled(PORT=str(bouncer.port))
    db.update(changes)
    return db


def test_pgbouncer_transaction_mode_default_settings_are_silent(pgbouncer):
    # Django turns psycopg's prepared statements off by default, and server-side
    # cursors need no setting: iterator() outside a transaction reads client-side
    # behind a proxy (tests/test_pgbouncer.py), inside one its cursor lives in one
    # server session.
    assert checks.server_messages("default", via_bouncer(pgbouncer)) == []


def test_pgbouncer_transaction_mode_prepared_statements(pgbouncer):
    options = {**connections["default"].settings_dict["OPTIONS"], "prepare_threshold": 5}
    db = via_bouncer(pgbouncer, OPTIONS=options, DISABLE_SERVER_SIDE_CURSORS=True)
    (message,) = checks.server_messages("default", db)
    assert message.id == "django_poolbackend.E004"
    assert "prepare_threshold=5" in message.msg
    assert "'prepare_threshold'] = None" in message.hint


def test_pgbouncer_safe_settings_are_silent(pgbouncer):
    db = via_bouncer(pgbouncer, DISABLE_SERVER_SIDE_CURSORS=True)
    assert checks.server_messages("default", db) == []
    # Session mode keeps one server connection per client: nothing breaks.
    db = via_bouncer(pgbouncer, NAME=pgbouncer.session_db)
    assert checks.server_messages("default", db) == []


def test_pgbouncer_mode_unknown_without_admin_rights(pgbouncer):
    admin = psycopg.connect(host="127.0.0.1", user="postgres", dbname="postgres", autocommit=True)
    admin.execute(f"DROP ROLE IF EXISTS {PLAIN_ROLE}")
    admin.execute(f"CREATE ROLE {PLAIN_ROLE} LOGIN")
    try:
        plain = via_bouncer(pgbouncer, USER=PLAIN_ROLE)
        silent = checks.server_messages("default", plain)
        options = {**plain["OPTIONS"], "prepare_threshold": 5}
        messages = checks.server_messages("default", {**plain, "OPTIONS": options})
    finally:
        admin.execute(f"DROP ROLE {PLAIN_ROLE}")
        admin.close()
    # Nothing that transaction mode breaks is on: nothing to say.
    assert silent == []
    assert ids(messages) == ["django_poolbackend.W005"]
    assert "pool mode could not be read" in messages[0].msg
    assert "prepared statements (prepare_threshold is not None)" in messages[0].msg
    assert "server-side cursors" not in messages[0].msg


def test_pgbouncer_client_limit(pgbouncer, monkeypatch):
    monkeypatch.setenv("WEB_CONCURRENCY", "40")  # 4 x 40 = 160 > max_client_conn 100
    db = via_bouncer(pgbouncer, DISABLE_SERVER_SIDE_CURSORS=True)
    (message,) = checks.server_messages("default", db)
    assert message.id == "django_poolbackend.W002"
    assert "PgBouncer accepts 100 clients (max_client_conn)" in message.msg


# -- W003: a hint for the kind of failure ---------------------------------------------

AUTH_HINT = (
    "The server refused the login: check DATABASES[{alias!r}]['USER'] and ['PASSWORD'] "
    "(or what POOL['connect_params'] returns), and that the role or account exists and "
    "may connect from this host (pg_hba.conf on PostgreSQL, the account's host on "
    "MySQL). Every pooled connection would fail the same way."
)
DATABASE_HINT = (
    "The database 'dpb_e_no_such_db' does not exist on 127.0.0.1:{port}: create it "
    "(migrate does not), or fix DATABASES[{alias!r}]['NAME']."
)
UNREACHABLE_HINT = (
    "Nothing answered at 127.0.0.1:{port}: start the server, or fix "
    "DATABASES[{alias!r}]['HOST'] and ['PORT'], then run `manage.py check --database "
    "{alias}` again."
)


@pytest.mark.parametrize("alias", ["default", "mysql"])
@pytest.mark.parametrize("case", ["authentication", "database", "unreachable"])
def test_w003_hint_matches_the_failure(alias, case):
    db = copy.deepcopy(connections[alias].settings_dict)
    password = "dpb-e-wrong-password"
    if case == "authentication":
        # PostgreSQL trusts every role that exists: a missing role is refused.
        db.update(USER="dpb_e_no_such_role") if alias == "default" else db.update(
            PASSWORD=password
        )
        hint = AUTH_HINT
    elif case == "database":
        db.update(NAME="dpb_e_no_such_db")
        hint = DATABASE_HINT
    else:
        db.update(PORT=str(free_port()), PASSWORD=password)
        hint = UNREACHABLE_HINT
    (message,) = checks.server_messages(alias, db)
    assert message.id == "django_poolbackend.W003"
    assert message.msg.startswith(
        f"Could not check the connection limits of DATABASES[{alias!r}]: OperationalError: "
    )
    assert message.hint == hint.format(alias=alias, port=db["PORT"])
    assert password not in message.msg + message.hint


@pytest.fixture
def full_pg_role() -> Iterator[str]:
    role = f"dpb_e_full_{os.getpid()}"
    admin = psycopg.connect(host="127.0.0.1", user="postgres", dbname="postgres", autocommit=True)
    admin.execute(f"CREATE ROLE {role} LOGIN CONNECTION LIMIT 0")
    try:
        yield role
    finally:
        admin.execute(f"DROP ROLE {role}")
        admin.close()


def test_w003_hint_for_a_server_that_accepts_no_more_connections(full_pg_role):
    (message,) = checks.server_messages("default", pooled(USER=full_pg_role))
    assert message.id == "django_poolbackend.W003"
    assert "too many connections for role" in message.msg
    assert message.hint == (
        "The server accepted no more connections: its limit or the account's is reached. "
        "W002 compares the pool's worst case with that limit once this check can connect; "
        "see the sizing guide."
    )


def test_w003_docs_show_the_hint_the_check_gives():
    page = (Path(__file__).resolve().parent.parent / "docs" / "troubleshooting.md").read_text()
    hint = AUTH_HINT.format(alias="default")
    assert f"\tHINT: {hint}\n" in page
    assert f"could not connect (django_poolbackend.W003). {hint}\n" in page


# -- W006: django-db-connection-pool's POOL_OPTIONS ------------------------------------

W006_MSG = (
    "DATABASES['default'] has 'POOL_OPTIONS', the setting of django-db-connection-pool; "
    "django_poolbackend does not read it, so it has no effect and the pool runs with "
    "'POOL' (or its defaults)."
)
W006_HINT = (
    "Move the settings to DATABASES['default']['POOL'] and delete POOL_OPTIONS: "
    "POOL_SIZE + MAX_OVERFLOW -> max_size, TIMEOUT -> timeout, RECYCLE -> max_lifetime "
    "(-1 -> None), PRE_PING -> pre_ping, ECHO -> the django_poolbackend logger; "
    "POOL_SIZE -> min_size only to keep that many connections open while idle.{values} "
    "See the migration guide (docs/migrating.md)."
)


@pytest.mark.parametrize(
    ("pool_options", "values"),
    [
        (
            {"POOL_SIZE": 4, "MAX_OVERFLOW": 4, "RECYCLE": 3600, "TIMEOUT": 10},
            " For these values: 'POOL': {'max_size': 8, 'timeout': 10, 'max_lifetime': 3600}.",
        ),
        # A key left out had django-db-connection-pool's default (MAX_OVERFLOW 10).
        ({"POOL_SIZE": 5}, " For these values: 'POOL': {'max_size': 15}."),
        (
            {"RECYCLE": -1, "PRE_PING": False},
            " For these values: 'POOL': {'max_lifetime': None, 'pre_ping': False}.",
        ),
        # No cap (MAX_OVERFLOW = -1) has no equivalent; nothing else to translate.
        ({"POOL_SIZE": 4, "MAX_OVERFLOW": -1}, ""),
        ({"ECHO": True, "pool_size": 3}, ""),
        ("not a dict", ""),
    ],
)
def test_w006_pool_options_left_over(pool_options, values):
    (message,) = checks.pool_settings_messages({"default": pooled(POOL_OPTIONS=pool_options)})
    assert message.id == "django_poolbackend.W006"
    assert message.msg == W006_MSG
    assert message.hint == W006_HINT.format(values=values)


def test_w006_docs_show_the_message_the_check_gives():
    docs = Path(__file__).resolve().parent.parent / "docs"
    values = " For these values: 'POOL': {'max_size': 8, 'timeout': 10, 'max_lifetime': 3600}."
    shown = f"{W006_MSG}\n\tHINT: {W006_HINT.format(values=values)}\n"
    assert shown in (docs / "troubleshooting.md").read_text()
    assert f"(django_poolbackend.W006) {shown}" in (docs / "migrating.md").read_text()


def test_w006_silent_without_pool_options_and_on_the_stock_engine():
    assert checks.pool_settings_messages({"default": pooled()}) == []
    stock = pooled(ENGINE="django.db.backends.postgresql", POOL_OPTIONS={"POOL_SIZE": 4})
    assert checks.pool_settings_messages({"default": stock}) == []


# -- tags and registration: every `check` runs the static check, app or not ----------


def test_every_check_of_the_package_is_tagged_and_registered_once():
    from django.core.checks.registry import registry

    ours = [
        (check.__name__, set(check.tags))
        for check in registry.get_checks(include_deployment_checks=True)
        if check.__module__ == "django_poolbackend.checks"
    ]
    # Not "database" on the static one: Django 6.1 leaves database-tagged checks
    # out of every run without --database (plain check, check --deploy, runserver).
    assert sorted(ours) == [
        ("check_pool_settings", {"django_poolbackend"}),
        ("check_server_limits", {"database", "django_poolbackend"}),
    ]
    assert checks.registered()


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pristine(tmp_path_factory.mktemp("dpb_e_checks_pristine"))


@pytest.fixture
def project(pristine: Path, tmp_path: Path) -> FreshProject:
    return copy_of(pristine, tmp_path / "project")


APP_LINE = 'INSTALLED_APPS += ["django_poolbackend"]'

#: The mistakes of issue 18 in one DATABASES entry, as a user would paste them; the
#: port answers nothing, so a check that tried to connect would say W003.
MISTAKES = """
DATABASES = {{
    "default": {{
        "ENGINE": "django_poolbackend.postgresql",
        "NAME": "app",
        "HOST": "127.0.0.1",
        "PORT": "{port}",
        "CONN_MAX_AGE": None,
        "POOL": {{"maxsize": 4}},
        "POOL_OPTIONS": {{"POOL_SIZE": 4, "MAX_OVERFLOW": 4}},
    }}
}}
"""

E001_MAXSIZE = (
    "?: (django_poolbackend.E001) DATABASES['default']['POOL'] has an unknown key "
    "'maxsize': allowed keys are min_size, max_size, timeout, max_waiting, max_lifetime, "
    "max_idle, max_uses, pre_ping, reset, leak_timeout, connect_params, release, expected_processes."
    "\n\tHINT: Fix the pool settings; the documentation's configuration reference lists "
    "every key with its type and default.\n"
)
W001_NONE = (
    "?: (django_poolbackend.W001) DATABASES['default']['CONN_MAX_AGE'] is None with a "
    "pooled ENGINE: each thread keeps its connection out of the pool between requests."
    "\n\tHINT: Set CONN_MAX_AGE to 0 so connections return to the pool at the end of each "
    "request; the pool keeps them open. Under ASGI a non-zero value exhausts the pool "
    "(each request's thread ends holding its connection).\n"
)
W006_SHOWN = "?: (django_poolbackend.W006) {msg}\n\tHINT: {hint}\n".format(
    msg=W006_MSG,
    hint=W006_HINT.format(values=" For these values: 'POOL': {'max_size': 8}."),
)


@pytest.mark.parametrize("app", [True, False], ids=["with_app", "without_app"])
@pytest.mark.parametrize("command", [["check"], ["check", "--deploy"]], ids=" ".join)
def test_first_hour_mistakes_are_reported_without_a_server(project, app, command):
    """Plain `check` and `check --deploy` (no --database) report the settings
    mistakes, once each, with or without the app, and never connect (no W003)."""
    project.paste(MISTAKES.format(port=free_port()))
    if app:
        project.paste(APP_LINE)
    result = project.manage(*command)
    assert result.returncode == 1, result.stderr
    for shown in (E001_MAXSIZE, W001_NONE, W006_SHOWN):
        assert shown in result.stderr
    for check_id in ("E001", "W001", "W006"):
        assert result.stderr.count(f"(django_poolbackend.{check_id})") == 1
    assert "W003" not in result.stderr


@pytest.mark.parametrize("app", [True, False], ids=["with_app", "without_app"])
def test_check_database_reports_capacity_and_conn_max_age_once(project, app):
    """Issue 18: `CONN_MAX_AGE=None` and `max_size=500` passed `check --database
    default` with "no issues" without the app."""
    name = connections["default"].settings_dict["NAME"]  # this run's test database
    project.paste(
        MISTAKES.format(port=5432)
        .replace('"NAME": "app"', f'"NAME": {name!r}, "USER": "postgres"')
        .replace('{"maxsize": 4}', '{"max_size": 500}')
        .replace('        "POOL_OPTIONS": {"POOL_SIZE": 4, "MAX_OVERFLOW": 4},\n', "")
    )
    if app:
        project.paste(APP_LINE)
    result = project.manage("check", "--database", "default")
    assert result.returncode == 0, result.stderr
    assert W001_NONE in result.stderr
    assert (
        "?: (django_poolbackend.W002) DATABASES['default']: POOL['max_size'] is 500 in a "
        "single process, but the server allows "
    ) in result.stderr
    for check_id in ("W001", "W002"):
        assert result.stderr.count(f"(django_poolbackend.{check_id})") == 1
    assert result.stderr.endswith("System check identified 2 issues (0 silenced).\n")


def test_a_pooled_alias_other_than_default_is_checked_with_database(project, tmp_path):
    """Without the app, only the default alias's engine is imported while Django
    sets up: another pooled alias is checked by `check --database` (the backend
    validation hook), as the troubleshooting page says, and only once."""
    project.paste(
        "DATABASES['other'] = {'ENGINE': 'django_poolbackend.sqlite3', "
        f"'NAME': {str(tmp_path / 'other.sqlite3')!r}, 'CONN_MAX_AGE': 60}}"
    )
    plain = project.manage("check")
    assert (plain.returncode, plain.stdout, plain.stderr) == (0, NO_ISSUES, "")
    named = project.manage("check", "--database", "other")
    assert named.returncode == 0, named.stderr
    assert (
        "?: (django_poolbackend.W001) DATABASES['other']['CONN_MAX_AGE'] is 60 with a "
        "pooled ENGINE"
    ) in named.stderr
    assert named.stderr.count("(django_poolbackend.W001)") == 1
    # With the app, every check names it.
    project.paste(APP_LINE)
    assert project.manage("check").stderr.count("(django_poolbackend.W001)") == 1


def test_first_pool_logs_the_settings_warnings_once(make_pooled, vendor, caplog, settings):
    """Item 2's other half: a process that never runs `check` logs W001 and W006
    when it makes its first pool, once per alias; a silenced id stays silent."""
    pooled = make_pooled(vendor, max_size=1)
    pooled.settings_dict.update(CONN_MAX_AGE=60, POOL_OPTIONS={"POOL_SIZE": 4})
    settings.SILENCED_SYSTEM_CHECKS = ["django_poolbackend.W006"]
    with caplog.at_level(logging.WARNING, logger="django_poolbackend"):
        for _ in range(2):
            wrapper = pooled.wrapper()
            pooled.backend_id(wrapper)
            wrapper.close()
    logged = [r.getMessage() for r in caplog.records if r.name == "django_poolbackend"]
    assert logged == [
        f"Pool {pooled.alias!r}: DATABASES[{pooled.alias!r}]['CONN_MAX_AGE'] is 60 with a "
        "pooled ENGINE: each thread keeps its connection out of the pool between requests. "
        "(django_poolbackend.W001) HINT: Set CONN_MAX_AGE to 0 so connections return to "
        "the pool at the end of each request; the pool keeps them open. Under ASGI a "
        "non-zero value exhausts the pool (each request's thread ends holding its "
        "connection)."
    ]
