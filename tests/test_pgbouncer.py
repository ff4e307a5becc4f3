"""The pooled engine in front of PgBouncer in transaction mode: the scale-out set-up.

Debian's PgBouncer runs on a free port with a private ini, in front of the shared
PostgreSQL; its database ``dpb_bouncer_tx`` is the suite's test database, pooled
by transaction with at most two server sessions. Transaction pooling lends each
transaction whichever server session is free, so a test that wants to prove
something survives a change of server session forces one: another client takes
the session just released (PgBouncer reuses the most recently released one first)
and holds it in a transaction of its own while the engine goes on.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import re
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from django.db import connections, transaction
from django.db.utils import OperationalError, ProgrammingError, load_backend
from django.utils.connection import ConnectionDoesNotExist

from django_poolbackend import checks, pool_stats, process
from testproject.shop.models import Item

from .conftest import ROOT, RUN_TAG, require_file, server_env, start_gunicorn, stop, wait_for
from .servers import PrivatePgBouncer

pytestmark = pytest.mark.django_db(transaction=True, databases=["default"])

TX_DB = "dpb_bouncer_tx"
#: Server sessions PgBouncer may open for TX_DB: fewer than the clients we run.
SERVER_SESSIONS = 2

_numbers = itertools.count()


@pytest.fixture(scope="module")
def bouncer(django_db_setup: Any, django_db_blocker: Any) -> Iterator[PrivatePgBouncer]:
    require_file(PrivatePgBouncer.BINARY, "pgbouncer", "Debian package pgbouncer")
    with django_db_blocker.unblock():
        test_db = connections["default"].settings_dict["NAME"]
    server = PrivatePgBouncer(
        {TX_DB: f"host=127.0.0.1 port=5432 dbname={test_db} pool_size={SERVER_SESSIONS}"},
        pool_mode="transaction",
        max_client_conn=100,
    )
    yield server
    server.destroy()


#: The settings of each alias made by via_bouncer().
_aliases: dict[str, dict[str, Any]] = {}


@contextmanager
def via_bouncer(bouncer: PrivatePgBouncer, **changes: Any) -> Iterator[str]:
    """A database alias of our pooled engine that reaches the test database through
    *bouncer*; its client connections carry the alias as application_name. It is
    not in settings.DATABASES: a thread gets its wrapper from use()."""
    alias = f"dpb_bouncer_{os.getpid()}_{next(_numbers)}"
    base = connections["default"].settings_dict
    settings_dict = copy.deepcopy(base)
    settings_dict.update(
        NAME=TX_DB,
        PORT=str(bouncer.port),
        OPTIONS={**base["OPTIONS"], "application_name": alias},
        POOL={"max_size": 4},
    )
    settings_dict.update(changes)
    _aliases[alias] = settings_dict
    use(alias)
    try:
        yield alias
    finally:
        done(alias)
        del _aliases[alias]
        process.retire(alias)


def use(alias: str) -> Any:
    """This thread's wrapper of *alias*, made the way Django makes one for an alias
    of settings.DATABASES (all threads share the settings dict)."""
    try:
        return connections[alias]
    except ConnectionDoesNotExist:
        settings_dict = _aliases[alias]
        wrapper = load_backend(settings_dict["ENGINE"]).DatabaseWrapper(settings_dict, alias)
        connections[alias] = wrapper
        return wrapper


def done(alias: str) -> None:
    """The end of this thread's use of *alias*: give its connection back."""
    use(alias).close()
    del connections[alias]


def server_pid(alias: str) -> int:
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return int(cursor.fetchone()[0])


@contextmanager
def other_server_session(bouncer: PrivatePgBouncer, alias: str) -> Iterator[int]:
    """Make *alias*'s next transaction run on another server session than its last
    one: a second client takes that session (the most recently released) and keeps
    it in an open transaction until the block ends. Yields the held session's pid."""
    before = server_pid(alias)
    holder = psycopg.connect(
        host="127.0.0.1", port=bouncer.port, user="postgres", dbname=TX_DB, autocommit=True
    )
    try:
        holder.execute("BEGIN")
        held = holder.execute("SELECT pg_backend_pid()").fetchone()[0]
        assert held == before, "PgBouncer did not lend the most recently released session"
        yield held
        holder.execute("ROLLBACK")
    finally:
        holder.close()


