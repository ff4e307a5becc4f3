"""Session state from one request to the next on the same pooled connection.

Request A changes one kind of session state and returns its connection; request B
gets the same physical connection (``max_size=1``, and the server-side backend id
proves it) and reads the state back *from the server*. What B may see is what
``POOL["reset"]`` promises:

* ``"rollback"`` only ends transactions. Session state (variables, role, temporary
  tables, locks, prepared statements) persists, exactly as with Django's own
  persistent connections (``CONN_MAX_AGE > 0``); an open or failed transaction,
  and a changed autocommit mode, never reach B.
* ``"full"`` leaves B nothing of A, and the connection's one-time set-up is back:
  time zone, ``OPTIONS["assume_role"]`` and isolation level on PostgreSQL;
  isolation level, ``init_command`` and autocommit on MySQL/MariaDB.

A property test (hypothesis) then applies random sequences of changes in A and
checks every kind in B against what ``"full"`` promises: the state of a fresh
connection.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import MySQLdb
import psycopg
import pytest
from django.db import DatabaseError, connections
from hypothesis import given, settings
from hypothesis import strategies as st

from django_poolbackend import process

from .conftest import wait_for

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "mysql"])

SUFFIX = os.environ.get("DPB_TEST_DB_SUFFIX", "")
#: Server-wide names (roles, GET_LOCK names, advisory keys) carry the suite's
#: suffix, so two suite runs on one machine never share them.
OWNER = f"dpb_state{SUFFIX}_owner"
ROLES = (f"dpb_state{SUFFIX}_role0", f"dpb_state{SUFFIX}_role1")
LOCK_NAMES = tuple(f"dpb_state{SUFFIX}_lock{i}" for i in range(3))
ADVISORY_KEYS = tuple(
    (zlib.crc32(f"dpb_state{SUFFIX}".encode()) & 0x7FFF0000) + i for i in range(3)
)
TEMP_TABLES = ("dpb_state_tmp0", "dpb_state_tmp1", "dpb_state_tmp2")
STATEMENTS = ("dpb_state_ps0", "dpb_state_ps1", "dpb_state_ps2")
MYSQL_SQL_MODE = "STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION"
RESETS = ("rollback", "full")
SECRET = "dpb-h1-S3cret-never-logged"


# -- the servers' side: a table, roles, a MySQL login with a password ---------------


def _pg_admin(dbname: str) -> psycopg.Connection:
    sd = connections["default"].settings_dict
    return psycopg.connect(
        host=sd["HOST"], port=sd["PORT"], user="postgres", dbname=dbname, autocommit=True
    )


def _mysql_admin(database: str | None = None) -> Any:
    sd = connections["mysql"].settings_dict
    kwargs = {"database": database} if database else {}
    return MySQLdb.connect(
        host=sd["HOST"], port=int(sd["PORT"]), user="root", autocommit=True, **kwargs
    )


@pytest.fixture(scope="module")
def state_env(django_db_setup: Any, django_db_blocker: Any) -> Iterator[None]:
    """``dpb_state_rows`` in both test databases (for transactions), the roles that
    A switches to and that ``assume_role`` names, and a MySQL login with a password."""
    with django_db_blocker.unblock():
        pg_db = connections["default"].settings_dict["NAME"]
        my_db = connections["mysql"].settings_dict["NAME"]
        with _pg_admin(pg_db) as conn:
            for role in (OWNER, *ROLES):
                if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role]).fetchone():
                    conn.execute(f'CREATE ROLE "{role}" NOLOGIN')
            conn.execute("CREATE TABLE IF NOT EXISTS dpb_state_rows (id int)")
            conn.execute("CREATE TABLE IF NOT EXISTS dpb_state_other (id int)")
            conn.execute("GRANT ALL ON dpb_state_rows, dpb_state_other TO PUBLIC")
        admin = _mysql_admin(my_db)
        cursor = admin.cursor()
        cursor.execute("CREATE TABLE IF NOT EXISTS dpb_state_rows (id int) ENGINE=InnoDB")
        cursor.execute("CREATE TABLE IF NOT EXISTS dpb_state_other (id int) ENGINE=InnoDB")
        for host in ("%", "localhost"):
            quoted = host.replace("%", "%%")  # a literal % beside a parameter
            cursor.execute(
                f"CREATE USER IF NOT EXISTS 'dpb_state{SUFFIX}'@'{quoted}' IDENTIFIED BY %s",
                [SECRET],
            )
            cursor.execute(f"GRANT ALL ON `{my_db}`.* TO 'dpb_state{SUFFIX}'@'{host}'")
        admin.close()
        yield
        with _pg_admin(pg_db) as conn:
            conn.execute("DROP TABLE IF EXISTS dpb_state_rows, dpb_state_other")
            for role in (OWNER, *ROLES):
                conn.execute(f'DROP ROLE IF EXISTS "{role}"')
        admin = _mysql_admin()
        cursor = admin.cursor()
        for host in ("%", "localhost"):
            cursor.execute(f"DROP USER IF EXISTS 'dpb_state{SUFFIX}'@'{host}'")
        admin.close()


def state_pool(make_pooled: Callable[..., Any], alias: str, reset: str, **options: Any) -> Any:
    """A one-connection pool whose connections have a one-time set-up worth checking:
    ``assume_role`` and an isolation level on PostgreSQL, ``init_command`` on MySQL."""
    pooled = make_pooled(alias, max_size=1, reset=reset)
    opts = pooled.settings_dict["OPTIONS"]
    if pooled.vendor == "postgresql":
        opts.update(assume_role=OWNER, isolation_level=psycopg.IsolationLevel.REPEATABLE_READ)
    else:
        opts["init_command"] = f"SET sql_mode = '{MYSQL_SQL_MODE}'"
    opts.update(options)
    return pooled


class Request:
    """One request's use of the pooled wrapper: checkout, queries, return."""

    def __init__(self, pooled: Any, wrapper: Any) -> None:
        self.pooled = pooled
        self.wrapper = wrapper
        self.bid = pooled.backend_id(wrapper)

    def run(self, sql: str, params: Any = None) -> list[tuple] | None:
        with self.wrapper.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchall() if cursor.description else None

    def one(self, sql: str, params: Any = None) -> Any:
        rows = self.run(sql, params)
        assert rows is not None
        return rows[0][0]

    def mysql_error(self, sql: str) -> int:
        """Run *sql* on the driver's own cursor: 0 if it ran, else the server's
        error number (so a probe for a missing object marks nothing as failed)."""
        cursor = self.wrapper.connection.cursor()
        try:
            cursor.execute(sql)
            cursor.fetchall()
            return 0
        except MySQLdb.Error as exc:
            return exc.args[0]
        finally:
            cursor.close()

    def observe(self, sql: str, params: tuple = ()) -> list[tuple]:
        """Ask the server through a connection of its own (outside the pool)."""
        return self.pooled.observer.query(sql, params)

    def end(self) -> None:
        self.wrapper.close()


