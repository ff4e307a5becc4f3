"""The watchdog that bounds a blocking driver call: one thread per process keeps
a heap of deadlines and shuts down the socket of any call that outlives its own.

mysqlclient and psycopg2 give no way to bound a single call, and libmariadb waits
with poll(), so a socket timeout cannot end the wait either. Shutting the socket
down from another thread does: the blocked read returns at once and the call
fails, and the caller turns that into the driver's ``OperationalError``.
"""

from __future__ import annotations

import heapq
import os
import threading
from time import monotonic
from typing import Any

from ..core.maintenance import join_thread
from .sockets import no_answer, shutdown


class Watchdog:
    """Bounds a blocking driver call: if it outlives *timeout*, the connection's
    socket is shut down, which makes the call fail at once.

    One thread per process (:class:`_Watchdogs`) serves every bounded call, so a
    ping costs two short lock sections, not a thread start.
    """

    __slots__ = ("_conn", "_timeout", "_entry")

    def __init__(self, conn: Any, timeout: float) -> None:
        self._conn = conn
        self._timeout = timeout

    def __enter__(self) -> Watchdog:
        self._entry = _watchdogs.arm(self._conn.fileno(), self._timeout)
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if _watchdogs.disarm(self._entry):
            # Even if the call returned just in time: the socket is shut down now.
            raise self._conn.OperationalError(no_answer(self._timeout)) from None


_ARMED, _DONE, _FIRED = 0, 1, 2
#: Seconds the watchdog thread lingers with nothing to watch before it ends.
_IDLE_EXIT = 5.0


class _Watchdogs:
    """The thread behind :class:`Watchdog`: a heap of deadlines, one lock.

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
                # Registered at first use, like process.py's own hooks, so it runs
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
                        shutdown(entry[0])
                if heap:
                    cond.wait(heap[0][0] - now)
                elif self._stopping or (not cond.wait(_IDLE_EXIT) and not heap):
                    # Nothing to watch for a while: end, so that a quiet process
                    # (a Gunicorn master about to fork) runs no extra thread.
                    self._thread = None
                    return


_watchdogs = _Watchdogs()
