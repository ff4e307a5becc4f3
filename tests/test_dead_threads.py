"""A thread that ends holding a pooled connection (it never called close()) gives
it back by ending: the pool reclaims it when a checkout needs it, and the
maintenance thread within about a second, without the garbage collector.

Proven on the real servers with Django's own ``connections`` (each thread gets
its wrapper there, as in a view or a test that starts threads) and with automatic
garbage collection disabled, so that no finalizer can be what frees it.
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.db import connections, transaction

from django_poolbackend import PoolTimeout, process
from testproject.shop.models import Item

from .conftest import wait_for

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "mysql"])


@pytest.fixture
def no_gc() -> Iterator[None]:
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@pytest.fixture
def django_alias(make_pooled: Callable[..., Any]) -> Iterator[Callable[..., Any]]:
    """A pooled alias of the test's own, known to ``django.db.connections``."""
    made: list[str] = []

    def make(vendor: str, **pool: Any) -> Any:
        pooled = make_pooled(vendor, **pool)
        connections.settings[pooled.alias] = pooled.settings_dict
        made.append(pooled.alias)
        return pooled

    yield make
    for alias in made:
        try:
            connections[alias].close()
        except Exception:
            pass
        del connections[alias]
        del connections.settings[alias]


def in_a_thread(work: Callable[[], Any]) -> Any:
    """Run *work* in a thread of its own and wait until that thread has ended;
    return its result, or raise what it raised."""
    result: list[Any] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            result.append(work())
        except BaseException as exc:  # noqa: BLE001 - raised again below
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(60)
    assert not thread.is_alive()
    if errors:
        raise errors[0]
    return result[0] if result else None


def backend_id(alias: str, vendor: str) -> int:
    sql = "SELECT pg_backend_pid()" if vendor == "postgresql" else "SELECT CONNECTION_ID()"
    with connections[alias].cursor() as cursor:
        cursor.execute(sql)
        return cursor.fetchone()[0]


def hold_without_closing(alias: str, vendor: str, how: str, item_pk: int) -> int:
    """In the calling thread: use a connection as *how* says, and never close it."""
    if how == "plain":
        return backend_id(alias, vendor)
    if how == "atomic_select_for_update":
        with transaction.atomic(using=alias):
            Item.objects.using(alias).select_for_update().get(pk=item_pk)
            return backend_id(alias, vendor)
    # "open_transaction": the thread ends inside the transaction, holding the
    # row lock (as a thread killed by an exception nobody caught would).
    transaction.atomic(using=alias).__enter__()
    Item.objects.using(alias).select_for_update().get(pk=item_pk)
    return backend_id(alias, vendor)


@pytest.mark.parametrize("how", ["plain", "atomic_select_for_update", "open_transaction"])
def test_a_connection_held_by_a_thread_that_ended_serves_the_next_checkout(
    django_alias, vendor, no_gc, how
):
    pooled = django_alias(vendor, max_size=1, timeout=5)
    alias = pooled.alias
    item = Item.objects.using(vendor).create(name="locked")
    lost_id = in_a_thread(lambda: hold_without_closing(alias, pooled.vendor, how, item.pk))
    assert pooled.stats()["in_use"] == 1

    def next_checkout() -> tuple[float, int]:
        started = time.monotonic()
        try:
            # NOWAIT: the row lock of the thread that ended must be gone too.
            with transaction.atomic(using=alias):
                Item.objects.using(alias).select_for_update(nowait=True).get(pk=item.pk)
                return time.monotonic() - started, backend_id(alias, pooled.vendor)
        finally:
            connections[alias].close()

    elapsed, new_id = in_a_thread(next_checkout)
    assert elapsed < 2.5  # timeout=5: it did not wait for a connection
    assert new_id != lost_id
    assert lost_id not in pooled.server_sessions()
    stats = pooled.stats()
    assert stats["closed_by_reason"] == {"leaked": 1}
    assert stats["timeouts"] == 0
    assert (stats["size"], stats["idle"], stats["in_use"], stats["waiting"]) == (1, 1, 0, 0)


def test_maintenance_reclaims_a_dead_threads_connection_within_about_a_second(
    django_alias, vendor, no_gc
):
    pooled = django_alias(vendor, max_size=2)
    lost_id = in_a_thread(lambda: backend_id(pooled.alias, pooled.vendor))
    ended = time.monotonic()
    wait_for(
        lambda: pooled.stats()["size"] == 0 and lost_id not in pooled.server_sessions(),
        timeout=10,
        what="the maintenance thread to close it",
    )
    assert time.monotonic() - ended < 3.5  # one tick a second, on a loaded machine
    assert pooled.stats()["closed_by_reason"] == {"leaked": 1}


