"""What the pool needs from each DB-API driver, beyond what Django already does.

Each method is the cheapest way the driver has: transaction state comes from the
client library's own bookkeeping (no round trip), a ping is the protocol's lightest
message.
"""

from __future__ import annotations

import heapq
import os
import select
import socket
import threading
from time import monotonic
from typing import Any

from .core.maintenance import join_thread

#: What ``Driver.state()`` says of a connection being returned. BUSY is one in
#: the middle of a protocol exchange (a COPY, a result not read to its end, a
#: pipeline): the driver may hold its own lock for it, so a rollback would wait
#: forever, or the client library refuses every command ("Commands out of sync").
#: Such a connection can only be closed, which is what the stock engine does.
IDLE, IN_TRANSACTION, BROKEN, BUSY = 0, 1, 2, 3


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

    def ping(self, conn: Any, timeout: float | None = None) -> None:
        """Raise unless the server answers within *timeout* seconds (None: no
        bound). A check that times out leaves the socket shut down, so closing the
        connection afterwards cannot block either."""
        raise NotImplementedError

    def state(self, conn: Any) -> int | None:
        """IDLE, IN_TRANSACTION, BROKEN or BUSY from client-side state (no round
        trip, and without taking the driver's lock), or None when the driver can't
        tell."""
        return None

    def autocommit(self, conn: Any) -> bool:
        """The driver's own autocommit flag, client-side: unlike Django's view, it
        also sees a raw ``SET autocommit = 0`` or the attribute set behind Django's
        back."""
        return bool(conn.autocommit)

    def idle_in_autocommit(self, conn: Any) -> bool:
        """True when :meth:`state` would say IDLE and :meth:`autocommit` True: the
        common return, which needs no cleaning, answered in one call. False
        whenever in doubt (the caller then asks the long way), and always for a
        BUSY connection."""
        return False

    def behind_proxy(self, conn: Any) -> bool:
        """Whether a connection proxy (PgBouncer, …) stands between *conn* and the
        server, so that consecutive transactions may run on different server
        sessions. Asked once per pool, on its first connection; only PostgreSQL's
        drivers can tell."""
        return False


class PsycopgDriver(Driver):
    name = "psycopg"

    def __init__(self) -> None:
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
        return bool(int(result.get_value(0, 0)) != pgconn.backend_pid)

    def ping(self, conn: Any, timeout: float | None = None) -> None:
        # An empty query is the lightest full round trip PostgreSQL answers; going
        # through libpq directly keeps psycopg from opening a transaction for it.
        # It is sent and awaited by hand (psycopg keeps libpq non-blocking), so the
        # wait for the answer has a deadline: exec_() would wait forever on a
        # network that silently drops packets.
        pgconn = conn.pgconn
        deadline = None if timeout is None else monotonic() + timeout
        fd = pgconn.socket
        try:
            pgconn.send_query(b"")
            while pgconn.flush():
                _wait_io(fd, select.POLLOUT, deadline)
            pgconn.consume_input()
            while pgconn.is_busy():
                _wait_io(fd, select.POLLIN, deadline)
                pgconn.consume_input()
        except TimeoutError:
            _shutdown(fd)
            raise conn.OperationalError(_no_answer(timeout)) from None
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


class Psycopg2Driver(Driver):
    name = "psycopg2"

    def ping(self, conn: Any, timeout: float | None = None) -> None:
        with _Watchdog(conn, timeout):
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
        return bool(server_pid != conn.get_backend_pid())

    def full_reset(self, conn: Any, params: Any = None) -> None:
        autocommit = conn.autocommit
        conn.autocommit = True
        try:
            with conn.cursor() as cursor:
                cursor.execute("DISCARD ALL")
        finally:
            conn.autocommit = autocommit


