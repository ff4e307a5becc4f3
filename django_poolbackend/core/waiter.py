"""A checkout waiting in line, and the two ways the pool settles it.

A waiter's thread blocks on a lock of its own until another thread, holding the
pool's lock, gives it something: a connection (:meth:`Waiter.hand_over` with a
slot), the capacity to open one itself (``hand_over`` without a slot), or an
error (:meth:`Waiter.fail`, when the pool is closed). Whoever settles it sets
``done`` under the pool lock, so a waiter that times out or is interrupted can
tell, under the same lock, whether something already reached it (see
``Pool._wait()`` and ``Pool._cancel_wait()``).
"""

from __future__ import annotations

import threading
from time import monotonic
from typing import TYPE_CHECKING

from .stats import Histogram

if TYPE_CHECKING:
    from .pool import Slot


class Waiter:
    """A queued checkout. ``lock`` is held until the pool hands something over."""

    __slots__ = ("lock", "slot", "reserved", "error", "done", "started")

    def __init__(self) -> None:
        # When it began waiting: whoever hands it something records the wait,
        # under the lock it holds anyway, so the woken thread needn't take it.
        self.started = monotonic()
        self.lock = threading.Lock()
        self.lock.acquire()
        self.slot: Slot | None = None
        self.reserved = False  # handed capacity: connect yourself
        self.error: BaseException | None = None
        self.done = False  # set under the pool lock by whoever settles the waiter

    def hand_over(self, slot: Slot | None, wait_ms: Histogram, now: float) -> None:
        """Give the waiter *slot*, or with *slot* None the capacity to open a
        connection itself, and wake it. Called with the pool lock held, once the
        waiter has left the queue; *wait_ms* records how long it waited."""
        self.done = True
        if slot is None:
            self.reserved = True
        else:
            self.slot = slot
        wait_ms.add((now - self.started) * 1000.0)
        self.lock.release()

    def fail(self, error: BaseException) -> None:
        """Wake the waiter with *error* to raise (the pool was closed). Called
        with the pool lock held, once the waiter has left the queue."""
        self.done = True
        self.error = error
        self.lock.release()