# -- the kinds of state ---------------------------------------------------------------


@dataclass(frozen=True)
class Kind:
    name: str
    alias: str  # "default" (PostgreSQL) or "mysql"
    #: Session state (persists under "rollback"); False: transaction state.
    session: bool
    change: Callable[[Request, int], None]
    read: Callable[[Request], Any]
    #: What ``read`` shows in A right after ``change(A, value)``; None: unreadable.
    changed: Callable[[int], Any] | None


def _committed_rows(r: Request) -> int:
    return r.observe("SELECT COUNT(*) FROM dpb_state_rows")[0][0]


def _pg_transaction(r: Request) -> tuple:
    # Rows this session sees beyond the committed ones (A's, if its transaction
    # reached B), and what the server says of the session once the query is done.
    uncommitted = r.one("SELECT COUNT(*) FROM dpb_state_rows") - _committed_rows(r)
    return uncommitted, r.pooled.session_state(r.bid)


def _mysql_transaction(r: Request) -> tuple:
    uncommitted = r.one("SELECT COUNT(*) FROM dpb_state_rows") - _committed_rows(r)
    return uncommitted, r.one("SELECT @@in_transaction"), r.one("SELECT @@autocommit")


def _pg_begin_insert(r: Request, v: int) -> None:
    r.run("BEGIN")
    r.run("INSERT INTO dpb_state_rows VALUES (%s)", [v])


def _pg_fail(r: Request, v: int) -> None:
    r.run("BEGIN")
    try:
        r.run("SELECT 1 / 0")
    except DatabaseError:
        pass


def _django_transaction(r: Request, v: int) -> None:
    r.wrapper.set_autocommit(False)
    r.run("INSERT INTO dpb_state_rows VALUES (%s)", [v])


def _psycopg_autocommit_off(r: Request, v: int) -> None:
    r.wrapper.connection.autocommit = False  # behind Django's back
    r.run("INSERT INTO dpb_state_rows VALUES (%s)", [v])


def _pg_prepare(r: Request, v: int) -> None:
    name = STATEMENTS[v % 3]
    if not r.run("SELECT 1 FROM pg_prepared_statements WHERE name = %s", [name]):
        r.run(f"PREPARE {name} AS SELECT {v}")


def _pg_temp_tables(r: Request) -> list:
    return r.one(
        "SELECT COALESCE(array_agg(relname::text ORDER BY relname), '{}') FROM pg_class "
        "WHERE relnamespace = pg_my_temp_schema() AND relkind = 'r'"
    )


def _pg_advisory(r: Request) -> list:
    rows = r.observe(
        "SELECT objid FROM pg_locks WHERE locktype = 'advisory' AND pid = %s AND granted "
        "ORDER BY objid",
        (r.bid,),
    )
    return [row[0] for row in rows]