def pool_row(bouncer: PrivatePgBouncer) -> dict[str, Any]:
    (row,) = [r for r in bouncer.admin("SHOW POOLS") if r["database"] == TX_DB]
    return row


def servers_of(bouncer: PrivatePgBouncer) -> int:
    """How many server sessions PgBouncer has open for TX_DB."""
    return sum(1 for r in bouncer.admin("SHOW SERVERS") if r["database"] == TX_DB)


def clients_of(bouncer: PrivatePgBouncer, alias: str) -> set[str]:
    """PgBouncer's client connections of *alias*, by their client port."""
    return {
        str(r["port"])
        for r in bouncer.admin("SHOW CLIENTS")
        if r["database"] == TX_DB and r["application_name"] == alias
    }


def test_debian_pgbouncer_and_what_it_supports(bouncer):
    version = PrivatePgBouncer.version()
    match = re.fullmatch(r"PgBouncer (\d+)\.(\d+)\.\d+", version)
    assert match, version
    settings = {row["key"]: row["value"] for row in bouncer.admin("SHOW CONFIG")}
    # Protocol-level prepared statements in transaction mode came with 1.21.
    supports_prepared = (int(match[1]), int(match[2])) >= (1, 21)
    assert ("max_prepared_statements" in settings) == supports_prepared
    assert settings["pool_mode"] == "transaction"
    (database,) = [r for r in bouncer.admin("SHOW DATABASES") if r["name"] == TX_DB]
    assert database["pool_size"] == str(SERVER_SESSIONS)
    print(f"{version}: max_prepared_statements {'available' if supports_prepared else 'absent'}")


def test_the_engine_finds_the_proxy(bouncer):
    with via_bouncer(bouncer) as alias:
        wrapper = connections[alias]
        wrapper.ensure_connection()
        assert wrapper._dpb_driver.behind_proxy(wrapper.connection) is True
        # The client-side pid is PgBouncer's own, not the server session's.
        assert wrapper.connection.info.backend_pid != server_pid(alias)
    direct = connections["default"]
    direct.ensure_connection()
    assert direct._dpb_driver.behind_proxy(direct.connection) is False


# -- ordinary use -----------------------------------------------------------------------


