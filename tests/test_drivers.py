"""The driver layer on its own, against the real MariaDB.

The drivers package keeps the names the rest of the package uses; the MariaDB
ctypes code finds the ``MYSQL`` struct through mysqlclient's own
``_get_native_connection()``, or through the object layout where a mysqlclient
lacks that method; mysqlclient's per-connection lock still stops a reset of a
connection another thread is using; and with a client library that has no
``mariadb_get_info`` (Oracle's libmysqlclient) the return check falls back to
Django's view and still hands every next request a clean connection.
"""

from __future__ import annotations

import logging
import threading
import types
from collections.abc import Iterator
from typing import Any

import MySQLdb
import MySQLdb.connections
import MySQLdb.cursors
import pytest
from django.db import connections

from django_poolbackend import drivers
from django_poolbackend.drivers import mariadb

from .conftest import wait_for

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "mysql"])

TABLE = "dpb_drv_rows"


def _admin(database: str | None = None) -> Any:
    """A MariaDB connection of this test's own, outside any pool."""
    sd = connections["mysql"].settings_dict
    kwargs = {"database": database} if database else {}
    return MySQLdb.connect(
        host=sd["HOST"], port=int(sd["PORT"]), user="root", autocommit=True, **kwargs
    )


@pytest.fixture
def rows_table(django_db_setup: Any, django_db_blocker: Any) -> Iterator[Any]:
    """``dpb_drv_rows`` in the suite's MariaDB database, and a connection to count
    its rows with."""
    with django_db_blocker.unblock():
        admin = _admin(connections["mysql"].settings_dict["NAME"])
        admin.query(f"CREATE TABLE IF NOT EXISTS {TABLE} (id int) ENGINE=InnoDB")
        admin.query(f"DELETE FROM {TABLE}")
        yield admin
        admin.query(f"DROP TABLE IF EXISTS {TABLE}")
        admin.close()


def _count(admin: Any) -> int:
    cursor = admin.cursor()
    cursor.execute(f"SELECT COUNT(*) FROM {TABLE}")
    (count,) = cursor.fetchone()
    cursor.close()
    return int(count)


def _one(conn: Any, sql: str) -> Any:
    cursor = conn.cursor()
    try:
        cursor.execute(sql)
        return cursor.fetchone()[0]
    finally:
        cursor.close()


# -- the package keeps its names ------------------------------------------------------


def test_the_drivers_package_keeps_the_names_the_rest_of_the_package_uses():
    assert (drivers.IDLE, drivers.IN_TRANSACTION, drivers.BROKEN, drivers.BUSY) == (0, 1, 2, 3)
    modules = {
        "psycopg": drivers.PsycopgDriver,
        "psycopg2.extensions": drivers.Psycopg2Driver,
        "MySQLdb": drivers.MySQLdbDriver,
        "sqlite3.dbapi2": drivers.SQLiteDriver,
    }
    for module, cls in modules.items():
        driver = drivers.for_module(types.ModuleType(module))
        assert type(driver) is cls and isinstance(driver, drivers.Driver)
    with pytest.raises(ValueError) as caught:
        drivers.for_module(types.ModuleType("cx_Oracle"))
    assert str(caught.value) == (
        "django_poolbackend has no driver support for 'cx_Oracle'; "
        "supported: psycopg, psycopg2, MySQLdb (mysqlclient), sqlite3."
    )


# -- where the MYSQL struct is found ---------------------------------------------------


def test_the_mysql_struct_address_comes_from_mysqlclient():
    conn = _admin()
    try:
        address = mariadb._native_address(conn)
        assert address is not None, "this mysqlclient has no _get_native_connection()"
        library = mariadb.open_library()
        assert mariadb._struct_offset(conn, library) == address - id(conn)
        # The binders use that address: the status read and the reset both work.
        status = mariadb.bind_server_status(conn)
        reset = mariadb.bind_reset_connection(conn)
        assert callable(status) and callable(reset)
        conn.query("START TRANSACTION")
        assert status(conn) & mariadb.SERVER_STATUS_IN_TRANS
        conn.rollback()
        assert not status(conn) & mariadb.SERVER_STATUS_IN_TRANS
        conn.query("SET @dpb_drv = 7")
        assert reset(conn) == 0
        assert _one(conn, "SELECT @dpb_drv") is None
    finally:
        conn.close()


