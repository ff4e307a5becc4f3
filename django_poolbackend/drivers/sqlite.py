"""The driver for the standard library's sqlite3: SQLite's own transaction flag
for the return check, and a connection inherited across fork() kept alive rather
than closed, since closing it would touch files the parent still uses.
"""

from __future__ import annotations

from typing import Any

from .base import BROKEN, IDLE, IN_TRANSACTION, Driver


class SQLiteDriver(Driver):
    """The standard library's sqlite3: no server, so no round trip to save, but a
    connection still costs an open(), a schema read and Django's PRAGMAs."""

    name = "sqlite3"
    #: Django's SQLite wrapper keeps these, computed by get_connection_params().
    wrapper_attrs = ("transaction_mode", "init_commands")

    def autocommit(self, conn: Any) -> bool:
        # Django drives sqlite3's legacy transaction control: isolation_level
        # None is autocommit (Connection.autocommit, Python 3.12+, stays unused).
        return conn.isolation_level is None

    def state(self, conn: Any) -> int:
        # SQLite's own flag (sqlite3_get_autocommit), no I/O. A closed connection
        # raises ProgrammingError on any access.
        try:
            return IN_TRANSACTION if conn.in_transaction else IDLE
        except Exception:
            return BROKEN

    def idle_in_autocommit(self, conn: Any) -> bool:
        try:
            return conn.isolation_level is None and not conn.in_transaction
        except Exception:
            return False

    def dropped(self, conn: Any) -> bool:
        return False  # no server to hang up

    def ping(self, conn: Any, timeout: float) -> None:
        # Nothing on the other side can die; this proves the handle is open and
        # the library answers. It reads no page and takes no lock, so a writer
        # holding the database cannot make it wait or fail.
        conn.execute("SELECT 1").close()

    def abandon(self, conn: Any) -> None:
        """Never close a connection inherited across fork(), not even at exit.

        SQLite's rule is that a connection opened before fork() must not be used
        in the child (https://www.sqlite.org/howtocorrupt.html#fork), and closing
        is a use: sqlite3_close() may roll back through the journal, checkpoint a
        WAL and delete the -wal file, all on files the parent still uses. There is
        no socket to point at /dev/null, and dropping the last reference would
        close it too (in the garbage collector, or at interpreter exit), so the
        object is kept alive for the rest of this process.
        """
        _keep_forever(conn)


#: Objects this process must never finalise (a fallback where ctypes is missing).
_immortal: list[Any] = []


def _keep_forever(obj: Any) -> None:
    try:
        import ctypes

        # One reference nobody will give back: the count never reaches zero, so
        # not even interpreter shutdown deallocates (and closes) it.
        ctypes.pythonapi.Py_IncRef(ctypes.py_object(obj))
    except Exception:
        _immortal.append(obj)
