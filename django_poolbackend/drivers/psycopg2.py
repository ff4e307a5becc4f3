"""The driver for psycopg2: libpq's transaction status as psycopg2 reports it,
a ``SELECT 1`` bounded by the watchdog for the liveness check, and ``DISCARD
ALL`` for the full reset.
"""

from __future__ import annotations

from typing import Any

from .. import introspect
from .base import BROKEN, BUSY, IDLE, IN_TRANSACTION, Driver
from .watchdog import Watchdog


class Psycopg2Driver(Driver):
    """psycopg2, whose connection reports libpq's transaction status (it has no pipeline mode)."""

    name = "psycopg2"

    def ping(self, conn: Any, timeout: float) -> None:
        # psycopg2 has no call with a deadline, so the watchdog ends a query the
        # network swallowed by shutting the socket down.
        with Watchdog(conn, timeout):
            with conn.cursor() as cursor:
                cursor.execute("SELECT 1")
            if not conn.autocommit:
                conn.rollback()

    def state(self, conn: Any) -> int:
        if conn.closed:
            return BROKEN
        # 0 is TRANSACTION_STATUS_IDLE; 4 (UNKNOWN) means the link is bad; 1
        # (ACTIVE), a command under way, is only seen on an asynchronous
        # connection, which can't take a rollback either.
        status = conn.get_transaction_status()
        if status == 4:
            return BROKEN
        if status == 1:
            return BUSY
        return IDLE if status == 0 else IN_TRANSACTION

    def idle_in_autocommit(self, conn: Any) -> bool:
        return not conn.closed and conn.get_transaction_status() == 0 and conn.autocommit

    def behind_proxy(self, conn: Any) -> bool:
        # As for psycopg: the startup's backend pid against the server's.
        with conn.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            (server_pid,) = cursor.fetchone()
        if not conn.autocommit:
            conn.rollback()
        return introspect.behind_proxy(conn.get_backend_pid(), server_pid)

    def full_reset(self, conn: Any, params: Any = None) -> None:
        autocommit = conn.autocommit
        conn.autocommit = True
        try:
            with conn.cursor() as cursor:
                cursor.execute("DISCARD ALL")
        finally:
            conn.autocommit = autocommit
