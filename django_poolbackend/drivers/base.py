"""The driver interface the pool and the Django wrapper program against, with the
behaviour every DB-API driver shares, and the four answers a return check can give.

Each concrete driver lives in a module of its own beside this one and fills in the
parts its client library does differently. Everything here is the cheapest way a
driver has: transaction state comes from the client library's own bookkeeping (no
round trip), and a ping is the protocol's lightest message.
"""

from __future__ import annotations

import os
import select
from typing import Any

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

    def ping(self, conn: Any, timeout: float) -> None:
        """Raise unless the server answers within *timeout* seconds.

        The pool always passes a bound (it derives one from its own ``timeout``),
        so no driver waits without one. A check that times out leaves the socket
        shut down, so closing the connection afterwards cannot block either.
        """
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

    def dropped(self, conn: Any) -> bool:
        """Whether the server may have hung up on an idle connection: its socket
        is readable, although an idle session is sent nothing (a terminated
        session gets an error message and an end of file). One ``poll()`` with no
        wait, no round trip; the caller confirms with a ping, as a TLS layer can
        leave bytes of its own unread."""
        try:
            fd = conn.fileno()
        except Exception:
            return False
        if fd < 0:
            return True
        poller = select.poll()
        poller.register(fd, select.POLLIN | select.POLLPRI)
        return bool(poller.poll(0))

    def behind_proxy(self, conn: Any) -> bool:
        """Whether a connection proxy (PgBouncer, …) stands between *conn* and the
        server, so that consecutive transactions may run on different server
        sessions. Asked once per pool, on its first connection; only PostgreSQL's
        drivers can tell."""
        return False
