"""Socket helpers that let a driver call end at a deadline instead of waiting on
a dead network: waiting for readiness with a deadline, shutting a socket down
under a blocked call, and the message such a timeout raises.
"""

from __future__ import annotations

import os
import select
import socket
from time import monotonic


def no_answer(timeout: float) -> str:
    """The message of a liveness check that timed out, shared by every driver so
    that logs read the same whichever one gave up."""
    return (
        f"liveness check: no answer from the server within {timeout:g} s "
        "(network or server unresponsive); the connection is discarded."
    )


def wait_io(fd: int, events: int, deadline: float) -> None:
    """Wait until *fd* is ready for *events*, or raise TimeoutError at *deadline*
    (a ``time.monotonic()`` value)."""
    poller = select.poll()
    poller.register(fd, events)
    remaining = deadline - monotonic()
    if remaining <= 0 or not poller.poll(remaining * 1000.0):
        raise TimeoutError


def shutdown(fd: int) -> None:
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
