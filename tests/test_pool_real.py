"""The pool's promises, proven against the real PostgreSQL and MariaDB servers."""

from __future__ import annotations

import logging
import threading
import time

import pytest
from django.db import OperationalError as DjangoOperationalError
from django.db import ProgrammingError as DjangoProgrammingError

from django_poolbackend import PoolTimeout, process

from .conftest import wait_for

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "mysql"])


def test_sequential_checkouts_reuse_one_connection(make_pooled, vendor):
    pooled = make_pooled(vendor, max_size=4)
    wrapper = pooled.wrapper()
    seen = set()
    for _ in range(50):
        seen.add(pooled.backend_id(wrapper))
        wrapper.close()
    assert len(seen) == 1
    stats = pooled.stats()
    assert stats["connects"] == 1
    assert stats["checkouts"] == 50
    assert pooled.server_sessions() == seen


def test_cap_holds_under_a_burst_of_32_threads(make_pooled, vendor):
    pooled = make_pooled(vendor, max_size=4, timeout=60)
    sleep_sql = "SELECT pg_sleep(0.02)" if pooled.vendor == "postgresql" else "SELECT SLEEP(0.02)"
    start = threading.Barrier(32)
    errors: list[BaseException] = []
    peak = {"server": 0, "pool": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak["server"] = max(peak["server"], len(pooled.server_sessions()))
            if pooled.alias in process.pools:
                peak["pool"] = max(peak["pool"], pooled.stats()["size"])

    def work() -> None:
        try:
            wrapper = pooled.wrapper()
            start.wait()
            for _ in range(3):
                with wrapper.cursor() as cursor:
                    cursor.execute(sleep_sql)
                wrapper.close()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    sampler = threading.Thread(target=sample)
    sampler.start()
    threads = [threading.Thread(target=work) for _ in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    done.set()
    sampler.join()
    assert errors == []
    stats = pooled.stats()
    assert stats["checkouts"] == 96
    assert stats["connects"] <= 4
    assert 1 <= peak["server"] <= 4
    assert peak["pool"] <= 4
    assert len(pooled.server_sessions()) <= 4


def test_waiters_are_served_in_arrival_order(make_pooled, vendor):
    pooled = make_pooled(vendor, max_size=1, timeout=60)
    holder = pooled.wrapper()
    held_id = pooled.backend_id(holder)  # holds the only connection
    order: list[int] = []
    ids: list[int] = []
    threads = []

    def wait_turn(n: int) -> None:
        wrapper = pooled.wrapper()
        ids.append(pooled.backend_id(wrapper))
        order.append(n)
        wrapper.close()

    for n in range(5):
        thread = threading.Thread(target=wait_turn, args=(n,))
        thread.start()
        threads.append(thread)
        wait_for(lambda n=n: pooled.stats()["waiting"] == n + 1, what=f"waiter {n}")
    holder.close()
    for thread in threads:
        thread.join()
    assert order == [0, 1, 2, 3, 4]
    assert set(ids) == {held_id}


def test_exhaustion_raises_pool_timeout_with_a_useful_message(make_pooled, vendor, caplog):
    caplog.set_level(logging.WARNING, logger="django_poolbackend")
    pooled = make_pooled(vendor, max_size=1, timeout=0.5)
    holder = pooled.wrapper()
    held_id = pooled.backend_id(holder)
    failed: list[BaseException] = []
    elapsed: list[float] = []

    def try_checkout() -> None:
        wrapper = pooled.wrapper()
        started = time.monotonic()
        try:
            wrapper.ensure_connection()
        except BaseException as exc:  # noqa: BLE001
            failed.append(exc)
        elapsed.append(time.monotonic() - started)

    thread = threading.Thread(target=try_checkout)
    thread.start()
    thread.join()
    (exc,) = failed
    assert isinstance(exc, PoolTimeout)
    assert isinstance(exc, DjangoOperationalError)
    message = str(exc)
    assert repr(pooled.alias) in message
    assert "after waiting 0.5 s" in message
    assert "max_size=1" in message
    assert "1 connections are in use" in message
    assert "0 other requests are waiting" in message
    assert "POOL['max_size']" in message
    assert elapsed[0] >= 0.5
    # ... and the pool's logger says so once, without the hint.
    logged = [r.getMessage() for r in caplog.records if "after waiting" in r.getMessage()]
    assert logged == [f"Pool {pooled.alias!r}: " + message.split(" Raise POOL")[0]]
    # The waiter that timed out swallowed nothing: the connection comes back and
    # is handed out again at once.
    holder.close()
    again = pooled.wrapper()
    assert pooled.backend_id(again) == held_id
    again.close()
    stats = pooled.stats()
    assert (stats["size"], stats["idle"], stats["in_use"], stats["timeouts"]) == (1, 1, 0, 1)


def test_max_waiting_rejects_at_once(make_pooled, vendor):
    pooled = make_pooled(vendor, max_size=1, max_waiting=1, timeout=60)
    holder = pooled.wrapper()
    pooled.backend_id(holder)
    queued_done = threading.Event()

    def queued() -> None:
        wrapper = pooled.wrapper()
        wrapper.ensure_connection()
        wrapper.close()
        queued_done.set()

    thread = threading.Thread(target=queued)
    thread.start()
    wait_for(lambda: pooled.stats()["waiting"] == 1, what="the first waiter")
    rejected: list[BaseException] = []
    started = time.monotonic()

    def rejected_checkout() -> None:
        try:
            pooled.wrapper().ensure_connection()
        except BaseException as exc:  # noqa: BLE001
            rejected.append(exc)

    other = threading.Thread(target=rejected_checkout)
    other.start()
    other.join()
    assert time.monotonic() - started < 30  # far below timeout=60: no waiting
    (exc,) = rejected
    assert isinstance(exc, PoolTimeout)
    assert "1 requests are already waiting (max_waiting=1)" in str(exc)
    holder.close()
    thread.join()
    assert queued_done.is_set()
    assert pooled.stats()["rejected"] == 1


def test_max_uses_retires_a_connection(make_pooled, vendor):
    pooled = make_pooled(vendor, max_uses=3)
    wrapper = pooled.wrapper()
    ids = []
    for _ in range(4):
        ids.append(pooled.backend_id(wrapper))
        wrapper.close()
    assert ids[0] == ids[1] == ids[2] != ids[3]
    assert pooled.stats()["closed_by_reason"] == {"uses": 1}
    wait_for(lambda: ids[0] not in pooled.server_sessions(), what="the server to drop it")


def test_max_lifetime_retires_a_connection(make_pooled, vendor):
    pooled = make_pooled(vendor, max_lifetime=0.3)
    wrapper = pooled.wrapper()
    first = pooled.backend_id(wrapper)
    wrapper.close()
    assert pooled.stats()["idle"] == 1
    time.sleep(0.35)  # the lifetime itself is what is under test
    second = pooled.backend_id(wrapper)
    wrapper.close()
    assert first != second
    assert pooled.stats()["closed_by_reason"]["lifetime"] == 1
    wait_for(lambda: first not in pooled.server_sessions(), what="the server to drop it")


def test_max_idle_retires_idle_connections_above_min_size(make_pooled, vendor):
    pooled = make_pooled(vendor, max_idle=0.3, min_size=1, max_size=3)
    wrappers = [pooled.wrapper() for _ in range(3)]
    ids = [pooled.backend_id(w) for w in wrappers]
    for w in wrappers:
        w.close()
    assert pooled.stats()["idle"] == 3
    time.sleep(0.35)  # the idle time itself is what is under test
    # Each return trims the coldest idle connection, never below min_size.
    for _ in range(3):
        pooled.backend_id(wrappers[0])
        wrappers[0].close()
    stats = pooled.stats()
    assert stats["size"] == 1
    assert stats["closed_by_reason"]["idle"] == 2
    wait_for(lambda: len(pooled.server_sessions()) == 1, what="the server to drop them")
    assert pooled.server_sessions() <= set(ids) | {pooled.backend_id(wrappers[0])}


@pytest.mark.parametrize("view", ["leave_open", "fail_inside"])
def test_connections_come_back_clean(make_pooled, vendor, view, caplog):
    caplog.set_level(logging.WARNING, logger="django_poolbackend")
    pooled = make_pooled(vendor, max_size=1)
    wrapper = pooled.wrapper()
    table = "shop_item"
    wrapper.set_autocommit(False)
    with wrapper.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (name, stock, updated) VALUES ('ghost', 1, %s)",
            ["2026-01-01 00:00:00"],
        )
        if view == "fail_inside":
            with pytest.raises(DjangoProgrammingError):
                cursor.execute("SELECT * FROM dpb_no_such_table")
    backend = pooled.backend_id(wrapper) if view == "leave_open" else None
    if backend is not None:
        pooled.wait_for_state(backend, "idle in transaction")
    # The request ends without commit or rollback; Django gives the connection back.
    wrapper.close_if_unusable_or_obsolete()
    wrapper.close()
    assert wrapper.connection is None

    again = pooled.wrapper()
    same = pooled.backend_id(again)
    assert again.get_autocommit() is True
    assert again.connection is not None
    pooled.wait_for_state(same, "idle")
    with again.cursor() as cursor:
        cursor.execute(f"SELECT COUNT(*) FROM {table} WHERE name = 'ghost'")
        assert cursor.fetchone()[0] == 0  # rolled back, not committed
    again.close()
    assert pooled.stats()["resets"] >= 1
    assert f"Pool {pooled.alias!r}: rolled back a transaction left open" in caplog.text


def _kill_under(pooled, wrapper) -> int:
    """Kill the wrapper's session server-side; its next query fails, as in a request."""
    dead = pooled.backend_id(wrapper)
    pooled.kill(dead)
    wait_for(lambda: dead not in pooled.server_sessions(), what="the kill")
    with pytest.raises(DjangoOperationalError):
        pooled.backend_id(wrapper)
    assert wrapper.errors_occurred
    return dead


def test_a_killed_connection_is_never_handed_out_again(make_pooled, vendor):
    pooled = make_pooled(vendor, max_size=2)
    wrapper = pooled.wrapper()
    dead = _kill_under(pooled, wrapper)
    # What Django does at the end of every request.
    wrapper.close_if_unusable_or_obsolete()
    assert wrapper.connection is None
    seen = set()
    for _ in range(10):
        seen.add(pooled.backend_id(wrapper))
        wrapper.close()
    assert dead not in seen
    stats = pooled.stats()
    assert sum(stats["closed_by_reason"].get(r, 0) for r in ("broken", "reset_failed")) == 1


def test_closing_right_after_an_error_discards_a_dead_connection(make_pooled, vendor):
    """No Django health check in between: close() alone must notice."""
    pooled = make_pooled(vendor, max_size=1)
    wrapper = pooled.wrapper()
    dead = _kill_under(pooled, wrapper)
    wrapper.close()
    assert pooled.backend_id(wrapper) != dead
    wrapper.close()


@pytest.mark.parametrize("max_age", [None, 60])
def test_pool_timeout_names_conn_max_age_when_threads_keep_connections(
    make_pooled, vendor, max_age
):
    pooled = make_pooled(vendor, max_size=1, timeout=0.2)
    pooled.settings_dict["CONN_MAX_AGE"] = max_age
    holder = pooled.wrapper()
    pooled.backend_id(holder)
    with pytest.raises(PoolTimeout) as info:
        pooled.wrapper().ensure_connection()
    alias = pooled.alias
    assert str(info.value) == (
        f"couldn't get a connection to database {alias!r} after waiting 0.2 s: "
        "1 connections are in use (max_size=1) and 0 other requests are waiting. "
        f"DATABASES[{alias!r}]['CONN_MAX_AGE'] is {max_age!r}, so each thread keeps its "
        "connection out of the pool between requests, busy or not: set it to 0, so "
        "that connections go back to the pool at the end of each request (the pool "
        "keeps them open). Raise POOL['max_size'] (within the server's connection "
        "limit) or POOL['timeout'], keep work that holds a connection short, or set "
        "POOL['leak_timeout'] to find code that holds one too long."
    )
    holder.close()


def test_pool_timeout_and_rejection_messages_with_conn_max_age_zero(make_pooled, vendor):
    from django_poolbackend import TooManyRequests

    pooled = make_pooled(vendor, max_size=1, timeout=0.2, max_waiting=1)
    holder = pooled.wrapper()
    pooled.backend_id(holder)
    advice = (
        "Raise POOL['max_size'] (within the server's connection limit) or "
        "POOL['timeout'], keep work that holds a connection short, or set "
        "POOL['leak_timeout'] to find code that holds one too long."
    )
    with pytest.raises(PoolTimeout) as info:
        pooled.wrapper().ensure_connection()
    assert str(info.value) == (
        f"couldn't get a connection to database {pooled.alias!r} after waiting 0.2 s: "
        "1 connections are in use (max_size=1) and 0 other requests are waiting. " + advice
    )
    # One waiter in the queue (it gets the held connection in the end), then a
    # checkout that max_waiting=1 rejects at once.
    pool = pooled.pool
    queued = threading.Thread(target=lambda: pool.putconn(pool.getconn(lambda: None, timeout=30)))
    queued.start()
    wait_for(lambda: pooled.stats()["waiting"] == 1, what="the first waiter")
    with pytest.raises(TooManyRequests) as rejected:
        pooled.wrapper().ensure_connection()
    assert isinstance(rejected.value, PoolTimeout)
    assert isinstance(rejected.value, DjangoOperationalError)
    assert str(rejected.value) == (
        f"couldn't get a connection to database {pooled.alias!r}: 1 requests are already "
        "waiting (max_waiting=1) and all 1 connections (max_size=1) are in use. " + advice
    )
    holder.close()
    queued.join(30)
    assert not queued.is_alive()