PG = "default"
PG_KINDS = [
    Kind(
        "set",
        PG,
        True,
        lambda r, v: r.run(f"SET work_mem = '{64 + v}MB'"),
        lambda r: r.one("SELECT current_setting('work_mem')"),
        lambda v: f"{64 + v}MB",
    ),
    Kind(
        "set_config",
        PG,
        True,
        lambda r, v: r.run("SELECT set_config('dpb_state.marker', %s, false)", [f"v{v}"]),
        # A placeholder variable stays defined (empty) once a session set it.
        lambda r: r.one("SELECT NULLIF(current_setting('dpb_state.marker', true), '')"),
        lambda v: f"v{v}",
    ),
    Kind(
        "set_role",
        PG,
        True,
        lambda r, v: r.run(f'SET ROLE "{ROLES[v % 2]}"'),
        lambda r: r.one("SELECT current_user"),
        lambda v: ROLES[v % 2],
    ),
    Kind(
        "search_path",
        PG,
        True,
        lambda r, v: r.run(f"SET search_path TO dpb_state_s{v}, public"),
        lambda r: r.one("SELECT current_setting('search_path')"),
        lambda v: f"dpb_state_s{v}, public",
    ),
    Kind(
        "time_zone",
        PG,
        True,
        lambda r, v: r.run(f"SET TIME ZONE 'Etc/GMT-{v % 12 + 1}'"),
        lambda r: r.one("SELECT current_setting('TimeZone')"),
        lambda v: f"Etc/GMT-{v % 12 + 1}",
    ),
    Kind(
        "isolation",
        PG,
        True,
        lambda r, v: r.run("SET default_transaction_isolation = 'serializable'"),
        lambda r: r.one("SELECT current_setting('default_transaction_isolation')"),
        lambda v: "serializable",
    ),
    Kind(
        "temp_table",
        PG,
        True,
        lambda r, v: r.run(f"CREATE TEMP TABLE IF NOT EXISTS {TEMP_TABLES[v % 3]} (a int)"),
        _pg_temp_tables,
        lambda v: [TEMP_TABLES[v % 3]],
    ),
    Kind(
        "advisory_lock",
        PG,
        True,
        lambda r, v: r.run("SELECT pg_advisory_lock(%s)", [ADVISORY_KEYS[v % 3]]),
        _pg_advisory,
        lambda v: [ADVISORY_KEYS[v % 3]],
    ),
    Kind(
        "prepared_statement",
        PG,
        True,
        _pg_prepare,
        lambda r: [
            row[0]
            for row in r.run(
                "SELECT name FROM pg_prepared_statements WHERE name LIKE 'dpb\\_state\\_ps%%' "
                "ORDER BY name"
            )
            or []
        ],
        lambda v: [STATEMENTS[v % 3]],
    ),
    Kind(
        "open_transaction",
        PG,
        False,
        _pg_begin_insert,
        _pg_transaction,
        lambda v: (1, "idle in transaction"),
    ),
    Kind("failed_transaction", PG, False, _pg_fail, _pg_transaction, None),
    Kind(
        "driver_autocommit_off",
        PG,
        False,
        _psycopg_autocommit_off,
        _pg_transaction,
        lambda v: (1, "idle in transaction"),
    ),
    Kind(
        "django_transaction",
        PG,
        False,
        _django_transaction,
        _pg_transaction,
        lambda v: (1, "idle in transaction"),
    ),
]


def _mysql_temp_tables(r: Request) -> list:
    found = []
    for name in TEMP_TABLES:
        error = r.mysql_error(f"SELECT 1 FROM {name} LIMIT 0")
        assert error in (0, 1146), f"probing {name}: MySQL error {error}"
        if not error:
            found.append(name)
    return found


def _mysql_statements(r: Request) -> list:
    found = []
    for name in STATEMENTS:
        error = r.mysql_error(f"EXECUTE {name}")
        assert error in (0, 1243), f"probing {name}: MySQL error {error}"
        if not error:
            found.append(name)
    return found


def _mysql_user_locks(r: Request) -> list:
    return [
        name for name in LOCK_NAMES if r.observe("SELECT IS_USED_LOCK(%s)", (name,))[0][0] == r.bid
    ]


def _mysql_table_locks(r: Request) -> list:
    rows = r.observe(f"SHOW OPEN TABLES FROM `{r.pooled.observer.database}` WHERE In_use > 0")
    return sorted(row[1] for row in rows)


def _mysql_get_lock(r: Request, v: int) -> None:
    assert r.one("SELECT GET_LOCK(%s, 0)", [LOCK_NAMES[v % 3]]) == 1


def _mysql_begin_insert(r: Request, v: int) -> None:
    r.run("START TRANSACTION")
    r.run("INSERT INTO dpb_state_rows VALUES (%s)", [v])


def _mysql_autocommit_off(r: Request, v: int) -> None:
    r.run("SET autocommit = 0")
    r.run("INSERT INTO dpb_state_rows VALUES (%s)", [v])