class MySQLdbDriver(Driver):
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
            status = self._server_status = _bind_server_status(conn)
        flags = status(conn) if status else None
        if flags is not None and flags & _SERVER_STATUS_MORE_RESULTS_EXISTS:
            return BUSY  # a result set of a multi-statement call is still to come
        if not _ready(conn):
            return BUSY
        if flags is None:
            return None
        if flags & _SERVER_STATUS_IN_TRANS or not flags & _SERVER_STATUS_AUTOCOMMIT:
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
        if flags & (_SERVER_STATUS_IN_TRANS | _SERVER_STATUS_MORE_RESULTS_EXISTS) or not (
            flags & _SERVER_STATUS_AUTOCOMMIT
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
            reset = self._reset_connection = _bind_reset_connection(conn)
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

    def ping(self, conn: Any, timeout: float | None = None) -> None:
        # COM_PING; mysqlclient >= 2.2 never reconnects behind our back here. It
        # blocks for OPTIONS['read_timeout'] at most (forever if unset), and
        # libmariadb waits with poll(), so SO_RCVTIMEO can't bound it: a watchdog
        # shuts the socket down at the deadline, which ends the wait at once.
        with _Watchdog(conn, timeout):
            conn.ping()


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

    def ping(self, conn: Any, timeout: float | None = None) -> None:
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


def _no_answer(timeout: float | None) -> str:
    return (
        f"liveness check: no answer from the server within {timeout:g} s "
        "(network or server unresponsive); the connection is discarded."
    )


def _wait_io(fd: int, events: int, deadline: float | None) -> None:
    """Wait until *fd* is ready for *events*; TimeoutError at *deadline*."""
    poller = select.poll()
    poller.register(fd, events)
    if deadline is None:
        poller.poll()
        return
    remaining = deadline - monotonic()
    if remaining <= 0 or not poller.poll(remaining * 1000.0):
        raise TimeoutError


def _shutdown(fd: int) -> None:
    """Shut a connection's socket down (both ways) without closing the descriptor,
    which stays the driver's. A blocked read on it returns at once, and the
    driver's later goodbye fails fast instead of waiting on a dead network."""
    try:
        sock = socket.socket(fileno=os.dup(fd))
    except OSError:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        sock.close()


class _Watchdog:
    """Bounds a blocking driver call: if it outlives *timeout*, the connection's
    socket is shut down, which makes the call fail at once.

    One thread per process (:class:`_Watchdogs`) serves every bounded call, so a
    ping costs two short lock sections, not a thread start.
    """

    __slots__ = ("_conn", "_timeout", "_entry")

    def __init__(self, conn: Any, timeout: float | None) -> None:
        self._conn = conn
        self._timeout = timeout
        self._entry: list[int] | None = None

    def __enter__(self) -> _Watchdog:
        if self._timeout is not None:
            self._entry = _watchdogs.arm(self._conn.fileno(), self._timeout)
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self._entry is not None and _watchdogs.disarm(self._entry):
            # Even if the call returned just in time: the socket is shut down now.
            raise self._conn.OperationalError(_no_answer(self._timeout)) from None


_ARMED, _DONE, _FIRED = 0, 1, 2
#: Seconds the watchdog thread lingers with nothing to watch before it ends.
_WATCHDOG_IDLE_EXIT = 5.0


class _Watchdogs:
    """The thread behind :class:`_Watchdog`: a heap of deadlines, one lock.

    An entry is ``[fd, state]``. The thread shuts a descriptor down only while its
    entry is armed, under the lock the caller takes to disarm it on the way out,
    so it can never touch a descriptor that was closed and reused meanwhile.
    Disarmed entries are dropped lazily when they reach the top of the heap. The
    thread is started by the first bounded call and ends after a few idle seconds,
    so a quiet process runs no extra thread; in a forked child everything starts
    afresh. A fork with nothing armed stops the thread first (the next bounded call
    starts another), so that a process that forks runs no thread of ours across
    fork() and Python 3.12+ has no reason to warn about one.
    """

    def __init__(self) -> None:
        self._reinit()
        self._fork_hook = False

    def _reinit(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._heap: list[tuple[float, int, list[int]]] = []
        self._seq = 0
        self._thread: threading.Thread | None = None
        self._stopping = False

    def _stop_if_idle(self) -> None:
        """Before fork(): end the thread and wait for it, unless a call is being
        watched (then another thread of the process is in a database call anyway,
        and the child starts afresh whatever happens)."""
        with self._cond:
            thread = self._thread
            if thread is None or any(entry[1] == _ARMED for _, _, entry in self._heap):
                return
            self._stopping = True
            self._cond.notify()
        join_thread(thread, 1.0)

    def arm(self, fd: int, timeout: float) -> list[int]:
        entry = [fd, _ARMED]
        deadline = monotonic() + timeout
        with self._cond:
            self._seq += 1
            # Wake the thread only if it sleeps past this deadline (nothing armed,
            # or everything armed expires later).
            if not self._heap or deadline < self._heap[0][0]:
                self._cond.notify()
            heapq.heappush(self._heap, (deadline, self._seq, entry))
            self._stopping = False
            if not self._fork_hook and hasattr(os, "register_at_fork"):
                # Registered at first use, like the registry's own hooks, so it runs
                # before any "before fork" hook registered earlier (they run in
                # reverse order).
                self._fork_hook = True
                os.register_at_fork(before=self._stop_if_idle, after_in_child=self._reinit)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="django_poolbackend watchdog", daemon=True
                )
                self._thread.start()
        return entry

    def disarm(self, entry: list[int]) -> bool:
        """Whether the deadline passed (and the socket was shut down)."""
        with self._cond:
            fired = entry[1] == _FIRED
            entry[1] = _DONE
        return fired

    def _run(self) -> None:
        cond, heap = self._cond, self._heap
        with cond:
            while True:
                now = monotonic()
                while heap and (heap[0][2][1] != _ARMED or heap[0][0] <= now):
                    _, _, entry = heapq.heappop(heap)
                    if entry[1] == _ARMED:
                        entry[1] = _FIRED
                        _shutdown(entry[0])
                if heap:
                    cond.wait(heap[0][0] - now)
                elif self._stopping or (not cond.wait(_WATCHDOG_IDLE_EXIT) and not heap):
                    # Nothing to watch for a while: end, so that a quiet process
                    # (a Gunicorn master about to fork) runs no extra thread.
                    self._thread = None
                    return


_watchdogs = _Watchdogs()


def _bind_reset_connection(conn: Any) -> Any:
    """mysql_reset_connection() of the client library mysqlclient links, as a
    function of a mysqlclient connection, or False when it can't be reached safely.

    mysqlclient (up to 2.3 at least) has no binding for it, so it is called through
    ctypes with the address of the ``MYSQL`` struct that mysqlclient's connection
    object embeds right after the object header. That layout is checked once
    before it is trusted: the library must find this connection's server thread
    id at that address. A library without the function (MySQL < 5.7.3, Connector/C
    < 3.0) or a different layout means COM_CHANGE_USER instead.
    """
    try:
        import ctypes

        from MySQLdb import _mysql

        library = ctypes.CDLL(_mysql.__file__)
        reset = library.mysql_reset_connection
        thread_id = library.mysql_thread_id
    except (ImportError, OSError, AttributeError):
        return False
    offset = object.__basicsize__
    if _mysql.connection.__basicsize__ <= offset or not isinstance(conn, _mysql.connection):
        return False
    reset.argtypes = thread_id.argtypes = [ctypes.c_void_p]
    reset.restype = ctypes.c_int
    thread_id.restype = ctypes.c_ulong
    if thread_id(id(conn) + offset) != conn.thread_id():
        return False

    def reset_connection(conn: Any) -> int:
        # restype c_int: ctypes already returns a Python int.
        return int(reset(id(conn) + offset))

    return reset_connection


#: MARIADB_CONNECTION_SERVER_STATUS in mysql.h's enum mariadb_value, and the
#: SERVER_STATUS_IN_TRANS / SERVER_STATUS_AUTOCOMMIT / SERVER_MORE_RESULTS_EXISTS
#: flags of the protocol.
_MARIADB_CONNECTION_SERVER_STATUS = 30
_SERVER_STATUS_IN_TRANS, _SERVER_STATUS_AUTOCOMMIT = 1, 2
_SERVER_STATUS_MORE_RESULTS_EXISTS = 8


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
    was waiting, and is now read and waiting in turn: not ready either.
    """
    try:
        return bool(conn.next_result() == -1)
    except Exception:
        return False


def _bind_server_status(conn: Any) -> Any:
    """The server status flags of a mysqlclient connection as a function, read by
    MariaDB Connector/C's mariadb_get_info(), or False where that can't be done
    safely (another client library, another layout). Same ``MYSQL`` address and
    the same one-time check as :func:`_bind_reset_connection`, plus one more: the
    autocommit flag read must agree with mysqlclient's own."""
    if not _bind_reset_connection(conn):
        return False
    import ctypes

    from MySQLdb import _mysql

    try:
        # PyDLL: the call copies one field of the struct, so it keeps the GIL
        # (CDLL would release and retake it: 0.7 µs of a 1.7 µs read, per return).
        library = ctypes.PyDLL(_mysql.__file__)
        get_info = library.mariadb_get_info
    except (OSError, AttributeError):
        return False
    get_info.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
    get_info.restype = ctypes.c_char
    # The per-return read: its own function object, with no result to convert
    # (the probe below checks the one this layout gives), and a buffer per thread
    # passed as a plain address, made once: building a c_uint and its byref() on
    # every return cost more than the call itself.
    read_info = library["mariadb_get_info"]
    read_info.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
    read_info.restype = None
    offset = object.__basicsize__
    which = _MARIADB_CONNECTION_SERVER_STATUS
    buffers = threading.local()

    def server_status(conn: Any) -> int:
        value: ctypes.c_uint
        try:
            value, address = buffers.value
        except AttributeError:
            value = ctypes.c_uint(0)
            address = ctypes.addressof(value)
            buffers.value = (value, address)
        read_info(id(conn) + offset, which, address)
        return value.value

    probe = ctypes.c_uint(0)
    if get_info(id(conn) + offset, which, ctypes.byref(probe)) != b"\x00":
        return False
    if bool(probe.value & _SERVER_STATUS_AUTOCOMMIT) != bool(conn.get_autocommit()):
        return False
    return server_status


def for_module(database_module: Any) -> Driver:
    """The driver object for a Django wrapper's ``Database`` module."""
    name = database_module.__name__.split(".")[0]
    if name == "psycopg":
        return PsycopgDriver()
    if name == "psycopg2":
        return Psycopg2Driver()
    if name == "MySQLdb":
        return MySQLdbDriver()
    if name == "sqlite3":
        return SQLiteDriver()
    raise ValueError(
        f"django_poolbackend has no driver support for {name!r}; "
        "supported: psycopg, psycopg2, MySQLdb (mysqlclient), sqlite3."
    )