class _WithoutNativeConnection(MySQLdb.connections.Connection):
    """A mysqlclient connection as one from before mysqlclient 1.4, which had no
    ``_get_native_connection()``."""

    _get_native_connection = None


def test_without_get_native_connection_the_object_layout_is_used():
    sd = connections["mysql"].settings_dict
    conn = _WithoutNativeConnection(
        host=sd["HOST"], port=int(sd["PORT"]), user="root", autocommit=True
    )
    try:
        assert mariadb._native_address(conn) is None
        assert mariadb._struct_offset(conn, mariadb.open_library()) == object.__basicsize__
        driver = drivers.MySQLdbDriver()
        assert driver.state(conn) == drivers.IDLE
        assert callable(driver._server_status)
        conn.query("START TRANSACTION")
        assert driver.state(conn) == drivers.IN_TRANSACTION
        assert driver.idle_in_autocommit(conn) is False
        conn.rollback()
        assert driver.idle_in_autocommit(conn) is True
        reset = mariadb.bind_reset_connection(conn)
        assert callable(reset)
        conn.query("SET @dpb_drv = 7")
        assert reset(conn) == 0
        assert _one(conn, "SELECT @dpb_drv") is None
    finally:
        conn.close()


def test_a_connection_in_use_by_another_thread_is_neither_reset_nor_ready():
    """mysqlclient 2.3's lock: while another thread is inside a call on the
    connection, the reset refuses (mysqlclient's own ProgrammingError, raised when
    the reset asks mysqlclient for the address) and the return check calls the
    connection busy, so nothing is done to it under the other thread."""
    conn, killer = _admin(), _admin()
    reset = mariadb.bind_reset_connection(conn)
    assert callable(reset)
    thread_id = conn.thread_id()
    done = threading.Event()
    outcome: list[BaseException] = []

    def long_call() -> None:
        try:
            conn.query("SELECT SLEEP(60)")
            conn.store_result()
        except BaseException as exc:  # the KILL QUERY below ends it
            outcome.append(exc)
        finally:
            done.set()

    worker = threading.Thread(target=long_call, name="dpb drv long call")
    worker.start()
    try:
        wait_for(
            lambda: (
                _one(
                    killer,
                    f"SELECT COUNT(*) FROM information_schema.processlist "
                    f"WHERE id = {thread_id} AND info LIKE 'SELECT SLEEP%'",
                )
                == 1
            ),
            what="the other thread's query to run",
        )
        with pytest.raises(MySQLdb.ProgrammingError, match="already in use from another thread"):
            reset(conn)
        # A driver binding its status read on this very return: mysqlclient
        # refuses the address too, so nothing is bound yet and the answer is busy.
        fresh = drivers.MySQLdbDriver()
        assert fresh.state(conn) == drivers.BUSY
        assert fresh._server_status is None
    finally:
        killer.query(f"KILL QUERY {thread_id}")
        assert done.wait(30), "the killed query did not end"
        worker.join()
        killer.close()
    # SLEEP() killed returns 1 in MariaDB (or the call fails): either way it ended.
    assert not outcome or isinstance(outcome[0], MySQLdb.OperationalError)
    # Free again: the reset goes through now.
    assert reset(conn) == 0
    conn.close()


# -- a client library without mariadb_get_info ----------------------------------------


class _OracleLikeLibrary:
    """The client library as Oracle's libmysqlclient shows itself to ctypes: the
    same mysql_* functions (called for real here), but none of MariaDB's own
    mariadb_* ones."""

    def __init__(self, library: Any) -> None:
        self._library = library

    def __getattr__(self, name: str) -> Any:
        if name.startswith("mariadb_"):
            raise AttributeError(name)
        return getattr(self._library, name)