MY = "mysql"
MYSQL_KINDS = [
    Kind(
        "user_variable",
        MY,
        True,
        lambda r, v: r.run("SET @dpb_state_uv = %s", [v]),
        lambda r: r.one("SELECT @dpb_state_uv"),
        lambda v: v,
    ),
    Kind(
        "session_variable",
        MY,
        True,
        lambda r, v: r.run(f"SET SESSION wait_timeout = {1000 + v}"),
        lambda r: r.one("SELECT @@session.wait_timeout"),
        lambda v: 1000 + v,
    ),
    Kind(
        "sql_mode",
        MY,
        True,
        lambda r, v: r.run("SET SESSION sql_mode = 'ANSI_QUOTES'"),
        lambda r: r.one("SELECT @@session.sql_mode"),
        lambda v: "ANSI_QUOTES",
    ),
    Kind(
        "time_zone",
        MY,
        True,
        lambda r, v: r.run(f"SET time_zone = '+0{v % 9 + 1}:00'"),
        lambda r: r.one("SELECT @@session.time_zone"),
        lambda v: f"+0{v % 9 + 1}:00",
    ),
    Kind(
        "isolation",
        MY,
        True,
        lambda r, v: r.run("SET SESSION TRANSACTION ISOLATION LEVEL SERIALIZABLE"),
        lambda r: {
            row[1]
            for row in r.run(
                "SHOW SESSION VARIABLES WHERE Variable_name IN "
                "('tx_isolation', 'transaction_isolation')"
            )
            or []
        },
        lambda v: {"SERIALIZABLE"},
    ),
    Kind(
        "temp_table",
        MY,
        True,
        lambda r, v: r.run(f"CREATE TEMPORARY TABLE IF NOT EXISTS {TEMP_TABLES[v % 3]} (a int)"),
        _mysql_temp_tables,
        lambda v: [TEMP_TABLES[v % 3]],
    ),
    Kind("get_lock", MY, True, _mysql_get_lock, _mysql_user_locks, lambda v: [LOCK_NAMES[v % 3]]),
    Kind(
        "lock_tables",
        MY,
        True,
        lambda r, v: r.run("LOCK TABLES dpb_state_rows WRITE"),
        _mysql_table_locks,
        lambda v: ["dpb_state_rows"],
    ),
    Kind(
        "prepared_statement",
        MY,
        True,
        lambda r, v: r.run(f"PREPARE {STATEMENTS[v % 3]} FROM 'SELECT {v}'"),
        _mysql_statements,
        lambda v: [STATEMENTS[v % 3]],
    ),
    Kind(
        "open_transaction", MY, False, _mysql_begin_insert, _mysql_transaction, lambda v: (1, 1, 1)
    ),
    Kind(
        "autocommit_off", MY, False, _mysql_autocommit_off, _mysql_transaction, lambda v: (1, 1, 0)
    ),
    Kind(
        "django_transaction",
        MY,
        False,
        _django_transaction,
        _mysql_transaction,
        lambda v: (1, 1, 0),
    ),
]

KINDS = PG_KINDS + MYSQL_KINDS


def _start(pooled: Any, wrapper: Any) -> Request:
    request = Request(pooled, wrapper)
    request.run("DELETE FROM dpb_state_rows")
    return request


def _kind_params() -> list:
    params = []
    for kind in KINDS:
        for reset in RESETS:
            vendor = "pg" if kind.alias == PG else "my"
            params.append(
                pytest.param(kind, reset, id=f"{vendor}-{kind.name}-{reset}")
            )
    return params


@pytest.mark.parametrize(("kind", "reset"), _kind_params())
def test_state_reaches_the_next_request_as_reset_promises(make_pooled, state_env, kind, reset):
    pooled = state_pool(make_pooled, kind.alias, reset)
    wrapper = pooled.wrapper()
    a = _start(pooled, wrapper)
    fresh = kind.read(a)
    kind.change(a, 1)
    if kind.changed is not None:
        assert kind.read(a) == kind.changed(1) != fresh  # the change really happened
    a.end()

    b = Request(pooled, wrapper)
    assert b.bid == a.bid  # A's physical connection: only the reset stands between
    seen = kind.read(b)
    b.end()
    if reset == "rollback" and kind.session:
        assert seen == kind.changed(1)  # "rollback" ends transactions, nothing more
    else:
        assert seen == fresh
    stats = pooled.stats()
    assert stats["connects"] == 1
    assert stats["closed"] == 0


@pytest.mark.parametrize("reset", RESETS)
def test_lock_tables_left_by_a_request(make_pooled, state_env, reset):
    """LOCK TABLES is session state: with "rollback" the next request inherits it
    and any query on another table fails (as with Django's persistent connections);
    "full" releases it."""
    pooled = state_pool(make_pooled, "mysql", reset)
    wrapper = pooled.wrapper()
    a = _start(pooled, wrapper)
    a.run("LOCK TABLES dpb_state_rows WRITE")
    a.end()
    b = Request(pooled, wrapper)
    assert b.bid == a.bid
    error = b.mysql_error("SELECT COUNT(*) FROM dpb_state_other")
    b.end()
    assert error == (1100 if reset == "rollback" else 0)  # 1100: "was not locked with LOCK TABLES"


