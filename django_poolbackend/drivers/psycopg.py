"""The driver for psycopg 3: libpq's own bookkeeping for the return check, and
the liveness check, proxy detection and full reset sent straight through libpq.

Going through the ``pgconn`` rather than a cursor keeps psycopg from opening a
transaction for these commands and keeps them out of its statement cache.
"""

from __future__ import annotations

import select
from time import monotonic
from typing import Any

from .. import introspect
from .base import BROKEN, BUSY, IDLE, IN_TRANSACTION, Driver
from .sockets import no_answer, shutdown, wait_io


class PsycopgDriver(Driver):
    """psycopg 3, whose connection exposes libpq's ``PGconn`` as ``pgconn``."""

    name = "psycopg"

    def __init__(self) -> None:
        # Imported here, not at the top: the package must import where psycopg
        # is not installed, and only a psycopg backend ever builds this driver.
        from psycopg import pq

        self._empty_query = pq.ExecStatus.EMPTY_QUERY
        self._ok = pq.ConnStatus.OK
        self._idle = pq.TransactionStatus.IDLE
        self._active = pq.TransactionStatus.ACTIVE
        self._command_ok = pq.ExecStatus.COMMAND_OK
        self._tuples_ok = pq.ExecStatus.TUPLES_OK

    def behind_proxy(self, conn: Any) -> bool:
        # A proxy answers the startup with a backend key of its own (PgBouncer's
        # is random), so the pid libpq was given differs from the server's. The
        # query goes straight through libpq, like the ping: no transaction, and
        # psycopg's statement cache never sees it.
        pgconn = conn.pgconn
        result = pgconn.exec_(b"SELECT pg_backend_pid()")
        if result.status != self._tuples_ok:
            raise conn.OperationalError(
                "SELECT pg_backend_pid() failed: " + pgconn.get_error_message()
            )
        return introspect.behind_proxy(pgconn.backend_pid, int(result.get_value(0, 0)))

    def ping(self, conn: Any, timeout: float) -> None:
        # An empty query is the lightest full round trip PostgreSQL answers; going
        # through libpq directly keeps psycopg from opening a transaction for it.
        # It is sent and awaited by hand (psycopg keeps libpq non-blocking), so the
        # wait for the answer has a deadline: exec_() would wait forever on a
        # network that silently drops packets.
        pgconn = conn.pgconn
        deadline = monotonic() + timeout
        fd = pgconn.socket
        try:
            pgconn.send_query(b"")
            while pgconn.flush():
                wait_io(fd, select.POLLOUT, deadline)
            pgconn.consume_input()
            while pgconn.is_busy():
                wait_io(fd, select.POLLIN, deadline)
                pgconn.consume_input()
        except TimeoutError:
            shutdown(fd)
            raise conn.OperationalError(no_answer(timeout)) from None
        status = None
        while (result := pgconn.get_result()) is not None:
            if status is None:
                status = result.status
        if status != self._empty_query:
            raise conn.OperationalError("liveness check failed: " + conn.pgconn.get_error_message())

    def state(self, conn: Any) -> int:
        # libpq's own bookkeeping, read straight from the PGconn: ``closed`` and
        # ``broken`` on the psycopg connection are both this status underneath.
        pgconn = conn.pgconn
        if pgconn.status != self._ok:
            return BROKEN
        status = pgconn.transaction_status
        # ACTIVE: a command is under way (a COPY left open, a pipeline with queued
        # commands), and psycopg holds its connection lock during a COPY, so
        # rollback() would wait on it forever. A pipeline left open with nothing
        # queued is IDLE to libpq, but every later command would go through it.
        # And a lock held with the connection IDLE belongs to a thread still using
        # it. None of these can be cleaned; closing needs no lock.
        if status == self._active or pgconn.pipeline_status or conn.lock.locked():
            return BUSY
        return IDLE if status == self._idle else IN_TRANSACTION

    def idle_in_autocommit(self, conn: Any) -> bool:
        # libpq reports an unknown transaction status on a bad link, so IDLE
        # also means the connection is fine. A pipeline left open is IDLE too
        # when nothing is queued in it: psycopg's own attribute for the pipeline
        # entered says so, and reading it is cheaper than asking libpq.
        try:
            in_pipeline = conn._pipeline is not None
        except AttributeError:  # a psycopg without it: ask libpq
            in_pipeline = bool(conn.pgconn.pipeline_status)
        return (
            conn.pgconn.transaction_status == self._idle
            and not in_pipeline
            and conn.autocommit is True
        )

    def full_reset(self, conn: Any, params: Any = None) -> None:
        # Straight through libpq, like the ping: psycopg would otherwise count the
        # command in its statement cache (and prepare it past prepare_threshold),
        # and once it has seen one DISCARD ALL while nothing was prepared, it no
        # longer notices later ones dropping its prepared statements: the next
        # request then fails with
        # 'prepared statement "_pg3_0" does not exist'. The connection is idle
        # here (rolled back first), so no transaction block is in the way.
        pgconn = conn.pgconn
        result = pgconn.exec_(b"DISCARD ALL")
        if result.status != self._command_ok:
            raise conn.OperationalError("DISCARD ALL failed: " + pgconn.get_error_message())
        # The server forgot every prepared statement: so must psycopg, or it
        # would EXECUTE names that no longer exist. ``clear()`` also queues a
        # DEALLOCATE ALL for the next query, which DISCARD ALL made pointless.
        prepared = getattr(conn, "_prepared", None)
        if prepared is not None and prepared.clear():
            to_flush = getattr(prepared, "_to_flush", None)
            if to_flush is not None:
                to_flush.clear()
        # DISCARD ALL includes UNLISTEN *, but notifications that already arrived
        # wait in psycopg's backlog for the next notifies() call: the next request
        # would receive what was meant for this one.
        backlog = getattr(conn, "_notifies_backlog", None)
        if backlog:
            backlog.clear()