def test_orm_across_many_checkouts_and_threads(bouncer):
    threads, requests = 6, 20
    with via_bouncer(bouncer) as alias:
        errors: list[BaseException] = []
        servers: set[int] = set()
        lock = threading.Lock()

        def client(n: int) -> None:
            use(alias)
            try:
                for i in range(requests):
                    item = Item.objects.using(alias).create(name=f"t{n}", stock=i)
                    item.stock += 1000
                    item.save(using=alias)
                    assert Item.objects.using(alias).get(pk=item.pk).stock == i + 1000
                    with lock:
                        servers.add(server_pid(alias))
                    connections[alias].close()  # the end of a request
            except BaseException as exc:
                errors.append(exc)
            finally:
                done(alias)

        workers = [threading.Thread(target=client, args=(n,)) for n in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(120)
        assert errors == []
        for n in range(threads):
            stocks = Item.objects.using(alias).filter(name=f"t{n}").values_list("stock", flat=True)
            assert sorted(stocks) == [i + 1000 for i in range(requests)]
        stats = pool_stats(alias)
        # Our pool bounds and reuses the client connections to PgBouncer...
        assert stats["connects"] <= 4
        assert stats["checkouts"] >= threads * requests
        assert stats["closed"] == 0
        assert 1 <= len(clients_of(bouncer, alias)) <= 4
    # ...and PgBouncer serves them all from its few server sessions.
    assert 1 <= len(servers) <= SERVER_SESSIONS
    print(
        f"{threads * requests} requests: {stats['connects']} client connections to "
        f"PgBouncer, {len(servers)} server sessions"
    )


def test_transactions_atomic_rollback_and_savepoints(bouncer):
    with via_bouncer(bouncer) as alias:
        committed: list[str] = []
        with transaction.atomic(using=alias):
            Item.objects.using(alias).create(name="kept", stock=1)
            transaction.on_commit(lambda: committed.append("kept"), using=alias)
            try:
                with transaction.atomic(using=alias):  # a savepoint
                    Item.objects.using(alias).create(name="savepoint", stock=2)
                    raise ValueError
            except ValueError:
                pass
            with transaction.atomic(using=alias):
                Item.objects.using(alias).create(name="inner", stock=3)
            # Everything so far ran in one server session, whatever others do.
            pid = server_pid(alias)
            first, second = Item.objects.using(alias).select_for_update().order_by("id")[:2]
            assert server_pid(alias) == pid
        assert committed == ["kept"]
        try:
            with transaction.atomic(using=alias):
                Item.objects.using(alias).create(name="rolled back", stock=4)
                raise RuntimeError
        except RuntimeError:
            pass
        with other_server_session(bouncer, alias):
            names = list(Item.objects.using(alias).order_by("id").values_list("name", flat=True))
        assert names == ["kept", "inner"]
        assert (first.name, second.name) == ("kept", "inner")
        assert pool_row(bouncer)["sv_active"] == "0"


# -- prepared statements ------------------------------------------------------------


def run_repeatedly(bouncer: PrivatePgBouncer, alias: str) -> list[int]:
    """The same parametrised query, often enough to be prepared, then again on
    another server session."""
    seen = [Item.objects.using(alias).filter(stock__gte=n).count() for n in range(5)]
    with other_server_session(bouncer, alias) as held:
        seen.append(Item.objects.using(alias).filter(stock__gte=0).count())
        assert server_pid(alias) != held
    return seen


def test_prepared_statements_stay_off_by_default(bouncer):
    Item.objects.bulk_create(Item(name=f"p{n}", stock=n) for n in range(3))
    for options in ({}, {"server_side_binding": True}):
        with via_bouncer(bouncer, OPTIONS={"server_side_binding": False, **options}) as alias:
            assert run_repeatedly(bouncer, alias) == [3, 2, 1, 0, 0, 3]
            # Django's default: psycopg prepares nothing, whatever the binding.
            assert connections[alias].connection.prepare_threshold is None


def test_prepared_statements_break_in_transaction_mode_and_the_check_says_so(bouncer):
    """psycopg prepares a query after prepare_threshold executions on one server
    session; the next transaction may run on another, which never saw it. PgBouncer
    1.21+ can follow them (max_prepared_statements); Debian 12's 1.18 cannot."""
    Item.objects.create(name="p", stock=1)
    options = {"prepare_threshold": 1, "server_side_binding": True}
    with via_bouncer(bouncer, OPTIONS=options, DISABLE_SERVER_SIDE_CURSORS=True) as alias:
        config = {r["key"]: r["value"] for r in bouncer.admin("SHOW CONFIG")}
        if int(config.get("max_prepared_statements") or 0) > 0:
            pytest.skip("this PgBouncer tracks prepared statements (max_prepared_statements)")
        with pytest.raises((OperationalError, ProgrammingError)) as caught:
            run_repeatedly(bouncer, alias)
        assert re.search(r'prepared statement "_pg3_\d+" does not exist', str(caught.value))
        (message,) = checks.server_messages(alias, connections[alias].settings_dict)
        assert message.id == "django_poolbackend.E004"


# -- server-side cursors ------------------------------------------------------------


def iterate_across_server_sessions(bouncer: PrivatePgBouncer, alias: str) -> list[int]:
    """QuerySet.iterator() in small chunks; after the first row another client
    takes the server session the iteration started on."""
    rows = Item.objects.using(alias).order_by("id").values_list("stock", flat=True)
    iterator = rows.iterator(chunk_size=5)
    seen = [next(iterator)]
    with other_server_session(bouncer, alias):
        seen.extend(iterator)
    return seen


def test_iterator_outside_a_transaction_survives_a_change_of_server_session(bouncer):
    Item.objects.bulk_create(Item(name=f"c{n}", stock=n) for n in range(30))
    # The stock engine declares a cursor WITH HOLD, which stays behind (Django
    # closes it on the way out, which fails the same way, unwrapped).
    stock = {"ENGINE": "django.db.backends.postgresql"}
    with via_bouncer(bouncer, **stock) as alias:
        with pytest.raises(Exception, match='cursor "_django_curs_.+" does not exist'):
            iterate_across_server_sessions(bouncer, alias)
    # Ours, with the documented setting.
    with via_bouncer(bouncer, DISABLE_SERVER_SIDE_CURSORS=True) as alias:
        assert iterate_across_server_sessions(bouncer, alias) == list(range(30))
        assert pool_stats(alias)["closed"] == 0


def test_iterator_with_no_setting_at_all_survives_a_change_of_server_session(bouncer):
    """The pool asked at its first connection whether a proxy is in the way;
    behind one, QuerySet.iterator() outside a transaction reads through a
    client-side cursor."""
    Item.objects.bulk_create(Item(name=f"c{n}", stock=n) for n in range(30))
    with via_bouncer(bouncer) as alias:
        assert not _aliases[alias].get("DISABLE_SERVER_SIDE_CURSORS")
        assert iterate_across_server_sessions(bouncer, alias) == list(range(30))
        assert pool_stats(alias)["closed"] == 0


def test_iterator_inside_a_transaction_keeps_its_server_side_cursor(bouncer):
    Item.objects.bulk_create(Item(name=f"c{n}", stock=n) for n in range(30))
    with via_bouncer(bouncer) as alias:
        with transaction.atomic(using=alias):
            rows = Item.objects.using(alias).order_by("id").values_list("stock", flat=True)
            iterator = rows.iterator(chunk_size=5)
            seen = [next(iterator)]
            with connections[alias].cursor() as cursor:
                cursor.execute("SELECT name FROM pg_cursors")
                cursors = [name for (name,) in cursor.fetchall()]
            seen.extend(iterator)
        assert seen == list(range(30))
        # Streamed from the server in chunks, as without PgBouncer.
        assert len(cursors) == 1 and cursors[0].startswith("_django_curs_")


# -- the pool's own work through PgBouncer -------------------------------------------


def test_reset_full_goes_through_the_pooler(bouncer):
    with via_bouncer(bouncer, POOL={"max_size": 1, "reset": "full"}) as alias:
        for _ in range(10):
            with connections[alias].cursor() as cursor:
                cursor.execute("SHOW TIME ZONE")
                assert cursor.fetchone()[0] == "UTC"
            assert Item.objects.using(alias).count() == 0
            connections[alias].close()
        # Another client leaves a server session in another time zone; lent to
        # us next, it gets ours back: PgBouncer sets the TimeZone each client set.
        other = psycopg.connect(
            host="127.0.0.1", port=bouncer.port, user="postgres", dbname=TX_DB, autocommit=True
        )
        with other:
            other.execute("SET TIME ZONE 'Asia/Tokyo'")
            row = other.execute("SELECT current_setting('TimeZone'), pg_backend_pid()").fetchone()
            tokyo = row[1]
            assert row[0] == "Asia/Tokyo"
        with connections[alias].cursor() as cursor:
            cursor.execute("SELECT current_setting('TimeZone'), pg_backend_pid()")
            assert cursor.fetchone() == ("UTC", tokyo)
        stats = pool_stats(alias)
        assert stats["connects"] == 1
        assert stats["resets"] == 10
        assert stats["closed"] == 0


def test_pings_through_the_pooler_and_a_pooler_that_drops_us(bouncer):
    with via_bouncer(bouncer, POOL={"max_size": 1, "pre_ping": True}) as alias:
        for _ in range(5):
            server_pid(alias)
            connections[alias].close()
        stats = pool_stats(alias)
        assert (stats["pings"], stats["ping_failures"], stats["connects"]) == (4, 0, 1)
        # PgBouncer drops every client of the database (an operator's KILL):
        # the pooled connection is dead, the next checkout's ping notices.
        (old_client,) = clients_of(bouncer, alias)
        bouncer.admin(f"KILL {TX_DB}")
        bouncer.admin(f"RESUME {TX_DB}")
        wait_for(lambda: not clients_of(bouncer, alias), what="PgBouncer to drop our client")
        assert Item.objects.using(alias).count() == 0
        stats = pool_stats(alias)
        assert (stats["ping_failures"], stats["connects"]) == (1, 2)
        assert clients_of(bouncer, alias) - {old_client}


def test_a_transaction_left_open_is_rolled_back_and_frees_the_server_session(bouncer, caplog):
    with via_bouncer(bouncer, POOL={"max_size": 1}) as alias:
        connection = connections[alias]
        transaction.set_autocommit(False, using=alias)
        Item.objects.using(alias).create(name="never committed", stock=1)
        pid = server_pid(alias)
        # PgBouncer keeps a server session lent to a client for its whole transaction.
        assert pool_row(bouncer)["sv_active"] == "1"
        observer = psycopg.connect(
            host="127.0.0.1", user="postgres", dbname="postgres", autocommit=True
        )
        with observer:

            def state() -> str:
                sql = "SELECT state FROM pg_stat_activity WHERE pid = %s"
                return str(observer.execute(sql, (pid,)).fetchone()[0])

            assert state() == "idle in transaction"
            connection.close()  # the request ends without commit
            assert state() == "idle"
        assert pool_row(bouncer)["sv_active"] == "0"
        assert "rolled back a transaction left open" in caplog.text
        assert Item.objects.using(alias).count() == 0
        assert connection.get_autocommit() is True
        assert pool_stats(alias)["connects"] == 1


def test_a_role_set_by_the_engine_leaks_to_other_clients_and_the_check_says_so(bouncer):
    # Roles are server-wide: this run's and worker's own (RUN_TAG).
    role = f"dpb_bouncer_role{RUN_TAG}"
    admin = psycopg.connect(host="127.0.0.1", user="postgres", dbname="postgres", autocommit=True)
    admin.execute(f'DROP ROLE IF EXISTS "{role}"')
    admin.execute(f'CREATE ROLE "{role}"')
    options = {**connections["default"].settings_dict["OPTIONS"], "assume_role": role}
    try:
        with via_bouncer(bouncer, OPTIONS=options, DISABLE_SERVER_SIDE_CURSORS=True) as alias:
            messages = checks.server_messages(alias, connections[alias].settings_dict)
            assert [m.id for m in messages] == ["django_poolbackend.E006"]
            assert "assume_role" in messages[0].msg and "session mode" in messages[0].hint
            pid = server_pid(alias)
            other = psycopg.connect(
                host="127.0.0.1", port=bouncer.port, user="postgres", dbname=TX_DB
            )
            with other:
                row = other.execute("SELECT current_user, pg_backend_pid()").fetchone()
            assert row == (role, pid)
    finally:
        # Server sessions that now carry the role are PgBouncer's: close them all.
        bouncer.admin(f"KILL {TX_DB}")
        bouncer.admin(f"RESUME {TX_DB}")
        wait_for(lambda: servers_of(bouncer) == 0, what="PgBouncer's server sessions to close")
        admin.execute(f'DROP ROLE "{role}"')
        admin.close()


# -- a deployment: Gunicorn workers, our pools, PgBouncer --------------------------------


def test_gunicorn_workers_through_pgbouncer_and_pooldrain(bouncer, tmp_path: Path):
    app = f"dpb-bouncer-{os.getpid()}"
    env = {
        "DJANGO_POOLBACKEND_STATS_DIR": str(tmp_path / "stats"),
        "DPB_APPLICATION_NAME": app,
        "DPB_USE_TEST_DB": "0",  # NAME stays PgBouncer's name for the test database
        "DPB_TEST_PG_URL": f"postgres://postgres@127.0.0.1:{bouncer.port}/{TX_DB}?max_size=3",
    }
    Item.objects.bulk_create(Item(name=f"g{n}", stock=n) for n in range(5))
    server = start_gunicorn("--workers", "2", env=env, log=tmp_path / "gunicorn.log")
    results = {"ok": 0, "failed": 0}
    lock = threading.Lock()
    stop_load = threading.Event()

    def client(path: str) -> None:
        while not stop_load.is_set():
            try:
                with urllib.request.urlopen(f"{server.url}{path}", timeout=30) as response:
                    body = json.loads(response.read())
                ok = path != "/items/" or len(body["items"]) == 5
            except Exception:
                ok = False
            with lock:
                results["ok" if ok else "failed"] += 1

    clients = [threading.Thread(target=client, args=(p,)) for p in ["/one/", "/items/"] * 3]
    for thread in clients:
        thread.start()
    try:
        wait_for(lambda: results["ok"] >= 60, timeout=60, what="steady load")
        before = clients_of(bouncer, app)
        # At most 2 workers x max_size 3 client connections, on 2 server sessions.
        assert 1 <= len(before) <= 6
        assert 1 <= servers_of(bouncer) <= SERVER_SESSIONS
        out = subprocess.run(
            [sys.executable, "-m", "django", "pooldrain", "--database", "default", "--wait", "10"],
            cwd=ROOT,
            env=server_env(**env),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        assert "Every process has retired its older connections." in out.stdout
        wait_for(
            lambda: not (before & clients_of(bouncer, app)),
            what="every pre-drain client connection to close",
        )
        served = results["ok"]
        wait_for(lambda: results["ok"] >= served + 20, timeout=60, what="requests after the drain")
        assert clients_of(bouncer, app)  # new client connections serve them
    finally:
        stop_load.set()
        for thread in clients:
            thread.join(60)
        stop(server)
    assert results["failed"] == 0