def test_full_reset_sets_the_connection_up_again(make_pooled, state_env, vendor):
    """Everything the one-time set-up did is back after a "full" reset, on the same
    connection, even when A undid all of it."""
    pooled = state_pool(make_pooled, vendor, "full")
    wrapper = pooled.wrapper()
    a = Request(pooled, wrapper)
    if pooled.vendor == "postgresql":
        a.run("RESET ROLE")
        a.run("SET TIME ZONE 'America/Santiago'")
        a.run("SET default_transaction_isolation = 'serializable'")
        wrapper.connection.autocommit = False  # behind Django's back
    else:
        a.run("SET time_zone = '+03:00', sql_mode = '', autocommit = 0")
        a.run("SET SESSION TRANSACTION ISOLATION LEVEL SERIALIZABLE")
        a.run("SET NAMES latin1")
    a.end()

    b = Request(pooled, wrapper)
    assert b.bid == a.bid
    if pooled.vendor == "postgresql":
        assert b.one("SELECT current_user") == OWNER  # OPTIONS["assume_role"]
        assert b.one("SHOW TimeZone") == "UTC"
        assert b.wrapper.connection.autocommit is True
        with b.wrapper.cursor() as cursor:
            b.wrapper.set_autocommit(False)
            cursor.execute("SHOW transaction_isolation")  # OPTIONS["isolation_level"]
            assert cursor.fetchone()[0] == "repeatable read"
            b.wrapper.rollback()
            b.wrapper.set_autocommit(True)
        assert pooled.session_state(b.bid) == "idle"
    else:
        assert b.one("SELECT @@session.sql_mode") == MYSQL_SQL_MODE  # init_command
        assert b.one("SELECT @@session.time_zone") == b.one("SELECT @@global.time_zone")
        assert b.one("SELECT @@autocommit") == 1
        assert b.one("SELECT @@sql_auto_is_null") == 0
        assert _mysql_transaction(b)[1:] == (0, 1)
        assert {
            row[1]
            for row in b.run(
                "SHOW SESSION VARIABLES WHERE Variable_name IN "
                "('tx_isolation', 'transaction_isolation')"
            )
        } == {"READ-COMMITTED"}
        assert list(
            b.run(
                "SELECT @@character_set_client, @@character_set_connection, @@character_set_results"
            )
        ) == [("utf8mb4",) * 3]
        assert b.one("SELECT %s", ["naïve ☃ 𝄞"]) == "naïve ☃ 𝄞"
    b.end()
    assert pooled.stats()["resets"] == 2


# -- psycopg's own prepared statements --------------------------------------------------


@pytest.mark.parametrize("reset", RESETS)
@pytest.mark.parametrize("threshold", [0, 1, 3])
def test_psycopg_prepared_statements_survive_a_reset(make_pooled, state_env, reset, threshold):
    """psycopg prepares a query once it ran *threshold* times, and then only
    EXECUTEs it by name. After DISCARD ALL the server forgot those names, so psycopg
    must too, or the next request fails with 'prepared statement "_pg3_0" does not
    exist'. The first reset happens before anything was prepared: psycopg itself
    only notices a DISCARD ALL the first time it sees one. (Django's default cursor
    binds parameters client-side and never prepares: server_side_binding does.)"""
    pooled = state_pool(
        make_pooled, "default", reset, prepare_threshold=threshold, server_side_binding=True
    )
    wrapper = pooled.wrapper()
    first = None
    for round_ in range(4):
        request = Request(pooled, wrapper)
        first = first or request.bid
        assert request.bid == first
        if round_:
            for i in range(threshold + 2):
                assert request.one("SELECT %s::int + 1", [i]) == i + 1
            # The explicit way: prepare=True on a psycopg cursor.
            with psycopg.Cursor(wrapper.connection) as raw:
                raw.execute("SELECT %s::int * 2", [round_], prepare=True)
                assert raw.fetchone()[0] == 2 * round_
            names = {row[0] for row in request.run("SELECT name FROM pg_prepared_statements")}
            assert any(name.startswith("_pg3_") for name in names)  # really prepared server-side
        request.end()
    assert pooled.stats()["closed"] == 0


# -- a reset that fails ---------------------------------------------------------------------


def failing_reset(conn: Any) -> None:
    raise RuntimeError("custom reset failed")


def test_a_failed_reset_discards_the_connection(make_pooled, state_env, vendor, caplog):
    pooled = make_pooled(vendor, max_size=1, reset=f"{__name__}.failing_reset")
    wrapper = pooled.wrapper()
    first = pooled.backend_id(wrapper)
    with caplog.at_level(logging.WARNING, logger="django_poolbackend"):
        wrapper.close()
    assert "discarding a connection whose reset failed: RuntimeError" in caplog.text
    stats = pooled.stats()
    assert stats["closed_by_reason"] == {"reset_failed": 1}
    assert stats["size"] == 0
    # Closed, not just forgotten (MariaDB lists a session until it processed the quit).
    wait_for(lambda: first not in pooled.server_sessions(), what="the session to end")
    second = pooled.backend_id(wrapper)
    assert second != first
    wrapper.close()