def test_threads_that_never_close_in_atomic_select_for_update_repeatedly(
    django_alias, vendor, no_gc
):
    # django-treebeard's test_add_child_concurrent, repeated: five threads each
    # lock and update a row in atomic() and end without closing, at the default
    # max_size of 10, so from the third round on only reclaimed connections serve.
    pooled = django_alias(vendor, timeout=10)
    alias = pooled.alias
    item = Item.objects.using(vendor).create(name="tree", stock=0)
    errors: list[BaseException] = []

    def add_child() -> None:
        try:
            with transaction.atomic(using=alias):
                row = Item.objects.using(alias).select_for_update().get(pk=item.pk)
                row.stock += 1
                row.save(using=alias)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    for _ in range(6):
        threads = [threading.Thread(target=add_child) for _ in range(5)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    assert errors == []
    item.refresh_from_db()
    assert item.stock == 30
    stats = pooled.stats()
    assert stats["size"] <= 10 and stats["timeouts"] == 0
    assert stats["closed_by_reason"]["leaked"] >= 10
    # Retiring the pool (Django's close_pool() before it drops a test database)
    # closes the connections of threads that ended too: none stays on the server.
    process.retire(alias)
    wait_for(lambda: not pooled.server_sessions(), what="every session of the pool to end")


def test_a_connection_shared_between_threads_is_not_reclaimed_when_its_thread_ends(
    django_alias, vendor, no_gc
):
    pooled = django_alias(vendor, max_size=1, timeout=0.3)
    alias = pooled.alias

    def share() -> tuple[Any, int]:
        wrapper = connections[alias]
        wrapper.inc_thread_sharing()
        return wrapper, backend_id(alias, pooled.vendor)

    shared, shared_id = in_a_thread(share)
    pooled.pool.maintain()  # a maintenance tick: finds no dead owner
    other = pooled.wrapper()
    with pytest.raises(PoolTimeout):
        other.ensure_connection()  # a waiting checkout: reclaims nothing either
    # The thread that made it has ended; the connection still serves this one.
    with shared.cursor() as cursor:
        cursor.execute("SELECT 1")
    assert pooled.server_sessions() == {shared_id}
    assert pooled.stats()["closed_by_reason"] == {}
    shared.close()
    shared.dec_thread_sharing()
    assert pooled.backend_id(other) == shared_id
    other.close()


#: Rounds of the treebeard scenario: django-treebeard's test_add_child_concurrent
#: failed 6 of 20 runs on PostgreSQL and 5 of 16 on MariaDB before the reclaim.
TREEBEARD_ROUNDS = 20


def test_treebeard_add_child_concurrent_twenty_times_then_the_database_drops(
    django_alias, own_databases, vendor, no_gc
):
    """django-treebeard's test_add_child_concurrent on a table of a database of the
    test's own, 20 times in a row at the default max_size: each round five threads
    lock the parent row with select_for_update() inside atomic(), add a child, and
    end without closing. Every round must pass, and afterwards, once the pool is
    retired (Django's close_pool() before it drops a test database), the database
    drops at once: no session of a thread that ended is left on it (PostgreSQL
    refuses "being accessed by other users"; MariaDB's DROP waits on the metadata
    lock of an open transaction)."""
    pooled = django_alias(vendor, database=own_databases.name, timeout=10)
    alias = pooled.alias
    setup = connections[alias]
    with setup.cursor() as cursor:
        cursor.execute("CREATE TABLE dpb_node (id integer PRIMARY KEY, parent integer, n integer)")
        cursor.execute("INSERT INTO dpb_node (id, parent, n) VALUES (1, NULL, 0)")
    setup.close()
    passed = 0
    for round_ in range(TREEBEARD_ROUNDS):
        errors: list[BaseException] = []

        def add_child(child: int, round_: int = round_, errors: list = errors) -> None:
            try:
                with transaction.atomic(using=alias):
                    with connections[alias].cursor() as cursor:
                        cursor.execute("SELECT n FROM dpb_node WHERE id = 1 FOR UPDATE")
                        (n,) = cursor.fetchone()
                        cursor.execute(
                            "INSERT INTO dpb_node (id, parent, n) VALUES (%s, 1, 0)",
                            [1000 * (round_ + 1) + child],
                        )
                        cursor.execute("UPDATE dpb_node SET n = %s WHERE id = 1", [n + 1])
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=add_child, args=(child,)) for child in range(5)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not any(thread.is_alive() for thread in threads)
        with connections[alias].cursor() as cursor:
            cursor.execute("SELECT n FROM dpb_node WHERE id = 1")
            children = cursor.fetchone()[0]
        connections[alias].close()
        assert errors == [], f"round {round_ + 1}: {errors!r}"
        assert children == 5 * (round_ + 1), f"round {round_ + 1}"
        passed += 1
    assert passed == TREEBEARD_ROUNDS
    stats = pooled.stats()
    assert stats["timeouts"] == 0 and stats["size"] <= 10
    # Five threads a round never gave theirs back: all but the last round's
    # were reclaimed by the checkouts that needed them or by the maintenance tick.
    assert stats["closed_by_reason"]["leaked"] >= 5 * (TREEBEARD_ROUNDS - 2)
    connections[alias].close_pool()
    if pooled.vendor == "postgresql":
        # No FORCE: refused while any session is on the database.
        wait_for(lambda: own_databases.sessions()["postgresql"] == 0, what="no session left")
        own_databases.pg.execute(f'DROP DATABASE "{own_databases.name}"')
    else:
        own_databases._my_query("SET SESSION lock_wait_timeout = 10")
        own_databases._my_query(f"DROP DATABASE `{own_databases.name}`")
