"""What the pool needs from each DB-API driver, beyond what Django already does.

Each method is the cheapest way the driver has: transaction state comes from the
client library's own bookkeeping (no round trip), a ping is the protocol's lightest
message.
"""

from __future__ import annotations

import os
from typing import Any

#: What ``Driver.state()`` says of a connection being returned.
IDLE, IN_TRANSACTION, BROKEN = 0, 1, 2


class Driver:
    """Shared behaviour; subclasses fill in the driver-specific parts."""

    name = "dbapi"
    #: Wrapper attributes that a physical connect sets on the Django wrapper and
    #: that a wrapper reusing a pooled connection must see too.
    wrapper_attrs: tuple[str, ...] = ("isolation_level",)

    def close(self, conn: Any) -> None:
        try:
            conn.close()
        except Exception:
            pass

    def abandon(self, conn: Any) -> None:
        """Drop a connection inherited across fork() without a byte on its socket.

        The descriptor is pointed at /dev/null first, so whatever the driver sends
        on close (PostgreSQL's Terminate, MySQL's COM_QUIT, a TLS close_notify)
        goes nowhere, and the parent's session on the shared socket is untouched.
        """
        try:
            fd = conn.fileno()
        except Exception:
            fd = -1
        if fd >= 0:
            devnull = os.open(os.devnull, os.O_RDWR)
            try:
                os.dup2(devnull, fd)
            finally:
                os.close(devnull)
        self.close(conn)

    def ping(self, conn: Any) -> None:
        raise NotImplementedError

    def state(self, conn: Any) -> int | None:
        """IDLE, IN_TRANSACTION or BROKEN from client-side state (no round trip),
        or None when the driver can't tell."""
        return None


class PsycopgDriver(Driver):
    name = "psycopg"

    def __init__(self) -> None:
        from psycopg import pq

        self._empty_query = pq.ExecStatus.EMPTY_QUERY
        self._ok = pq.ConnStatus.OK
        self._idle = pq.TransactionStatus.IDLE

    def ping(self, conn: Any) -> None:
        # An empty query is the lightest full round trip PostgreSQL answers; going
        # through libpq directly keeps psycopg from opening a transaction for it.
        result = conn.pgconn.exec_(b"")
        if result.status != self._empty_query:
            raise conn.OperationalError("liveness check failed: " + conn.pgconn.get_error_message())

    def state(self, conn: Any) -> int:
        # libpq's own bookkeeping, read straight from the PGconn: ``closed`` and
        # ``broken`` on the psycopg connection are both this status underneath.
        pgconn = conn.pgconn
        if pgconn.status != self._ok:
            return BROKEN
        return IDLE if pgconn.transaction_status == self._idle else IN_TRANSACTION

    def full_reset(self, conn: Any) -> None:
        # DISCARD ALL can't run in a transaction block; psycopg clears its own
        # prepared-statement cache when it sees the command go through.
        autocommit = conn.autocommit
        if not autocommit:
            conn.autocommit = True
        try:
            conn.execute("DISCARD ALL")
        finally:
            if not autocommit:
                conn.autocommit = False


class Psycopg2Driver(Driver):
    name = "psycopg2"

    def ping(self, conn: Any) -> None:
        with conn.cursor() as cursor:
            cursor.execute("SELECT 1")
        if not conn.autocommit:
            conn.rollback()

    def state(self, conn: Any) -> int:
        if conn.closed:
            return BROKEN
        # 0 is TRANSACTION_STATUS_IDLE; 4 (UNKNOWN) means the link is bad.
        status = conn.get_transaction_status()
        if status == 4:
            return BROKEN
        return IDLE if status == 0 else IN_TRANSACTION

    def full_reset(self, conn: Any) -> None:
        autocommit = conn.autocommit
        conn.autocommit = True
        try:
            with conn.cursor() as cursor:
                cursor.execute("DISCARD ALL")
        finally:
            conn.autocommit = autocommit


class MySQLdbDriver(Driver):
    name = "mysqlclient"

    def ping(self, conn: Any) -> None:
        # COM_PING; mysqlclient >= 2.2 never reconnects behind our back here.
        conn.ping()


def for_module(database_module: Any) -> Driver:
    """The driver object for a Django wrapper's ``Database`` module."""
    name = database_module.__name__.split(".")[0]
    if name == "psycopg":
        return PsycopgDriver()
    if name == "psycopg2":
        return Psycopg2Driver()
    if name == "MySQLdb":
        return MySQLdbDriver()
    raise ValueError(
        f"django_poolbackend has no driver support for {name!r}; "
        "supported: psycopg, psycopg2, MySQLdb (mysqlclient)."
    )