@pytest.fixture
def change_user_only(monkeypatch: Any) -> None:
    """MySQL full reset through COM_CHANGE_USER, as where COM_RESET_CONNECTION can't
    be reached (a client library without mysql_reset_connection)."""
    from django_poolbackend import checkout

    driver = next(d for d in checkout._drivers.values() if d.name == "mysqlclient")
    monkeypatch.setattr(driver, "_reset_connection", False)


def _secret_pool(make_pooled: Callable[..., Any]) -> Any:
    pooled = state_pool(make_pooled, "mysql", "full")
    pooled.settings_dict["USER"] = f"dpb_state{SUFFIX}"
    pooled.settings_dict["PASSWORD"] = SECRET
    return pooled


def _set_secret_password(password: str) -> None:
    admin = _mysql_admin()
    cursor = admin.cursor()
    for host in ("%", "localhost"):
        quoted = host.replace("%", "%%")
        cursor.execute(f"ALTER USER 'dpb_state{SUFFIX}'@'{quoted}' IDENTIFIED BY %s", [password])
    admin.close()


@pytest.mark.usefixtures("change_user_only")
def test_change_user_reset_clears_the_session(make_pooled, state_env):
    pooled = _secret_pool(make_pooled)
    wrapper = pooled.wrapper()
    a = _start(pooled, wrapper)
    a.run("SET @dpb_state_uv = 1, SESSION wait_timeout = 1001, sql_mode = ''")
    a.run(f"CREATE TEMPORARY TABLE {TEMP_TABLES[0]} (a int)")
    a.end()
    b = Request(pooled, wrapper)
    assert b.bid == a.bid
    assert b.one("SELECT @dpb_state_uv") is None
    assert b.one("SELECT @@session.wait_timeout") == b.one("SELECT @@global.wait_timeout")
    assert b.one("SELECT @@session.sql_mode") == MYSQL_SQL_MODE
    assert b.one("SELECT CURRENT_USER()").startswith(f"dpb_state{SUFFIX}@")
    assert _mysql_temp_tables(b) == []
    b.end()
    assert pooled.stats()["closed"] == 0


@pytest.mark.usefixtures("change_user_only")
def test_a_refused_change_user_never_shows_the_password(make_pooled, state_env, caplog):
    pooled = _secret_pool(make_pooled)
    wrapper = pooled.wrapper()
    first = pooled.backend_id(wrapper)
    _set_secret_password("dpb-h1-another-password")
    try:
        # The reset itself, to see its exception: a login refused.
        with pytest.raises(MySQLdb.OperationalError) as refused:
            wrapper._dpb_full_reset(wrapper.connection)
        assert refused.value.args[0] == 1045
        assert SECRET not in repr(refused.value.args) and SECRET not in str(refused.value)
        # What a request sees: the connection is discarded, the log names no secret.
        wrapper.close()
        with caplog.at_level(logging.DEBUG, logger="django_poolbackend"):
            again = pooled.wrapper()
            with pytest.raises(DatabaseError):
                pooled.backend_id(again)  # a new connection with the old password
    finally:
        _set_secret_password(SECRET)
    for record in caplog.records:
        assert SECRET not in record.getMessage()
        assert SECRET not in (record.exc_text or "")
    wait_for(lambda: first not in pooled.server_sessions(), what="the session to end")


@pytest.mark.usefixtures("change_user_only")
def test_a_refused_change_user_on_return_discards_quietly(make_pooled, state_env, caplog):
    pooled = _secret_pool(make_pooled)
    wrapper = pooled.wrapper()
    first = pooled.backend_id(wrapper)
    _set_secret_password("dpb-h1-another-password")
    try:
        with caplog.at_level(logging.DEBUG, logger="django_poolbackend"):
            wrapper.close()
    finally:
        _set_secret_password(SECRET)
    assert pooled.stats()["closed_by_reason"] == {"reset_failed": 1}
    assert "reset failed: OperationalError" in caplog.text
    assert SECRET not in caplog.text
    assert all(SECRET not in (r.exc_text or "") for r in caplog.records)
    second = pooled.backend_id(wrapper)
    assert second != first
    wrapper.close()


# -- the property: whatever A did, "full" gives B a fresh session ---------------------------


def _changes(kinds: list[Kind]) -> st.SearchStrategy:
    """Sequences of (kind name, value): names keep a falsifying example readable."""
    return st.lists(
        st.tuples(st.sampled_from([kind.name for kind in kinds]), st.integers(0, 5)),
        min_size=1,
        max_size=8,
    )