@pytest.fixture
def oracle_client_library(monkeypatch: Any) -> None:
    real = mariadb.open_library()
    assert real is not None and hasattr(real, "mariadb_get_info")
    monkeypatch.setattr(mariadb, "open_library", lambda: _OracleLikeLibrary(real))


def test_the_status_read_is_not_bound_without_mariadb_get_info(oracle_client_library):
    conn = _admin()
    try:
        assert mariadb.bind_server_status(conn) is False
        driver = drivers.MySQLdbDriver()
        # No flags: Django's view decides (None), and the one-call check says no.
        assert driver.state(conn) is None
        assert driver._server_status is False
        assert driver.idle_in_autocommit(conn) is False
        # What needs no mariadb_get_info still works: the autocommit flag of the
        # server's last reply, and the reset through mysql_reset_connection().
        conn.query("SET autocommit = 0")
        assert driver.autocommit(conn) is False
        conn.query("SET autocommit = 1")
        assert driver.autocommit(conn) is True
        assert callable(mariadb.bind_reset_connection(conn))
        # A result left half read is still seen, through next_result().
        streaming = conn.cursor(MySQLdb.cursors.SSCursor)
        streaming.execute("SELECT 1 UNION ALL SELECT 2")
        assert streaming.fetchone() == (1,)
        assert driver.state(conn) == drivers.BUSY
    finally:
        conn.close()


@pytest.mark.parametrize("reset", ["rollback", "full"])
def test_a_pool_without_mariadb_get_info_still_returns_clean_connections(
    make_pooled, rows_table, oracle_client_library, monkeypatch, caplog, reset
):
    pooled = make_pooled("mysql", max_size=1, reset=reset)
    wrapper = pooled.wrapper()
    first = pooled.backend_id(wrapper)
    driver = pooled.pool.driver
    # The driver is shared by every MariaDB pool of the process and may have
    # bound the real library already: forget that, so it binds the stand-in.
    monkeypatch.setattr(driver, "_server_status", None)
    monkeypatch.setattr(driver, "_reset_connection", None)
    assert driver.state(wrapper.connection) is None
    wrapper.close()
    assert driver._server_status is False
    if reset == "full":
        assert callable(driver._reset_connection)

    # An idle return keeps the session.
    assert pooled.backend_id(wrapper) == first
    wrapper.close()

    # Django's own autocommit off with an insert not committed: rolled back.
    wrapper.set_autocommit(False)
    with wrapper.cursor() as cursor:
        cursor.execute(f"INSERT INTO {TABLE} VALUES (1)")
    with caplog.at_level(logging.WARNING, logger="django_poolbackend"):
        wrapper.close()
    assert "rolled back a transaction left open on a returned connection" in caplog.text
    assert pooled.backend_id(wrapper) == first
    assert _one(wrapper.connection, "SELECT @@autocommit") == 1
    wrapper.close()
    assert _count(rows_table) == 0

    # A raw SET autocommit = 0 behind Django's back, then an insert: rolled back
    # too, and autocommit is on again for the next request.
    raw = wrapper.cursor()
    raw.execute("SET autocommit = 0")
    raw.execute(f"INSERT INTO {TABLE} VALUES (2)")
    raw.close()
    wrapper.close()
    assert pooled.backend_id(wrapper) == first
    assert _one(wrapper.connection, "SELECT @@autocommit") == 1
    wrapper.close()
    assert _count(rows_table) == 0

    # A result left half read: closed as busy, never handed on.
    wrapper.ensure_connection()
    streaming = wrapper.connection.cursor(MySQLdb.cursors.SSCursor)
    streaming.execute("SELECT 1 UNION ALL SELECT 2")
    assert streaming.fetchone() == (1,)
    wrapper.close()
    stats = pooled.stats()
    assert stats["closed_by_reason"] == {"busy": 1}
    wait_for(lambda: first not in pooled.server_sessions(), what="the busy session to end")
    assert pooled.backend_id(wrapper) != first
    wrapper.close()
