"""One background thread per process that looks after every pool in it.

Busy pools need no thread: returns trim the coldest idle connection and retire old
ones. The thread is for what a quiet process can't do on its own: keep ``min_size``
warm, retire idle and aged connections, reclaim connections of threads that ended
holding them, and warn about leaks. It is started with the first pool (which is made
at a first checkout, never at import), holds only weak references to pools, and a
failing pool never stops it. Around fork() it is paused (stopped and joined) and
restarted in the parent, so no process forks with this thread running.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from time import monotonic
from typing import Any

logger = logging.getLogger("django_poolbackend")


def join_thread(thread: threading.Thread, timeout: float) -> None:
    """Join *thread*, then wait (within *timeout* in all) until the OS has let it go.

    Before Python 3.13, ``Thread.join()`` returns when the thread's Python state is
    released, a moment before the OS thread itself exits. A fork() in that moment
    still copies a process with two threads, and Python 3.12+ (which counts them in
    /proc) warns about it. Where there is no /proc, the join is all there is.
    """
    deadline = monotonic() + timeout
    thread.join(timeout)
    native = thread.native_id
    if native is None or thread.is_alive():
        return
    task = f"/proc/self/task/{native}"
    while os.path.exists(task) and monotonic() < deadline:
        time.sleep(0.0005)


class Maintainer:
    def __init__(self, period: float = 1.0) -> None:
        self.period = period
        self._pools: weakref.WeakSet[Any] = weakref.WeakSet()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def add(self, pool: Any) -> None:
        with self._lock:
            self._pools.add(pool)
            self._start()

    def _start(self) -> None:
        # Called with the lock held. Each thread watches an event of its own, so a
        # thread being paused can't be confused with its successor.
        if self._thread is None and not self._stopped:
            self._stop = threading.Event()
            self._thread = threading.Thread(
                target=self._run,
                args=(self._stop,),
                name="django_poolbackend maintenance",
                daemon=True,
            )
            self._thread.start()

    _stopped = False

    def stop(self) -> None:
        """For good (process exit)."""
        self._stopped = True
        self._stop.set()

    def pause(self, timeout: float = 5.0) -> None:
        """Stop the thread and wait for it (before fork())."""
        with self._lock:
            thread, self._thread = self._thread, None
            self._stop.set()
        if thread is not None:
            join_thread(thread, timeout)

    def resume(self) -> None:
        """Start the thread again after a pause (in the parent, after fork())."""
        with self._lock:
            if len(self._pools):
                self._start()

    def _run(self, stop: threading.Event) -> None:
        due = monotonic() + self.period
        while not stop.wait(max(0.0, due - monotonic())):
            started = monotonic()
            late = started - due
            if late > max(0.5, self.period):
                logger.warning("Pool maintenance ran %.1f s late.", late)
            for pool in list(self._pools):
                try:
                    pool.maintain()
                except Exception:
                    logger.exception("Pool %r: maintenance failed; will retry.", pool.name)
            due = started + self.period