def test_full_reset_leaves_nothing_of_any_sequence_of_changes(make_pooled, state_env, vendor):
    pooled = state_pool(make_pooled, vendor, "full")
    kinds = {
        kind.name: kind for kind in (PG_KINDS if pooled.vendor == "postgresql" else MYSQL_KINDS)
    }
    wrapper = pooled.wrapper()
    fresh_request = _start(pooled, wrapper)
    fresh = {name: kind.read(fresh_request) for name, kind in kinds.items()}
    fresh_request.end()

    @settings(max_examples=40, deadline=None, database=None, derandomize=True)
    @given(changes=_changes(list(kinds.values())))
    def check(changes: list[tuple[str, int]]) -> None:
        a = _start(pooled, wrapper)
        # A failed PostgreSQL transaction refuses everything after it: keep it last.
        for name, value in sorted(changes, key=lambda c: c[0] == "failed_transaction"):
            try:
                kinds[name].change(a, value)
            except (DatabaseError, psycopg.Error):
                pass  # refused in this sequence (e.g. autocommit off inside BEGIN): fine too
        a.end()
        b = Request(pooled, wrapper)
        seen = {name: kind.read(b) for name, kind in kinds.items()}
        b.end()
        if b.bid != a.bid or seen != fresh:
            # Whatever leaked must not spoil the next examples (hypothesis shrinks by
            # re-running): start them on a new connection.
            process.retire(pooled.alias)
        assert b.bid == a.bid
        assert seen == fresh

    check()
    stats = pooled.stats()
    assert stats["connects"] == 1
    assert stats["closed"] == 0
    assert stats["resets"] >= 2 * 40


