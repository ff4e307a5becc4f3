"""A thread-safe connection pool with a hard cap, LIFO reuse and FIFO hand-off.

Design notes, because the checkout path is where every request pays:

* One ``threading.Lock`` guards the pool's few fields. Connect, ping, reset and
  close never happen while it is held.
* ``_size`` counts open connections *and* connections being opened. A thread
  reserves capacity under the lock before it connects, so a burst of requests at
  start-up can never open more than ``max_size`` connections.
* Idle connections are a stack (the warmest is reused first, the coldest sits at
  the bottom where trimming finds it in O(1)).
* A thread that finds no idle connection and no capacity queues a waiter. Returned
  connections go straight to the oldest waiter (no thundering herd, no barging).
  A waiter that timed out removes itself under the lock, so a hand-off can never
  reach it afterwards.
* A :class:`Slot` is made once per physical connection and reused by every
  checkout of it, so a checkout allocates nothing.
* Whatever interrupts a wait (a signal handler that raises, ``KeyboardInterrupt``,
  a gevent ``Timeout``) takes the waiter out of the queue under the lock, and
  anything already handed to it goes on to the next waiter or the idle stack, so
  an interrupted checkout never loses a connection or its capacity.
* A checkout remembers the thread that holds it through a weak reference
  (:func:`thread_token`). A connection whose thread has ended is reclaimed by the
  next checkout that would otherwise wait, and by the maintenance thread, without
  waiting for the garbage collector to run the borrower's finalizer.
* Counters are plain integers bumped inside lock sections that exist anyway;
  gauges are computed when read.
* After a failed connect the pool backs off: for a short, growing, jittered
  window no thread dials, and after it only one thread at a time does (a probe).
  Checkouts that need a new connection meanwhile fail at once with a copy of the
  last connect error, so a down server costs each request microseconds, not a
  connect attempt, and is not hammered. Idle connections keep serving, and the
  first successful connect ends the back-off.
"""

from __future__ import annotations

import copy
import logging
import os
import random
import threading
import traceback
import weakref
from bisect import bisect_left
from collections import deque
from collections.abc import Callable
from time import monotonic
from typing import Any, Protocol

from .config import PoolConfig
from .context import PoolContext
from .errors import PoolClosed, PoolTimeout, TooManyRequests
from .stats import BOUNDS_MS, Histogram
from .waiter import Waiter

logger = logging.getLogger("django_poolbackend")

#: Each connection's lifetime is shortened by up to this fraction, so connections
#: opened together (a fleet starting at once) do not all reconnect together.
LIFETIME_JITTER = 0.10

#: Connect back-off: the first window after a failed connect, and the cap the
#: window doubles up to. The cap bounds how long a recovered server waits for the
#: pool to notice, so it is short. Each window is shortened by up to half at random
#: so that a fleet of processes does not dial in step.
BACKOFF_INITIAL = 0.1
BACKOFF_MAX = 1.0

#: A liveness check waits at most this long for the server's answer, and never
#: longer than the pool's ``timeout`` (but at least PING_TIMEOUT_MIN, so a tiny
#: ``timeout`` does not turn every ping into a failure).
PING_TIMEOUT_MAX = 5.0
PING_TIMEOUT_MIN = 1.0

Opener = Callable[[], Any]

#: What :attr:`Slot.owner` holds: a weak reference that returns None once the
#: thread holding the connection has ended.
Owner = Callable[[], object]

#: ``Slot.expires`` of a connection retired by :meth:`Pool.drain`: already past,
#: so the lifetime checks that run anyway retire it, and negative, so they can
#: tell a drain from old age.
DRAINED = -1.0

#: Reasons a connection is closed; ``pool_stats()`` lists each (zeros included).
CLOSE_REASONS = (
    "lifetime",
    "idle",
    "uses",
    "drained",
    "pool_closed",
    "broken",
    "ping_failed",
    "reset_failed",
    "init_failed",
    "closed_in_transaction",
    "leaked",
    "busy",
)


class Driver(Protocol):
    """What the pool needs to know about a DB-API connection beyond opening it."""

    def close(self, conn: Any) -> None: ...

    def ping(self, conn: Any, timeout: float) -> None: ...

    def abandon(self, conn: Any) -> None: ...


