"""The driver for mysqlclient (MySQLdb): the server status flags for the return
check where MariaDB Connector/C exposes them, COM_RESET_CONNECTION or
COM_CHANGE_USER for the full reset, and COM_PING bounded by the watchdog.

The calls into the client library that mysqlclient has no binding for live in
:mod:`.mariadb`; this module only decides when to use them.
"""

from __future__ import annotations

from typing import Any

from .base import BROKEN, BUSY, IDLE, IN_TRANSACTION, Driver
from .mariadb import (
    SERVER_STATUS_AUTOCOMMIT,
    SERVER_STATUS_IN_TRANS,
    SERVER_STATUS_MORE_RESULTS_EXISTS,
    bind_reset_connection,
    bind_server_status,
)
from .watchdog import Watchdog


class MySQLdbDriver(Driver):
    """mysqlclient, over MariaDB Connector/C or Oracle's libmysqlclient."""

    name = "mysqlclient"
    #: The client library's mysql_reset_connection() bound to a mysqlclient
    #: connection (None: not looked up yet; False: not usable here).
    _reset_connection: Any = None
    #: The client library's copy of the server status flags, likewise.
    _server_status: Any = None

    def state(self, conn: Any) -> int | None:
        # The server status flags of the last OK packet, as the client library
        # kept them: no round trip, and unlike Django's view they see a raw
        # START TRANSACTION or SET autocommit=0. Only MariaDB Connector/C exposes
        # them (mariadb_get_info); elsewhere Django's view decides (None).
        if not conn.open:
            return BROKEN
        status = self._server_status
        if status is None:
            try:
                status = self._server_status = bind_server_status(conn)
            except conn.ProgrammingError:
                # mysqlclient would not hand out the address: another thread is
                # inside a call on this connection. Nothing is bound yet (the
                # next return tries again), and _ready() below fails the same
                # way, so the connection is called busy.
                status = None
        flags = status(conn) if status else None
        if flags is not None and flags & SERVER_STATUS_MORE_RESULTS_EXISTS:
            return BUSY  # a result set of a multi-statement call is still to come
        if not _ready(conn):
            return BUSY
        if flags is None:
            return None
        if flags & SERVER_STATUS_IN_TRANS or not flags & SERVER_STATUS_AUTOCOMMIT:
            return IN_TRANSACTION
        return IDLE

    def autocommit(self, conn: Any) -> bool:
        # Read from the server's last reply, so a raw SET autocommit shows.
        return bool(conn.get_autocommit())

    def idle_in_autocommit(self, conn: Any) -> bool:
        # One read of the status flags answers both questions.
        status = self._server_status
        if not conn.open or not status:
            return False
        flags = status(conn)
        if flags & (SERVER_STATUS_IN_TRANS | SERVER_STATUS_MORE_RESULTS_EXISTS) or not (
            flags & SERVER_STATUS_AUTOCOMMIT
        ):
            return False
        # _ready(), inlined: this is every request's return. (Calling the
        # library's mysql_next_result() through ctypes instead, to keep the GIL
        # that mysqlclient releases around it, measured dearer still.)
        try:
            return bool(conn.next_result() == -1)
        except Exception:
            return False

    def full_reset(self, conn: Any, params: Any) -> None:
        """Wipe the session, then redo the set-up the connect itself did.

        COM_RESET_CONNECTION (one round trip, no re-authentication) when the
        client library's function can be reached, COM_CHANGE_USER otherwise (a
        login again, with the credentials of a new connection). Both drop user
        variables, temporary tables, prepared statements, LOCK TABLES and
        GET_LOCK() locks, and put every session variable back to its global value,
        which also undoes the connect options ``init_command`` and ``collation``:
        those are replayed here. *params(credentials)* gives the connect
        parameters; with ``credentials=True`` fresh ones, through
        ``connect_params``.
        """
        if not conn.open:
            # The C struct is freed: nothing may touch it.
            raise conn.OperationalError(2006, "the connection is closed")
        reset = self._reset_connection
        if reset is None:
            reset = self._reset_connection = bind_reset_connection(conn)
        if reset:
            if reset(conn) != 0:
                raise conn.OperationalError(conn.errno(), conn.error())
            setup = params(credentials=False)
        else:
            setup = params(credentials=True)
            # The error of a refused login names the user, never the password.
            conn.change_user(
                setup.get("user", ""), setup.get("password", ""), setup.get("database")
            )
        charset = setup.get("charset")
        collation = setup.get("collation")
        # MariaDB puts the session back to the character set of the handshake,
        # MySQL to the server's default. And the client library follows a SET NAMES
        # (it decodes results with it) but not the reset: it still believes what
        # the last request set. So both sides are set again unless both are known
        # to be right already.
        if charset and (
            collation
            or conn.character_set_name() != charset
            or "MariaDB" not in conn.get_server_info()
        ):
            conn.set_character_set(charset, collation)
        init_command = setup.get("init_command")
        if init_command:
            cursor = conn.cursor()
            try:
                cursor.execute(init_command)
                while cursor.nextset():
                    pass
            finally:
                cursor.close()

    def ping(self, conn: Any, timeout: float) -> None:
        # COM_PING; mysqlclient >= 2.2 never reconnects behind our back here. It
        # blocks for OPTIONS['read_timeout'] at most (forever if unset), and
        # libmariadb waits with poll(), so SO_RCVTIMEO can't bound it: a watchdog
        # shuts the socket down at the deadline, which ends the wait at once.
        with Watchdog(conn, timeout):
            conn.ping()


def _ready(conn: Any) -> bool:
    """Whether the client library would accept a command on this mysqlclient
    connection: no result is left half read (an unbuffered ``SSCursor`` or
    ``use_result()`` not read to its end).

    The library keeps that state in its ``MYSQL`` struct and publishes it
    nowhere, but mysql_next_result() reads it first: on a connection that is not
    ready it fails with "Commands out of sync" (2014) at once, without I/O. With
    no further result set announced (the caller has checked the server's
    SERVER_MORE_RESULTS_EXISTS flag where the library exposes it) it returns -1,
    again without I/O, having only cleared the last error and the affected-rows
    count, which nobody reads between two requests. 0 means another result set
    was waiting, and is now read and waiting in turn: not ready either. And from
    mysqlclient 2.3 on, the call fails with a ProgrammingError while another
    thread is inside a mysqlclient call on the same connection (its lock is taken
    without waiting), so a connection still in use elsewhere is never ready.
    """
    try:
        return bool(conn.next_result() == -1)
    except Exception:
        return False