def test_mysql_status_reads_in_threads_see_their_own_connection(django_db_setup):
    """The return check reads MariaDB's status flags into a buffer per thread: two
    threads returning at once, one connection in a transaction and one idle, must
    each get their own connection's answer (a shared buffer would swap them)."""
    import sys
    import threading

    from django_poolbackend import drivers

    driver = drivers.MySQLdbDriver()
    busy, idle = _mysql_admin(), _mysql_admin()
    busy.query("START TRANSACTION")
    # The first full check binds the read (the pool's first return does the same).
    assert driver.state(busy) == drivers.IN_TRANSACTION
    assert driver.state(idle) == drivers.IDLE
    assert driver._server_status, "MariaDB Connector/C's status read could not be bound"
    wrong: list[tuple[str, bool]] = []
    start = threading.Barrier(2)

    def read(conn: Any, expected: bool, name: str) -> None:
        start.wait()
        for _ in range(20_000):
            answer = driver.idle_in_autocommit(conn)
            if answer is not expected:
                wrong.append((name, answer))
                return

    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter can
    try:
        threads = [
            threading.Thread(target=read, args=(busy, False, "in transaction")),
            threading.Thread(target=read, args=(idle, True, "idle")),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(previous)
        busy.rollback()
        busy.close()
        idle.close()
    assert wrong == []


# -- state that "rollback" keeps and docs/clean-state.md lists: LISTEN, WITH HOLD
# cursors, prepared (two-phase) transactions ------------------------------------------

CHANNEL = f"dpb_state{SUFFIX}_channel"


def _same_session_twice(pooled: Any) -> tuple[Any, int]:
    wrapper = pooled.wrapper()
    return wrapper, pooled.backend_id(wrapper)


@pytest.mark.parametrize("reset", RESETS)
def test_listen_reaches_the_next_request_under_rollback_only(make_pooled, reset):
    """A LISTEN outlives the request under "rollback": the next borrower of the
    session is still listening, receives the notifications, and also gets those
    that arrived for the first request and were never read (psycopg keeps them in
    its backlog). "full" (DISCARD ALL is also UNLISTEN *) leaves neither."""
    pooled = make_pooled("default", max_size=1, reset=reset)
    wrapper, first = _same_session_twice(pooled)
    with wrapper.cursor() as cursor:
        cursor.execute(f'LISTEN "{CHANNEL}"')
    pooled.observer.query("SELECT pg_notify(%s, 'before the return')", (CHANNEL,))
    with wrapper.cursor() as cursor:
        cursor.execute("SELECT 1")  # psycopg reads the notification into its backlog
    wrapper.close()
    pooled.observer.query("SELECT pg_notify(%s, 'after the return')", (CHANNEL,))

    assert pooled.backend_id(wrapper) == first  # the same session
    with wrapper.cursor() as cursor:
        cursor.execute("SELECT pg_listening_channels()")
        listening = [row[0] for row in cursor.fetchall()]
    # Waits for the second notification if the session still listens; a short
    # wait otherwise, which is what the absence of one costs to prove.
    timeout = 10.0 if reset == "rollback" else 0.5
    received = [n.payload for n in wrapper.connection.notifies(timeout=timeout, stop_after=2)]
    wrapper.close()
    if reset == "rollback":
        assert listening == [CHANNEL]
        assert received == ["before the return", "after the return"]
    else:
        assert listening == []
        assert received == []


@pytest.mark.parametrize("reset", RESETS)
def test_with_hold_cursor_of_a_half_read_iterator(make_pooled, reset):
    """iterator() outside a transaction declares a cursor WITH HOLD. Half read
    when the request ends, it stays in the session under "rollback" (the next
    request sees it in pg_cursors, and the server keeps its rows); "full" closes
    it."""
    pooled = make_pooled("default", max_size=1, reset=reset)
    wrapper, first = _same_session_twice(pooled)
    cursor = wrapper.chunked_cursor()
    cursor.execute("SELECT generate_series(1, 10000)")
    assert len(cursor.fetchmany(10)) == 10
    name = cursor.cursor.name
    wrapper.close()

    assert pooled.backend_id(wrapper) == first
    with wrapper.cursor() as check:
        check.execute("SELECT name, is_holdable FROM pg_cursors")
        open_cursors = check.fetchall()
    wrapper.close()
    assert open_cursors == ([(name, True)] if reset == "rollback" else [])
    # The left-over cursor object would send CLOSE on whichever request holds the
    # session when it is closed or collected; retire the pool first, so that it
    # finds its connection closed and sends nothing.
    process.retire(pooled.alias)
    cursor.close()


XA_ID = f"dpb_state{SUFFIX}_xa"


@pytest.mark.parametrize("reset", RESETS)
def test_mysql_xa_prepare_survives_both_resets(make_pooled, state_env, reset, caplog):
    """An XA transaction left PREPARED: MariaDB refuses the rollback ("XAER_RMFAIL
    ... PREPARED state"), so the connection is discarded under either reset, and
    the prepared transaction survives the disconnect (MariaDB >= 10.5), holding its
    locks until someone commits or rolls it back by its id."""
    pooled = make_pooled("mysql", max_size=1, reset=reset)
    wrapper, first = _same_session_twice(pooled)
    try:
        with wrapper.cursor() as cursor:
            cursor.execute(f"XA START '{XA_ID}'")
            cursor.execute("INSERT INTO dpb_state_rows VALUES (7)")
            cursor.execute(f"XA END '{XA_ID}'")
            cursor.execute(f"XA PREPARE '{XA_ID}'")
        with caplog.at_level(logging.WARNING, logger="django_poolbackend"):
            wrapper.close()
        assert "discarding a connection whose reset failed: OperationalError" in caplog.text
        assert pooled.stats()["closed_by_reason"] == {"reset_failed": 1}
        assert pooled.backend_id(wrapper) != first
        with wrapper.cursor() as cursor:
            cursor.execute("XA RECOVER")
            prepared = [row[3] for row in cursor.fetchall()]
        wrapper.close()
        assert XA_ID.encode() in prepared
    finally:
        with contextlib.suppress(MySQLdb.Error):
            pooled.observer.query(f"XA ROLLBACK '{XA_ID}'")


@pytest.fixture(scope="module")
def prepared_xacts_server(django_db_setup: Any, django_db_blocker: Any) -> Iterator[Any]:
    """A private PostgreSQL with max_prepared_transactions > 0: the shared server has
    0 (PREPARE TRANSACTION fails there) and must not be reconfigured."""
    from .servers import PrivatePostgres

    server = PrivatePostgres()
    try:
        with psycopg.connect(
            host="127.0.0.1", port=server.port, user="postgres", autocommit=True
        ) as conn:
            conn.execute("ALTER SYSTEM SET max_prepared_transactions = 4")
        server.restart()
        yield server
    finally:
        server.destroy()


@pytest.mark.parametrize("reset", RESETS)
def test_pg_prepare_transaction_survives_both_resets(prepared_xacts_server, reset):
    """PREPARE TRANSACTION ends the session's transaction (libpq says idle: the
    return needs no rollback), but the prepared transaction lives on in the server,
    outside any session: neither "rollback" nor DISCARD ALL touches it. It is still
    in pg_prepared_xacts at the next checkout, as it would be with the stock engine."""
    server = prepared_xacts_server
    alias = f"dpb_state_2pc_{reset}"
    settings_dict = server.settings(connections["default"].settings_dict, max_size=1, reset=reset)
    wrapper = type(connections["default"])(copy.deepcopy(settings_dict), alias)
    gid = f"dpb_state{SUFFIX}_{reset}"
    try:
        with wrapper.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            first = cursor.fetchone()[0]
            cursor.execute("CREATE TABLE IF NOT EXISTS dpb_state_2pc (id int)")
            cursor.execute("BEGIN")
            cursor.execute("INSERT INTO dpb_state_2pc VALUES (1)")
            cursor.execute(f"PREPARE TRANSACTION '{gid}'")
        wrapper.close()
        with wrapper.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            assert cursor.fetchone()[0] == first  # pooled: nothing failed on return
            cursor.execute("SELECT gid FROM pg_prepared_xacts WHERE gid = %s", [gid])
            assert cursor.fetchall() == [(gid,)]
            cursor.execute(f"ROLLBACK PREPARED '{gid}'")
        wrapper.close()
        assert process.pools[alias].stats()["closed_by_reason"] == {}
    finally:
        wrapper.close()
        process.retire(alias)
