"""A checkout interrupted while it waits (a signal handler that raises, as Celery's
soft time limit does) loses nothing: proven with real signals against the real
PostgreSQL and MariaDB servers, on a pool of one connection."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from .conftest import wait_for

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "mysql"])


class SoftTimeLimit(Exception):
    """What the signal handler raises, like Celery's SoftTimeLimitExceeded."""


class GreenletTimeout(BaseException):
    """Like gevent's Timeout: a BaseException, so no ``except Exception`` stops it."""


#: Every kind of exception a signal handler may raise out of a wait.
RAISED = [SoftTimeLimit, KeyboardInterrupt, SystemExit, GreenletTimeout]


@pytest.fixture
def interrupt() -> Iterator[Callable[..., threading.Thread]]:
    """interrupt(predicate, before_raise=None): once *predicate* holds, send SIGUSR1
    to the main thread, whose handler runs *before_raise* and raises SoftTimeLimit.
    The previous handler is restored afterwards, whatever the test did."""
    assert threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGUSR1)
    senders: list[threading.Thread] = []

    def arm(
        predicate: Callable[[], Any],
        before_raise: Callable[[], None] | None = None,
        raises: type[BaseException] = SoftTimeLimit,
    ) -> threading.Thread:
        def handler(signum: int, frame: Any) -> None:
            if before_raise is not None:
                before_raise()
            raise raises("the task's soft time limit")

        signal.signal(signal.SIGUSR1, handler)

        def send() -> None:
            wait_for(predicate, what="the checkout to wait")
            # To the main thread itself: a process-wide signal may be taken by
            # any thread, and only the main thread's wait would be interrupted.
            signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGUSR1)

        sender = threading.Thread(target=send, daemon=True)
        senders.append(sender)
        sender.start()
        return sender

    yield arm
    for sender in senders:
        sender.join(10)
    signal.signal(signal.SIGUSR1, previous)


def gauges(pooled: Any) -> tuple[int, int, int, int]:
    stats = pooled.stats()
    assert stats["size"] == stats["idle"] + stats["in_use"]
    return stats["size"], stats["idle"], stats["in_use"], stats["waiting"]


def the_held_connection_goes_back_to_the_pool(pooled: Any, holder: Any, held_id: Any) -> None:
    """After an interrupted wait: one connection, in use by *holder*, nobody waiting.
    Once *holder* closes, the connection goes back to the pool, not to the
    interrupted waiter, and the next checkout gets that same server session."""
    assert gauges(pooled) == (1, 0, 1, 0)
    holder.close()
    assert gauges(pooled) == (1, 1, 0, 0)
    again = pooled.wrapper()
    assert pooled.backend_id(again) == held_id
    again.close()


@pytest.mark.parametrize("raised", RAISED, ids=lambda kind: kind.__name__)
def test_an_interrupted_wait_leaves_the_queue_and_the_pool_serves(
    make_pooled, vendor, interrupt, raised
):
    pooled = make_pooled(vendor, max_size=1, timeout=30)
    holder = pooled.wrapper()
    held_id = pooled.backend_id(holder)
    interrupt(lambda: pooled.stats()["waiting"] == 1, raises=raised)
    waiter = pooled.wrapper()
    with pytest.raises(raised):
        waiter.ensure_connection()
    assert waiter.connection is None
    the_held_connection_goes_back_to_the_pool(pooled, holder, held_id)
    stats = pooled.stats()
    assert (stats["connects"], stats["timeouts"], stats["checkouts"]) == (1, 0, 2)


def test_a_connection_handed_over_as_the_signal_arrives_goes_back_to_the_pool(
    make_pooled, vendor, interrupt
):
    pooled = make_pooled(vendor, max_size=1, timeout=30)
    holder = pooled.wrapper()
    held_id = pooled.backend_id(holder)
    # The handler returns the connection first (handing it to this very waiter),
    # then raises: the exception comes after the hand-off.
    interrupt(lambda: pooled.stats()["waiting"] == 1, before_raise=holder.close)
    waiter = pooled.wrapper()
    with pytest.raises(SoftTimeLimit):
        waiter.ensure_connection()
    assert gauges(pooled) == (1, 1, 0, 0)
    again = pooled.wrapper()
    assert pooled.backend_id(again) == held_id
    again.close()
    assert pooled.server_sessions() == {held_id}


