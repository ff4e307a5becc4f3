"""The ctypes code that calls the client library mysqlclient links for what
mysqlclient has no binding of its own: ``mysql_reset_connection()`` for the full
reset, and MariaDB Connector/C's ``mariadb_get_info()`` for the server status
flags the return check reads.

Both functions take the library's ``MYSQL *``. mysqlclient hands it out through
``connection._get_native_connection()`` (a capsule, present since mysqlclient
1.4); only where that method is missing is the address worked out from the layout
of mysqlclient's connection object, which embeds the ``MYSQL`` struct right after
the object header. Either way the address is checked once, on the first
connection, before anything is called through it: the library must find that
connection's server thread id there. Every binder returns False when its
function cannot be reached safely, and the caller then takes the slower way that
needs no ctypes at all. A binder raises mysqlclient's ProgrammingError instead
when mysqlclient will not hand out the address because another thread is inside a
call on the connection; nothing is bound then, and the next connection tries again.

mysqlclient 2.3 added a lock per connection, which it takes (without waiting:
a second thread gets a ProgrammingError) around each of its own calls. There is
no way to take it from Python, and the calls here do not need it, for the reason
given at each of them.
"""

from __future__ import annotations

import ctypes
import functools
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

#: MARIADB_CONNECTION_SERVER_STATUS in mysql.h's enum mariadb_value, and the
#: SERVER_STATUS_IN_TRANS / SERVER_STATUS_AUTOCOMMIT / SERVER_MORE_RESULTS_EXISTS
#: flags of the protocol.
MARIADB_CONNECTION_SERVER_STATUS = 30
SERVER_STATUS_IN_TRANS, SERVER_STATUS_AUTOCOMMIT = 1, 2
SERVER_STATUS_MORE_RESULTS_EXISTS = 8

if TYPE_CHECKING:
    ServerStatus = Callable[[Any], int]
    ResetConnection = Callable[[Any], int]

#: The name mysqlclient gives the capsule that ``_get_native_connection()`` returns.
_CAPSULE_NAME = b"_mysql.connection.native_connection"


@functools.cache
def _capsule_pointer() -> Any:
    """PyCapsule_GetPointer with a prototype of its own, made on first use: setting
    argtypes on the shared ``ctypes.pythonapi`` attribute would change it for every
    other user of ctypes."""
    prototype = ctypes.PYFUNCTYPE(ctypes.c_void_p, ctypes.py_object, ctypes.c_char_p)
    return prototype(("PyCapsule_GetPointer", ctypes.pythonapi))


def open_library() -> Any:
    """The client library mysqlclient's ``_mysql`` extension is linked with, through
    ctypes, or None where it cannot be loaded.

    Only its symbols are used: each function gets a prototype of its own from
    :func:`_function`, so whether a call keeps the GIL is decided there, per
    function. A test stands in a library without ``mariadb_get_info`` here, as
    Oracle's libmysqlclient is.
    """
    try:
        from MySQLdb import _mysql
    except ImportError:
        return None
    try:
        return ctypes.CDLL(_mysql.__file__)
    except OSError:
        return None


def _function(library: Any, name: str, prototype: Any) -> Any:
    """*library*'s function *name* called through *prototype*, or None where the
    library has no such function.

    A private prototype, rather than argtypes set on the library's attribute,
    leaves the library object as every other user of it expects. A PYFUNCTYPE
    prototype keeps the GIL for the call (for one that only copies memory,
    releasing and retaking it costs more than the call), a CFUNCTYPE one releases
    it (for one that may wait on the network).
    """
    try:
        symbol = getattr(library, name)
    except AttributeError:
        return None
    return prototype(ctypes.cast(symbol, ctypes.c_void_p).value)


def _native_address(conn: Any) -> int | None:
    """The address of *conn*'s ``MYSQL`` struct as mysqlclient reports it, or None
    where this mysqlclient has no ``_get_native_connection()``.

    mysqlclient takes its connection lock for the call and refuses a closed
    connection, so this also fails (ProgrammingError) while another thread is
    inside a mysqlclient call on *conn*.
    """
    get_native = getattr(conn, "_get_native_connection", None)
    if get_native is None:
        return None
    address = _capsule_pointer()(get_native(), _CAPSULE_NAME)
    return int(address) if address else None