class Slot:
    """One physical connection and what the pool knows about it."""

    __slots__ = (
        "conn",
        "pool",
        "created",
        "expires",
        "last_used",
        "uses",
        "needs_init",
        "closed",
        "checked_out_at",
        "stack",
        "leak_warned",
        "owner",
    )

    def __init__(self, conn: Any, pool: Pool, now: float, lifetime: float | None):
        self.conn = conn
        self.pool = pool
        self.created = now
        self.expires = (
            float("inf")
            if lifetime is None
            else now + lifetime * (1.0 - LIFETIME_JITTER * random.random())
        )
        self.last_used = now
        self.uses = 0
        # Set by a "full" reset: the session was wiped, so the one-time
        # initialisation must run again at the next checkout.
        self.needs_init = False
        self.closed = False
        self.checked_out_at = now
        # Captured at checkout only when leak_timeout is set.
        self.stack: list[traceback.FrameSummary] | None = None
        self.leak_warned = False
        #: The :func:`thread_token` of the thread that holds this connection, or
        #: None: idle, just handed out (the borrower sets it right after the
        #: checkout), or shared between threads on purpose. putconn() clears it,
        #: so a stale owner can never make the pool reclaim a connection that
        #: another thread has just checked out.
        self.owner: Owner | None = None


class _ThreadToken:
    """Lives exactly as long as its thread: only that thread's local refers to it."""

    __slots__ = ("__weakref__",)


_tokens = threading.local()


def thread_token() -> Owner:
    """A weak reference that returns None once the calling thread has ended.

    One token and one reference per thread, made at the thread's first call and
    cached in a ``threading.local``. When a thread ends, Python clears its locals,
    which drops the token's only strong reference at once (reference counting, no
    garbage collector), so the reference then returns None. Storing it on a slot at
    checkout costs one attribute store and allocates nothing, and it keeps neither
    the thread nor its objects alive.
    """
    try:
        ref: Owner = _tokens.ref
    except AttributeError:
        token = _tokens.token = _ThreadToken()
        ref = _tokens.ref = weakref.ref(token)
    return ref