def test_a_connection_handed_over_as_the_signal_arrives_goes_to_the_next_waiter(
    make_pooled, vendor, interrupt
):
    pooled = make_pooled(vendor, max_size=1, timeout=30)
    holder = pooled.wrapper()
    held_id = pooled.backend_id(holder)
    served: list[int] = []
    errors: list[BaseException] = []

    def second_waiter() -> None:
        try:
            wrapper = pooled.wrapper()
            served.append(pooled.backend_id(wrapper))
            wrapper.close()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    second = threading.Thread(target=second_waiter)

    def both_queued() -> bool:
        # The main thread queues first, then the second waiter behind it.
        waiting = pooled.stats()["waiting"]
        if waiting == 1 and second.ident is None:
            second.start()
        return waiting == 2

    interrupt(both_queued, before_raise=holder.close)
    waiter = pooled.wrapper()
    with pytest.raises(SoftTimeLimit):
        waiter.ensure_connection()
    second.join(30)
    assert errors == [] and served == [held_id]
    assert gauges(pooled) == (1, 1, 0, 0)
    assert pooled.stats()["connects"] == 1


def test_capacity_handed_over_as_the_signal_arrives_is_given_back(make_pooled, vendor, interrupt):
    pooled = make_pooled(vendor, max_size=1, timeout=30)
    holder = pooled.wrapper()
    held_id = pooled.backend_id(holder)

    def discard_the_held_one() -> None:
        # A drained connection is closed when it comes back, and its capacity
        # (not a connection) is handed to the waiter.
        pooled.pool.drain()
        holder.close()

    interrupt(lambda: pooled.stats()["waiting"] == 1, before_raise=discard_the_held_one)
    waiter = pooled.wrapper()
    with pytest.raises(SoftTimeLimit):
        waiter.ensure_connection()
    assert gauges(pooled) == (0, 0, 0, 0)
    wait_for(lambda: held_id not in pooled.server_sessions(), what="the drained session to end")
    again = pooled.wrapper()
    assert pooled.backend_id(again) != held_id
    again.close()
    assert gauges(pooled) == (1, 1, 0, 0)


def test_an_interval_timer_interrupting_the_wait_loses_nothing(make_pooled, vendor):
    """A soft time limit as an itimer delivers it (SIGALRM to the process, run in
    the main thread): the handler keeps re-arming the timer until the checkout is
    queued, then raises out of the wait."""
    assert threading.current_thread() is threading.main_thread()
    pooled = make_pooled(vendor, max_size=1, timeout=30)
    holder = pooled.wrapper()
    held_id = pooled.backend_id(holder)
    pool = pooled.pool

    def handler(signum: int, frame: Any) -> None:
        # No pool lock here: the handler may run while this thread holds it.
        if len(pool._waiters) == 1:
            raise SoftTimeLimit("the task's soft time limit")
        signal.setitimer(signal.ITIMER_REAL, 0.02)

    previous = signal.signal(signal.SIGALRM, handler)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.02)
        waiter = pooled.wrapper()
        with pytest.raises(SoftTimeLimit):
            waiter.ensure_connection()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    the_held_connection_goes_back_to_the_pool(pooled, holder, held_id)
    assert pooled.stats()["timeouts"] == 0


def test_a_signal_just_after_the_checkout_queued_loses_nothing(make_pooled, vendor):
    """The signal lands between queueing and waiting: raised the moment the waiter
    is in the queue, inside the pool's own critical section."""
    assert threading.current_thread() is threading.main_thread()
    pooled = make_pooled(vendor, max_size=1, timeout=30)
    holder = pooled.wrapper()
    held_id = pooled.backend_id(holder)
    pool = pooled.pool

    class SignalOnAppend(type(pool._waiters)):  # type: ignore[misc]
        def append(self, waiter: Any) -> None:
            super().append(waiter)
            signal.raise_signal(signal.SIGUSR1)  # its handler runs right here

    def handler(signum: int, frame: Any) -> None:
        raise SoftTimeLimit("the task's soft time limit")

    previous = signal.signal(signal.SIGUSR1, handler)
    pool._waiters = SignalOnAppend()
    try:
        waiter = pooled.wrapper()
        with pytest.raises(SoftTimeLimit):
            waiter.ensure_connection()
    finally:
        signal.signal(signal.SIGUSR1, previous)
    the_held_connection_goes_back_to_the_pool(pooled, holder, held_id)
    stats = pooled.stats()
    assert stats["checkouts"] == 2 and stats["requests"] == 3