def _struct_offset(conn: Any, library: Any) -> int | None:
    """How far *conn*'s ``MYSQL`` struct lies from the start of the object, checked
    against the library's own idea of the connection, or None if the check fails.

    The struct is a member of mysqlclient's connection object, so this distance is
    the same for every connection of that type: learning it once from
    ``_get_native_connection()`` lets the return check find the struct with one
    addition instead of a method call, a capsule and a ctypes conversion per
    request. Where that method is missing, the struct is taken to follow the object
    header, as every mysqlclient release lays it out.
    """
    from MySQLdb import _mysql

    if not isinstance(conn, _mysql.connection):
        return None
    thread_id = _function(
        library, "mysql_thread_id", ctypes.CFUNCTYPE(ctypes.c_ulong, ctypes.c_void_p)
    )
    if thread_id is None:
        return None
    address = _native_address(conn)
    offset = object.__basicsize__ if address is None else address - id(conn)
    if not 0 < offset < _mysql.connection.__basicsize__:
        return None
    if thread_id(id(conn) + offset) != conn.thread_id():
        return None
    return offset


def bind_reset_connection(conn: Any) -> ResetConnection | bool:
    """mysql_reset_connection() of the client library mysqlclient links, as a
    function of a mysqlclient connection, or False when it can't be reached safely.

    A library without the function (MySQL < 5.7.3, Connector/C < 3.0) or an address
    that fails the check means COM_CHANGE_USER instead.
    """
    library = open_library()
    if library is None:
        return False
    reset = _function(
        library, "mysql_reset_connection", ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p)
    )
    offset = None if reset is None else _struct_offset(conn, library)
    if offset is None:
        return False

    def reset_connection(conn: Any) -> int:
        # The address comes from mysqlclient afresh here (the reset is a round trip
        # anyway), so a connection another thread is using at this moment fails
        # with mysqlclient's own ProgrammingError instead of being reset under it.
        # The lock is free again once the address is read, and the reset runs
        # without it: only the thread returning the connection holds it now (the
        # pool has it back, Django's wrapper lets go of it only after this
        # returns), and mysqlclient's lock never makes a call wait anyway, it only
        # turns use from two threads at once into an error.
        address = _native_address(conn)
        # restype c_int: ctypes already returns a Python int.
        return int(reset(id(conn) + offset if address is None else address))

    return reset_connection


def bind_server_status(conn: Any) -> ServerStatus | bool:
    """The server status flags of a mysqlclient connection as a function, read by
    MariaDB Connector/C's mariadb_get_info(), or False where that can't be done
    safely: another client library (Oracle's libmysqlclient has no
    mariadb_get_info), or an address that fails the check. One more check: the
    autocommit flag read must agree with mysqlclient's own."""
    library = open_library()
    if library is None:
        return False
    # The one-time probe converts its result (0 is success); the per-return read
    # has no result to convert, and a buffer per thread passed as a plain address,
    # made once: building a c_uint and its byref() on every return cost more than
    # the call itself. Both keep the GIL: the call copies one field of the struct
    # (releasing and retaking the GIL was 0.7 µs of a 1.7 µs read, per return).
    args = (ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p)
    probe_info = _function(library, "mariadb_get_info", ctypes.PYFUNCTYPE(ctypes.c_char, *args))
    read_info = _function(library, "mariadb_get_info", ctypes.PYFUNCTYPE(None, *args))
    offset = None if read_info is None else _struct_offset(conn, library)
    if offset is None:
        return False
    which = MARIADB_CONNECTION_SERVER_STATUS
    buffers = threading.local()

    def server_status(conn: Any) -> int:
        # No lock. mysqlclient's lock is there to refuse a second thread's call
        # on a connection while another call on it is under way. This read is
        # made by the thread returning the connection, after Django has finished
        # with it, so no mysqlclient call is under way on it unless the
        # application uses one connection from two threads at once. Even then the
        # read does no harm: it copies one aligned unsigned int and keeps the GIL
        # (a PYFUNCTYPE prototype), and the return check then calls
        # next_result(), which takes mysqlclient's lock and fails while the other
        # call is still under way, so the connection is closed as busy.
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
    if probe_info(id(conn) + offset, which, ctypes.byref(probe)) != b"\x00":
        return False
    if bool(probe.value & SERVER_STATUS_AUTOCOMMIT) != bool(conn.get_autocommit()):
        return False
    return server_status