class Pool:
    def __init__(
        self,
        config: PoolConfig,
        driver: Driver,
        *,
        name: str = "default",
        key: Any = None,
        timeout_error: type[Exception] = PoolTimeout,
        closed_error: type[Exception] = PoolClosed,
        rejected_error: type[Exception] = TooManyRequests,
        hint: Callable[[], str] | None = None,
    ) -> None:
        """*hint* returns advice to add to the message of a checkout that failed
        for lack of connections (``timeout``, ``max_waiting``); the layer that
        knows the user's settings supplies it, so the core names none of them.
        *rejected_error* is raised for a ``max_waiting`` rejection and should be a
        subclass of *timeout_error*, so that one ``except`` catches both."""
        self.config = config
        self.driver = driver
        self.name = name
        self.key = key
        self._timeout_error = timeout_error
        self._closed_error = closed_error
        self._rejected_error = rejected_error
        self._hint = hint
        # Hot-path copies of the settings (attribute reads on self are cheaper
        # than going through the frozen dataclass each time).
        self._max_size = config.max_size
        self._min_size = config.min_size
        self._max_waiting = config.max_waiting
        self._max_uses = config.max_uses
        self._max_idle = config.max_idle
        self._leak_timeout = config.leak_timeout
        # Ping a connection idle for longer than this many seconds: -1 pings
        # every checkout (pre_ping=True), infinity none (False). One float
        # comparison on the hot path either way.
        pre_ping = config.pre_ping
        self._ping_after = (
            -1.0 if pre_ping is True else float("inf") if pre_ping is False else float(pre_ping)
        )
        self._ping_timeout = max(PING_TIMEOUT_MIN, min(config.timeout, PING_TIMEOUT_MAX))
        self._backoff_initial = BACKOFF_INITIAL
        self._backoff_max = BACKOFF_MAX
        # Back-off state, guarded by the lock. ``_connect_failing`` counts the
        # failed connects since the last success (0: healthy, the only state the
        # hot path reads).
        self._connect_failing = 0
        self._backoff_until = 0.0
        self._probing = False
        self._last_connect_error: BaseException | None = None

        self._lock = threading.Lock()
        self._idle: deque[Slot] = deque()
        self._waiters: deque[Waiter] = deque()
        self._slots: set[Slot] = set()  # every open connection, for shutdown
        self._orphans: deque[Slot] = deque()  # dropped without a putconn()
        self._size = 0
        self._closed = False
        self._abandoned = False
        #: The process that owns these connections; a pool seen in another
        #: process was inherited across fork() and must not be used.
        self.pid = os.getpid()
        #: What the layer that made the pool remembers about it (the Django layer
        #: keeps the wrapper attributes a physical connect sets, to replay on
        #: reuse); the pool itself never reads it.
        self.context = PoolContext()
        #: Opens a connection with no caller waiting (maintenance keeps min_size).
        self.background_opener: Opener | None = None

        # Counters since start; only ever written with the lock held.
        self._requests = 0
        self._waits = 0
        self._timeouts = 0
        self._rejected = 0
        self._failures = 0
        self._connects = 0
        self._connect_errors = 0
        self._connect_backoffs = 0
        self._pings = 0
        self._ping_failures = 0
        self._resets = 0
        self._leaks = 0
        self._closes: dict[str, int] = {}
        self._drains = 0
        # Transaction-scoped release (the Django layer's release setting): returns
        # between a request's transactions, pins by reason, checkouts per request.
        self._releases = 0
        self._pins: dict[str, int] = {}
        self._per_request = Histogram()
        # Timings in ms, written with the lock held like the counters. Waits are
        # timed only when a checkout really waited (the others count as zeros).
        self._wait_ms = Histogram()
        self._hold_ms = Histogram()
        self._connect_ms = Histogram()
        #: Called outside the lock, at most about once a second, from a return or
        #: the maintenance tick (publishing statistics, noticing a drain).
        self.on_tick: Callable[[Pool], None] | None = None
        self._tick_due = 0.0
        #: Set by the publisher after a snapshot that showed connections in use:
        #: the return that leaves the pool idle ticks, so the snapshot is rewritten
        #: at once (on the return path a flag check, nothing more, until then).
        self.tick_when_idle = False

    # -- checkout ---------------------------------------------------------------

    def getconn(self, opener: Opener, timeout: float | None = None) -> Slot:
        """Return a connection's slot; *opener* makes a new physical connection.

        The opener runs in the calling thread, outside the lock, only when this
        checkout holds capacity for a new connection.
        """
        if self._orphans:
            self._reap()
        slot: Slot | None
        # Bound before the waiter is queued, so that whatever interrupts this
        # checkout from then on (see _wait()) finds it and takes it out again.
        waiter: Waiter | None = None
        try:
            with self._lock:
                if self._closed:
                    raise self._closed_error(f"the pool of {self.name!r} is closed")
                self._requests += 1
                if self._idle:
                    slot = self._idle.pop()
                elif self._size < self._max_size:
                    self._size += 1
                    slot = None
                else:
                    self._refuse_if_too_many_wait()
                    waiter = Waiter()
                    self._waiters.append(waiter)
                    self._waits += 1
                    slot = None
        except self._rejected_error as exc:
            # max_waiting rejected it; logged here, once the lock is released.
            logger.warning("Pool %r: %s", self.name, exc.args[0].split(". ", 1)[0])
            raise
        except BaseException:
            # Interrupted once queued, before the wait began (a signal handler
            # runs wherever the interpreter checks for signals, the lock's
            # release at the end of the block above among them).
            if waiter is not None:
                self._cancel_wait(waiter)
            raise

        if slot is not None:
            # _validate()'s common case, inlined: a connection in its lifetime
            # that needs no ping goes straight out.
            now = monotonic()
            if now < slot.expires and now - slot.last_used <= self._ping_after:
                slot.uses += 1
                slot.checked_out_at = now
                if self._leak_timeout:
                    self._note_checkout(slot)
                return slot
            return self._validate(slot, opener, now)
        if waiter is None:
            return self._connect(opener)
        try:
            return self._wait(waiter, opener, self.config.timeout if timeout is None else timeout)
        except BaseException:
            # Whatever interrupts the wait, from its first line to the hand-over
            # of what the waiter got, settles the waiter here: out of the queue if
            # nothing reached it yet, or what reached it passed on. (A no-op once
            # the waiter has taken what it was given.)
            self._cancel_wait(waiter)
            raise

    def _refuse_if_too_many_wait(self) -> None:
        # Called with the lock held, before a checkout queues.
        waiting = len(self._waiters)
        if self._max_waiting and waiting >= self._max_waiting:
            self._rejected += 1
            self._failures += 1
            raise self._rejected_error(
                self._with_hint(
                    f"couldn't get a connection to database {self.name!r}: "
                    f"{waiting} requests are already waiting "
                    f"(max_waiting={self._max_waiting}) and all {self._size} "
                    f"connections (max_size={self._max_size}) are in use."
                )
            )

    def _wait(self, waiter: Waiter, opener: Opener, timeout: float) -> Slot:
        # getconn() settles the waiter if anything here raises (see there).
        # The connections of threads that ended are reclaimed here, where they
        # are needed, rather than after a wait that they would cause.
        self._reclaim_dead_owners()
        # threading refuses longer waits with OverflowError; as long as that is
        # forever here (the settings layer refuses such values anyway).
        wait = timeout if timeout <= threading.TIMEOUT_MAX else threading.TIMEOUT_MAX
        if not waiter.lock.acquire(True, wait):
            # Critical section: decide here whether we timed out or whether a
            # hand-off beat us to it. Whoever sets ``done`` first wins.
            with self._lock:
                timed_out = not waiter.done
                if timed_out:
                    waiter.done = True
                    self._waiters.remove(waiter)
                    self._timeouts += 1
                    self._failures += 1
                    in_use = self._size - len(self._idle)
                    waiting = len(self._waiters)
            if timed_out:
                message = (
                    f"couldn't get a connection to database {self.name!r} "
                    f"after waiting {timeout:.1f} s: {in_use} connections are "
                    f"in use (max_size={self._max_size}) and {waiting} other "
                    "requests are waiting."
                )
                logger.warning("Pool %r: %s", self.name, message)
                raise self._timeout_error(self._with_hint(message))
        if waiter.error is not None:
            raise waiter.error
        slot = waiter.slot
        if slot is not None:
            slot.uses += 1
            slot.checked_out_at = monotonic()
            if self._leak_timeout:
                self._note_checkout(slot)
            # From here the caller owns it.
            waiter.slot = None
            return slot
        # We were handed the capacity of a connection that was discarded;
        # _connect() gives it back itself if it fails.
        waiter.reserved = False
        return self._connect(opener)

    def _cancel_wait(self, waiter: Waiter) -> None:
        """Settle a waiter whose thread was interrupted; a no-op once it is settled.

        Under the lock, either nobody has handed the waiter anything yet (it leaves
        the queue, and no hand-off can reach it afterwards), or somebody has, and
        what it got (a connection, or the capacity for one) goes to the next
        waiter or back to the pool, as if this checkout had never queued.
        """
        closing = None
        with self._lock:
            if not waiter.done:
                waiter.done = True
                try:
                    self._waiters.remove(waiter)
                except ValueError:
                    pass  # interrupted before it was queued: nothing to undo there
                self._failures += 1
                return
            slot, waiter.slot = waiter.slot, None
            reserved, waiter.reserved = waiter.reserved, False
            if reserved:
                self._failures += 1
                self._release_capacity()
            elif slot is not None:
                self._failures += 1
                if self._closed:
                    # close() counted it as checked out, to close on its return.
                    closing = slot
                else:
                    self._pass_on(slot)
            # Otherwise a timeout or an error reached it: counted where decided.
        if closing is not None:
            self._close_slot(closing, "pool_closed", keep_capacity=False)

    def _pass_on(self, slot: Slot) -> None:
        # Called with the lock held: a connection nobody checked out after all
        # goes to the oldest waiter, or back on the idle stack.
        if self._waiters:
            self._waiters.popleft().hand_over(slot, self._wait_ms, monotonic())
        else:
            self._idle.append(slot)

    def _with_hint(self, message: str) -> str:
        hint = self._hint
        if hint is None:
            return message
        try:
            advice = hint()
        except Exception:
            # Advice must never replace the error it explains.
            logger.exception("Pool %r: the advice for a failed checkout failed.", self.name)
            return message
        return f"{message} {advice}" if advice else message

    def _validate(self, slot: Slot, opener: Opener, now: float) -> Slot:
        """Check an idle connection before handing it out; replace it if stale."""
        # Idleness alone is no reason to replace a connection here: trimming takes
        # the coldest one on return (and never goes below min_size).
        if now >= slot.expires:
            reason: str | None = _expiry_reason(slot)
        elif now - slot.last_used > self._ping_after:
            try:
                reason = self._ping(slot)
            except BaseException:
                # The ping was interrupted (a signal handler raised, the process
                # is being stopped): the connection may hold half an answer, so
                # it goes, and so does the capacity this checkout won't use.
                with self._lock:
                    self._failures += 1
                self._close_slot(slot, "ping_failed", keep_capacity=False)
                raise
        else:
            reason = None
        if reason is None:
            slot.uses += 1
            slot.checked_out_at = now
            if self._leak_timeout:
                self._note_checkout(slot)
            return slot
        # Keep the capacity this slot held and reconnect with it.
        if not self._close_slot(slot, reason, keep_capacity=True):
            with self._lock:
                self._failures += 1
            raise self._closed_error(f"the pool of {self.name!r} was closed")
        return self._connect(opener)

    def _ping(self, slot: Slot) -> str | None:
        try:
            self.driver.ping(slot.conn, self._ping_timeout)
        except Exception:
            failed = True  # _close_slot() logs the discard
        else:
            failed = False
        with self._lock:
            self._pings += 1
            if failed:
                self._ping_failures += 1
        return "ping_failed" if failed else None

    def _connect(self, opener: Opener, *, for_request: bool = True) -> Slot:
        """Open a connection with capacity this thread already holds."""
        probe = False
        if self._connect_failing:
            # Critical section: decide here whether this thread may dial. While
            # the back-off window lasts, or another thread's attempt is under
            # way, it may not: it gives the capacity back (to the next waiter,
            # who fails the same way at once) and raises the last error again.
            with self._lock:
                if self._connect_failing:
                    if self._probing or monotonic() < self._backoff_until:
                        self._connect_backoffs += 1
                        if for_request:
                            self._failures += 1
                        self._release_capacity()
                        raise self._backoff_error()
                    self._probing = probe = True
        started = monotonic()
        conn = None
        try:
            conn = opener()
            now = monotonic()
            slot = Slot(conn, self, now, self.config.max_lifetime)
            slot.uses = 1
            if self._leak_timeout:
                self._note_checkout(slot)
        except BaseException as exc:
            try:
                if conn is not None:
                    # Opened, then interrupted before the pool knew of it: nobody
                    # else will ever close it. Closed before its capacity is
                    # given back, so the server never sees max_size + 1.
                    self.driver.close(conn)
            finally:
                with self._lock:
                    if for_request:  # a failed checkout, not a failed warm-up
                        self._failures += 1
                    if probe:
                        self._probing = False
                    if conn is None:
                        self._connect_errors += 1
                        if isinstance(exc, Exception):
                            self._note_connect_failure(exc)
                    self._release_capacity()
            raise
        with self._lock:
            self._slots.add(slot)
            self._connects += 1
            self._connect_ms.add((now - started) * 1000.0)
            if self._connect_failing:
                # The server answers again: back-off over, for everyone, now.
                self._connect_failing = 0
                self._backoff_until = 0.0
                self._probing = False
                self._last_connect_error = None
        if probe:
            logger.info("Pool %r: connected again after failed connects.", self.name)
        return slot

    def _note_connect_failure(self, exc: Exception) -> None:
        # Called with the lock held: open (or widen) the back-off window.
        self._connect_failing += 1
        delay = min(
            self._backoff_max,
            self._backoff_initial * 2.0 ** min(self._connect_failing - 1, 32),
        )
        self._backoff_until = monotonic() + delay * (1.0 - 0.5 * random.random())
        self._last_connect_error = _fresh(exc)

    def _backoff_error(self) -> BaseException:
        # Called with the lock held. A copy per raise: one exception object raised
        # in several threads would share (and keep growing) one traceback.
        error = _fresh(self._last_connect_error)
        wait = max(0.0, self._backoff_until - monotonic())
        error.add_note(
            f"django_poolbackend: no connection attempt was made; the last one to "
            f"{self.name!r} failed {self._connect_failing} time(s) in a row, "
            f"the next is allowed in {wait:.2f} s."
        )
        return error

    def _note_checkout(self, slot: Slot) -> None:
        # Only with leak_timeout set: the stack of the code that checked out.
        slot.stack = traceback.extract_stack()[:-3]
        slot.leak_warned = False

    def _release_capacity(self) -> None:
        # Called with the lock held: one connection's worth of capacity is free.
        # Give it to the oldest waiter (it connects in its own thread) or drop it.
        if self._waiters and not self._closed:
            self._waiters.popleft().hand_over(None, self._wait_ms, monotonic())
        else:
            self._size -= 1

    # -- checkin ----------------------------------------------------------------

    def putconn(
        self, slot: Slot, discard: str | None = None, reset: bool = False, released: bool = False
    ) -> None:
        """Take a connection back. *discard* names why it must be closed instead.

        The caller has already cleaned the connection (rolled back, reset); *reset*
        says whether that cost a round trip, for the counters. *released* says the
        borrower gives it back between two of its transactions rather than at its
        end (transaction-scoped release), also for the counters.
        """
        if self._abandoned or slot.closed:
            return
        # Whoever gets it next sets their own; until then no thread's end counts.
        slot.owner = None
        now = monotonic()
        # The periodic tick (statistics, drains) runs once this connection is back,
        # so the snapshot it writes already shows it returned (one write, not a
        # busy one and then an idle one), and a drain it notices closes this
        # connection with the other idle ones at once.
        due = now >= self._tick_due
        if slot.leak_warned:
            slot.leak_warned = False
            logger.warning(
                "Pool %r: the connection reported as leaked came back after %.1f s.",
                self.name,
                now - slot.checked_out_at,
            )
        if discard is None:
            if self._closed:
                discard = "pool_closed"
            elif now >= slot.expires:
                discard = _expiry_reason(slot)
            elif self._max_uses and slot.uses >= self._max_uses:
                discard = "uses"
        if discard is not None:
            with self._lock:
                if reset:
                    self._resets += 1
                if slot.uses:  # 0: opened by maintenance, never checked out
                    self._hold_ms.add((now - slot.checked_out_at) * 1000.0)
            self._close_slot(slot, discard, keep_capacity=False)
            if due:
                self._tick(now)
            return

        slot.last_used = now
        stale = None
        with self._lock:
            if reset:
                self._resets += 1
            if released:
                self._releases += 1
            if slot.uses:
                # Histogram.add(), inlined: this is every request's return.
                held = (now - slot.checked_out_at) * 1000.0
                hold = self._hold_ms
                hold.counts[bisect_left(BOUNDS_MS, held)] += 1
                hold.count += 1
                hold.total += held
                if held > hold.max:
                    hold.max = held
            if self._waiters:
                self._waiters.popleft().hand_over(slot, self._wait_ms, now)
            else:
                idle = self._idle
                idle.append(slot)
                # Trim the coldest idle connection if it outlived max_idle: O(1),
                # no background thread needed while the process is busy.
                if (
                    self._max_idle is not None
                    and self._size > self._min_size
                    and now - idle[0].last_used > self._max_idle
                ):
                    stale = idle.popleft()
                    self._forget(stale, "idle")
                    self._size -= 1
        if stale is not None:
            self.driver.close(stale.conn)
        # Also when the last snapshot showed the pool busy and this return leaves
        # it idle, so readers see it idle at once (a flag check until then).
        if due or (self.tick_when_idle and len(self._idle) == self._size):
            self._tick(now)

    def _forget(self, slot: Slot, reason: str) -> None:
        # Called with the lock held.
        slot.closed = True
        self._slots.discard(slot)
        self._closes[reason] = self._closes.get(reason, 0) + 1

    def _close_slot(
        self, slot: Slot, reason: str, *, keep_capacity: bool, warn: bool = True
    ) -> bool:
        """Close one connection; False if close(everything=True) already took it.

        The slot leaves the books before the I/O, so a concurrent pool close can
        never count it (or its capacity) twice. *warn* False: the caller has
        logged a message of its own.
        """
        with self._lock:
            if slot.closed:
                return False
            self._forget(slot, reason)
        try:
            if warn and reason not in _QUIET_REASONS:
                logger.warning("Pool %r: discarding a connection (%s).", self.name, reason)
            self.driver.close(slot.conn)
        except BaseException:
            # Interrupted (or a driver whose close raised): the capacity is given
            # back even if the caller meant to keep it, as it won't get to use it.
            with self._lock:
                self._release_capacity()
            raise
        if not keep_capacity:
            with self._lock:
                self._release_capacity()
        return True

    def orphan(self, slot: Slot) -> None:
        """Note a connection whose borrower vanished (called from a finalizer).

        Finalizers can run inside this pool's own critical sections, so this takes
        no lock and does no I/O: ``deque.append`` is atomic. The next checkout
        closes it and frees its capacity.
        """
        self._orphans.append(slot)

    def _reap(self) -> None:
        while True:
            try:
                slot = self._orphans.popleft()
            except IndexError:
                return
            if slot.closed or self._abandoned:
                continue
            logger.warning(
                "Pool %r: closing a connection that was never given back "
                "(its thread or wrapper ended while holding it).",
                self.name,
            )
            self._close_slot(slot, "leaked", keep_capacity=False, warn=False)

    def _reclaim_dead_owners(self) -> None:
        """Close the connections of threads that ended while holding them.

        A slot's owner reference dies when its thread ends (see
        :func:`thread_token`), so a dead one means that no thread can be using the
        connection any more. Closing it ends the server session, and with it any
        open transaction and its locks (the server rolls it back), without a round
        trip that could block on a dead network. Its capacity then goes to the
        oldest waiter. A slot without an owner (idle, being handed out, shared
        between threads on purpose) is never touched.
        """
        with self._lock:
            dead = [slot for slot in self._slots if slot.owner is not None and slot.owner() is None]
            # Off the books now, so that no other scan (or pool close) takes it too.
            for slot in dead:
                self._forget(slot, "leaked")
        if not dead:
            return
        error: BaseException | None = None
        for slot in dead:
            # Every one is closed even if one close is interrupted: they are off
            # the books already, so nothing else would ever close the rest.
            try:
                logger.warning(
                    "Pool %r: closing a connection whose thread ended without giving it back.",
                    self.name,
                )
                self.driver.close(slot.conn)
            except BaseException as exc:
                if error is None:
                    error = exc
        # After the closes, so the server never sees more than max_size.
        with self._lock:
            for _ in dead:
                self._release_capacity()
        if error is not None:
            raise error

    # -- maintenance (the process's maintenance thread calls this) ------------

    def maintain(self) -> None:
        """Retire idle and aged connections, reclaim orphans, warn about leaks, and
        open connections up to min_size. I/O happens outside the lock."""
        if self._closed:
            return
        if self._orphans:
            self._reap()
        self._reclaim_dead_owners()
        now = monotonic()
        stale: list[tuple[Slot, str]] = []
        leaked: list[Slot] = []
        with self._lock:
            idle = self._idle
            if self._max_idle is not None:
                while (
                    idle
                    and self._size > self._min_size
                    and now - idle[0].last_used > self._max_idle
                ):
                    stale.append((idle.popleft(), "idle"))
                    self._size -= 1
            for slot in [slot for slot in idle if now >= slot.expires]:
                idle.remove(slot)
                stale.append((slot, _expiry_reason(slot)))
                self._size -= 1
            for slot, reason in stale:
                self._forget(slot, reason)
            if self._leak_timeout:
                for slot in self._slots.difference(idle):
                    if not slot.leak_warned and now - slot.checked_out_at > self._leak_timeout:
                        slot.leak_warned = True
                        self._leaks += 1
                        leaked.append(slot)
            missing = 0
            backing_off = self._connect_failing and (self._probing or now < self._backoff_until)
            if self.background_opener is not None and not self._waiters and not backing_off:
                missing = max(0, self._min_size - self._size)
                self._size += missing  # reserved, as a checkout would
        for slot, _ in stale:
            self.driver.close(slot.conn)
        for slot in leaked:
            where = "".join(traceback.format_list(slot.stack or [])).rstrip()
            logger.warning(
                "Pool %r: a connection has been checked out for more than %g s "
                "(leak_timeout); it was checked out at:\n%s",
                self.name,
                self._leak_timeout,
                where,
            )
        for opened in range(missing):
            if not self._open_in_background():
                # Don't dial again into a failure: the rest of the reserved
                # capacity goes back, and a tick after the back-off retries.
                with self._lock:
                    for _ in range(missing - opened - 1):
                        self._release_capacity()
                break
        self._tick(monotonic())

    def _tick(self, now: float) -> None:
        self._tick_due = now + 1.0
        hook = self.on_tick
        if hook is not None:
            try:
                hook(self)
            except Exception:
                logger.exception("Pool %r: the statistics/drain hook failed.", self.name)

    def drain(self) -> int:
        """Retire every connection open now: idle ones at once, checked-out ones
        when they come back; connections opened afterwards are not affected.

        For after a failover, a credential rotation or a server parameter change
        (psycopg_pool's ``drain()``, HikariCP's soft eviction). Returns how many
        connections were retired or marked.
        """
        with self._lock:
            if self._closed:
                return 0
            victims = list(self._idle)
            self._idle.clear()
            marked = len(self._slots)
            for slot in self._slots:
                slot.expires = DRAINED
            for slot in victims:
                self._forget(slot, "drained")
                self._size -= 1
            self._drains += 1
        for slot in victims:
            self.driver.close(slot.conn)
        logger.info(
            "Pool %r: drained: %d idle connections closed, %d to close when returned.",
            self.name,
            len(victims),
            marked - len(victims),
        )
        return marked

    def _open_in_background(self) -> bool:
        opener = self.background_opener
        assert opener is not None
        try:
            slot = self._connect(opener, for_request=False)
        except Exception as exc:
            # _connect() already gave the capacity back.
            logger.warning(
                "Pool %r: could not open a connection to keep min_size: %s",
                self.name,
                type(exc).__name__,
            )
            return False
        slot.uses = 0
        slot.stack = None
        self.putconn(slot)
        return True

    # -- life cycle -------------------------------------------------------------

    def close(self, *, everything: bool = False) -> None:
        """Close idle connections now and the others when they come back.

        With *everything*, checked-out connections are closed too (process exit).
        Waiters are woken with ``PoolClosed``. An abandoned pool (inherited across
        fork) is left alone: its sockets are the parent's.
        """
        if self._abandoned:
            return
        with self._lock:
            self._closed = True
            victims = list(self._idle)
            self._idle.clear()
            if everything:
                victims = list(self._slots)
                dead = []
            else:
                # Connections of threads that ended will never come back to be
                # closed: close them now too (before a test database is dropped,
                # say, which the server refuses while a session uses it).
                dead = [
                    slot for slot in self._slots if slot.owner is not None and slot.owner() is None
                ]
            for slot in victims:
                self._forget(slot, "pool_closed")
                self._size -= 1
            for slot in dead:
                self._forget(slot, "leaked")
                self._size -= 1
            victims += dead
            while self._waiters:
                self._failures += 1
                self._waiters.popleft().fail(
                    self._closed_error(f"the pool of {self.name!r} was closed")
                )
        for slot in victims:
            self.driver.close(slot.conn)

    def abandon(self) -> None:
        """Forget every connection without touching its socket (forked child).

        Takes no lock: the parent may have forked while another thread held it.
        """
        self._abandoned = True
        self._closed = True
        for slot in list(self._slots):
            slot.closed = True
            self.driver.abandon(slot.conn)

    @property
    def closed(self) -> bool:
        return self._closed

    # -- figures ----------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counters since start and gauges now, as plain JSON-safe values."""
        with self._lock:
            size = self._size
            idle = len(self._idle)
            # Copied under the lock, summarised outside it.
            wait_ms = self._wait_ms.copy()
            hold_ms = self._hold_ms.copy()
            connect_ms = self._connect_ms.copy()
            per_request = self._per_request.copy()
            out: dict[str, Any] = {
                "size": size,
                "idle": idle,
                "in_use": size - idle,
                "waiting": len(self._waiters),
                "requests": self._requests,
                "checkouts": self._requests - self._failures - len(self._waiters),
                "waits": self._waits,
                "timeouts": self._timeouts,
                "rejected": self._rejected,
                "connects": self._connects,
                "connect_errors": self._connect_errors,
                "connect_backoffs": self._connect_backoffs,
                "closed": sum(self._closes.values()),
                "closed_by_reason": dict(self._closes),
                "pings": self._pings,
                "ping_failures": self._ping_failures,
                "resets": self._resets,
                "leaks": self._leaks,
                "drains": self._drains,
                "releases": self._releases,
                "pins": dict(self._pins),
                "drain_pending": sum(1 for slot in self._slots if slot.expires < 0),
            }
        # Checkouts that never queued waited 0 ms; they are counted, not timed.
        zeros = max(0, out["checkouts"] - wait_ms.count)
        out["wait_ms"] = wait_ms.summary(zeros)
        out["hold_ms"] = hold_ms.summary()
        out["connect_ms"] = connect_ms.summary()
        out["checkouts_per_request"] = per_request.summary()
        return out

    # -- transaction-scoped release ----------------------------------------------

    def note_pin(self, reason: str) -> None:
        """Count a borrower that pinned its connection until its end, by why."""
        with self._lock:
            self._pins[reason] = self._pins.get(reason, 0) + 1

    def note_request(self, checkouts: int) -> None:
        """Record how many checkouts one request (or task) of a borrower made."""
        with self._lock:
            self._per_request.add(float(checkouts))

    def wait_histogram(self) -> dict[str, Any]:
        """The checkout wait times in published (mergeable) form."""
        with self._lock:
            wait_ms = self._wait_ms.copy()
            checkouts = self._requests - self._failures - len(self._waiters)
        return wait_ms.to_json(zeros=max(0, checkouts - wait_ms.count))


def _expiry_reason(slot: Slot) -> str:
    """Why a connection past its ``expires`` goes: a drain marks it negative."""
    return "drained" if slot.expires < 0 else "lifetime"


def _fresh(exc: BaseException | None) -> BaseException:
    """A copy of a connect error to raise again, without the original's traceback,
    cause or context (they would keep a failed attempt's frames alive)."""
    assert exc is not None
    try:
        fresh = copy.copy(exc)
    except Exception:
        fresh = exc  # a driver error that can't be rebuilt from its args
    fresh.__traceback__ = None
    fresh.__cause__ = fresh.__context__ = None
    notes = getattr(exc, "__notes__", None)
    if notes is not None and fresh is not exc:
        # A shallow copy shares the list: a note added to one copy (the back-off
        # note) would show on every later one.
        fresh.__notes__ = list(notes)
    return fresh


#: Expected retirements that are not worth a warning.
_QUIET_REASONS = frozenset({"lifetime", "idle", "uses", "pool_closed", "drained"})
