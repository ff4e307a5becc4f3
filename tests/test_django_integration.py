"""The pooled engines inside Django: ORM, transactions, signals, settings, checks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import connections, transaction
from django.db.backends.signals import connection_created

from django_poolbackend import process
from django_poolbackend.mysql.base import DatabaseWrapper as MySQLWrapper
from django_poolbackend.postgresql.base import DatabaseWrapper as PGWrapper
from testproject.shop.models import Item

from .conftest import ROOT

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "mysql", "stock_pg"])


def test_pools_follow_the_switch_to_the_test_databases(vendor):
    connection = connections[vendor]
    sql = "SELECT current_database()" if connection.vendor == "postgresql" else "SELECT DATABASE()"
    with connection.cursor() as cursor:
        cursor.execute(sql)
        assert cursor.fetchone()[0] == connection.settings_dict["TEST"]["NAME"]
    assert process.pools[vendor].key[0] == connection.settings_dict["TEST"]["NAME"]


def test_orm_and_transactions_behave_as_with_the_stock_engine(vendor):
    committed: list[str] = []
    with transaction.atomic(using=vendor):
        Item.objects.using(vendor).create(name="kept", stock=1)
        transaction.on_commit(lambda: committed.append("kept"), using=vendor)
        try:
            with transaction.atomic(using=vendor):  # a savepoint
                Item.objects.using(vendor).create(name="dropped", stock=1)
                raise RuntimeError("roll the savepoint back")
        except RuntimeError:
            pass
        locked = list(Item.objects.using(vendor).select_for_update().filter(name="kept"))
        assert [item.name for item in locked] == ["kept"]
    assert committed == ["kept"]
    connections[vendor].close()  # the request ends: back to the pool
    names = sorted(Item.objects.using(vendor).values_list("name", flat=True))
    assert names == ["kept"]
    with pytest.raises(RuntimeError):
        with transaction.atomic(using=vendor):
            Item.objects.using(vendor).create(name="rolled back", stock=1)
            raise RuntimeError
    assert Item.objects.using(vendor).count() == 1


def test_server_side_cursors_iterate_across_checkouts(vendor):
    Item.objects.using(vendor).bulk_create(Item(name=f"i{n}", stock=n) for n in range(50))
    seen = [item.stock for item in Item.objects.using(vendor).iterator(chunk_size=7)]
    assert seen == list(range(50))
    connections[vendor].close()
    seen = [
        item.stock for item in Item.objects.using(vendor).order_by("-id").iterator(chunk_size=5)
    ]
    assert seen == list(range(49, -1, -1))


def test_atomic_requests_wraps_each_view_in_a_transaction(vendor, client):
    connection = connections[vendor]
    Item.objects.using(vendor).create(name="a", stock=10)
    Item.objects.using(vendor).create(name="b", stock=0)
    connection.settings_dict["ATOMIC_REQUESTS"] = True
    try:
        response = client.get("/transfer/", {"alias": vendor})
    finally:
        connection.settings_dict["ATOMIC_REQUESTS"] = False
    assert response.status_code == 200
    assert list(Item.objects.using(vendor).values_list("stock", flat=True)) == [9, 1]


def test_connection_created_fires_once_per_physical_connection(make_pooled, vendor):
    pooled = make_pooled(vendor, max_size=2)
    fired: list[int] = []

    def receiver(sender, connection, **kwargs):
        if connection.alias == pooled.alias:
            fired.append(id(connection.connection))

    connection_created.connect(receiver)
    try:
        wrapper = pooled.wrapper()
        for _ in range(20):
            pooled.backend_id(wrapper)
            wrapper.close()
    finally:
        connection_created.disconnect(receiver)
    assert len(fired) == 1
    assert pooled.stats()["connects"] == 1


def test_checkout_and_return_send_nothing_to_postgresql(make_pooled):
    """libpq's own protocol trace of the pooled connection stays empty."""
    pooled = make_pooled("default", max_size=1)
    wrapper = pooled.wrapper()
    pooled.backend_id(wrapper)
    pgconn = wrapper.connection.pgconn
    wrapper.close()
    with tempfile.TemporaryFile() as trace:
        pgconn.trace(trace.fileno())
        try:
            for _ in range(100):
                wrapper.ensure_connection()
                assert wrapper.connection.pgconn is pgconn
                wrapper.close_if_unusable_or_obsolete()  # request end: CONN_MAX_AGE=0
                assert wrapper.connection is None
            trace.seek(0)
            assert trace.read() == b""
            pooled.backend_id(wrapper)  # one real query: the trace does see it
            wrapper.close()
        finally:
            pgconn.untrace()
        trace.seek(0)
        lines = trace.read().decode().splitlines()
    sent = [line for line in lines if "\tF\t" in line and "\tQuery\t" in line]
    assert len(sent) == 1 and "pg_backend_pid" in sent[0]


def test_checkout_and_return_send_nothing_to_mysql(make_pooled):
    """The server's own per-session statement counter does not move."""
    pooled = make_pooled("mysql", max_size=1)
    wrapper = pooled.wrapper()

    def questions() -> int:
        with wrapper.cursor() as cursor:
            cursor.execute("SHOW SESSION STATUS LIKE 'Questions'")
            return int(cursor.fetchone()[1])

    first, second = questions(), questions()
    per_read = second - first  # what reading the counter itself costs
    before = questions()
    for _ in range(100):
        wrapper.close_if_unusable_or_obsolete()
        assert wrapper.connection is None
        wrapper.ensure_connection()
    after = questions()
    assert after - before == per_read
    assert pooled.stats()["connects"] == 1


def test_stock_postgresql_pool_option_is_taken_over():
    settings_dict = {
        **connections["default"].settings_dict,
        "OPTIONS": {"pool": {"min_size": 0, "max_size": 3, "timeout": 5}},
    }
    settings_dict.pop("POOL")
    wrapper = PGWrapper(settings_dict, "dpb_optpool")
    assert "pool" not in wrapper.settings_dict["OPTIONS"]
    assert wrapper.pool is None  # the stock psycopg_pool never starts
    assert (wrapper._dpb_config.max_size, wrapper._dpb_config.timeout) == (3, 5.0)
    assert settings_dict["OPTIONS"] == {"pool": {"min_size": 0, "max_size": 3, "timeout": 5}}


@pytest.mark.parametrize(
    ("pool", "message"),
    [
        (
            {"max_size": 0},
            "DATABASES['x']['POOL']['max_size'] = 0 is invalid: must be an integer >= 1.",
        ),
        (
            {"maxsize": 4},
            "DATABASES['x']['POOL'] has an unknown key 'maxsize': allowed keys are min_size, max_size, timeout,",
        ),
        (
            {"min_size": 5, "max_size": 2},
            "DATABASES['x']['POOL']['min_size'] = 5 is invalid: must not be greater than max_size (2).",
        ),
        (
            {"timeout": -1},
            "DATABASES['x']['POOL']['timeout'] = -1 is invalid: must be a number of seconds >= 0.",
        ),
        (
            {"max_size": "10"},
            "DATABASES['x']['POOL']['max_size'] = '10' is invalid: must be an integer >= 1.",
        ),
        (
            {"max_lifetime": 0},
            "DATABASES['x']['POOL']['max_lifetime'] = 0 is invalid: must be a number of seconds > 0 or None.",
        ),
        (
            {"pre_ping": "yes"},
            "DATABASES['x']['POOL']['pre_ping'] = 'yes' is invalid: must be True, False or a number of seconds >= 0 of idleness.",
        ),
        (
            {"reset": "wipe"},
            "DATABASES['x']['POOL']['reset'] = 'wipe' is invalid: must be \"rollback\", \"full\" or the dotted path of a callable (connection).",
        ),
        (
            {"max_uses": True},
            "DATABASES['x']['POOL']['max_uses'] = True is invalid: must be an integer >= 0.",
        ),
        ([1, 2], "DATABASES['x']['POOL'] = [1, 2] is invalid: must be a dict of pool settings."),
    ],
)
def test_invalid_pool_settings_are_named_precisely(pool, message):
    settings_dict = {**connections["mysql"].settings_dict, "POOL": pool}
    wrapper = MySQLWrapper(settings_dict, "x")  # Django builds wrappers early: no error yet
    with pytest.raises(ImproperlyConfigured) as info:
        wrapper.ensure_connection()  # first use
    assert str(info.value).startswith(message)
    assert "x" not in process.pools  # nothing opened, nothing leaked


def test_both_pool_and_options_pool_is_an_error():
    settings_dict = {
        **connections["default"].settings_dict,
        "OPTIONS": {"pool": True},
        "POOL": {"max_size": 2},
    }
    wrapper = PGWrapper(settings_dict, "y")
    assert wrapper.pool is None  # the stock psycopg_pool never sees OPTIONS['pool']
    with pytest.raises(ImproperlyConfigured, match="sets both 'POOL' and OPTIONS\\['pool'\\]"):
        wrapper.ensure_connection()


def test_unsupported_psycopg_pool_option_is_named():
    settings_dict = {**connections["default"].settings_dict, "OPTIONS": {"pool": {"kwargs": {}}}}
    settings_dict.pop("POOL")
    with pytest.raises(ImproperlyConfigured, match="has the key 'kwargs', a psycopg_pool option"):
        PGWrapper(settings_dict, "z").ensure_connection()


def _manage(*args: str, database_url: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "testproject/manage.py", *args],
        cwd=ROOT,
        env={
            **os.environ,
            "DATABASE_URL": database_url,
            "DJANGO_SETTINGS_MODULE": "testproject.settings",
        },
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_manage_py_check_reports_bad_pool_settings(django_db_setup):
    bad = _manage("check", database_url="postgres://postgres@127.0.0.1:5432/dpb_x?max_size=0")
    assert bad.returncode == 1
    assert "django_poolbackend.E001" in bad.stderr
    assert (
        "DATABASES['default']['POOL']['max_size'] = 0 is invalid: must be an integer >= 1."
        in bad.stderr
    )
    # Django 6 may open a connection during checks: point at a database that exists.
    test_db = connections["mysql"].settings_dict["NAME"]  # the suite's (suffixed) test database
    good = _manage("check", database_url=f"mysql://root@127.0.0.1:3306/{test_db}?max_size=3")
    assert good.returncode == 0, good.stderr
    assert "no issues" in good.stdout


def test_checks_warn_about_conn_max_age_and_pass_a_good_configuration(settings):
    from django_poolbackend.checks import check_pool_settings, pool_settings_messages

    assert check_pool_settings() == []
    databases = {alias: dict(db) for alias, db in settings.DATABASES.items()}
    databases["mysql"]["CONN_MAX_AGE"] = 60
    messages = pool_settings_messages(databases)
    assert [m.id for m in messages] == ["django_poolbackend.W001"]
    assert "DATABASES['mysql']['CONN_MAX_AGE'] is 60" in messages[0].msg


def test_gunicorn_reuses_connections_where_the_stock_engine_reconnects(gunicorn_server):
    for alias in ("default", "mysql"):
        seen = {
            json.loads(gunicorn_server.get(f"/one/?alias={alias}"))["backend"] for _ in range(200)
        }
        assert 1 <= len(seen) <= 4, alias
    stock = {json.loads(gunicorn_server.get("/one/?alias=stock_pg"))["backend"] for _ in range(20)}
    assert len(stock) == 20


def test_gunicorn_requests_that_leave_transactions_open_leave_nothing_behind(
    gunicorn_server, make_pooled
):
    for alias in ("default", "mysql"):
        for path in ("/leave-open/", "/fail-in-transaction/"):
            backend = json.loads(gunicorn_server.get(f"{path}?alias={alias}"))["backend"]
            again = json.loads(gunicorn_server.get(f"/one/?alias={alias}"))["backend"]
            assert again == backend  # the same connection, back in service
            observer = make_pooled(alias).observer
            if observer.vendor == "postgresql":
                state = observer.query(
                    "SELECT state FROM pg_stat_activity WHERE pid = %s", (backend,)
                )
                assert state == [("idle",)]
            else:
                rows = observer.query("SELECT @@global.autocommit")  # server reachable
                assert rows
                state = observer.query(
                    "SELECT command FROM information_schema.processlist WHERE id = %s", (backend,)
                )
                assert state == [("Sleep",)]


def test_threads_share_one_pool_per_process(make_pooled, vendor):
    pooled = make_pooled(vendor, max_size=2)
    pools = set()

    def work():
        wrapper = pooled.wrapper()
        wrapper.ensure_connection()
        pools.add(id(wrapper._dpb_slot.pool))
        wrapper.close()

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert pools == {id(pooled.pool)}


# Two suite runs at once (./dev test runs both Django lines together) each set their
# own suffix, so their test databases (test_dpb_parallel...) never collide.
_SUFFIX = os.environ.get("DPB_TEST_DB_SUFFIX", "")


@pytest.mark.parametrize(
    ("url", "runs"),
    [
        (f"postgres://postgres@127.0.0.1:5432/dpb_parallel{_SUFFIX}", ([], ["--keepdb"], ["--keepdb"])),
        (f"mysql://root@127.0.0.1:3306/dpb_parallel{_SUFFIX}", ([],)),
    ],
)
def test_manage_py_test_parallel_and_keepdb_work_with_the_pool(url, runs):
    """Creating, cloning (--parallel forks) and dropping test databases, and keeping
    them, must never trip over connections the pool holds."""
    for extra in runs:
        run = _manage(
            "test", "testproject.shop", "--parallel", "2", "--noinput", *extra, database_url=url
        )
        assert run.returncode == 0, run.stderr[-3000:]
        assert "Ran 4 tests" in run.stderr and "OK" in run.stderr


@pytest.mark.django_db(transaction=True, databases=["default"])
def test_a_copy_with_other_options_connects_outside_the_pool():
    """Django's own tests (and some apps) copy a connection and change OPTIONS; the
    pool's connections were set up with the pool's OPTIONS, so the copy gets a
    connection of its own, as with the stock engine, and the pool is untouched."""
    base = connections["default"]
    base.ensure_connection()
    pool = process.pools["default"]
    before = pool.stats()
    other = base.copy()
    other.settings_dict["OPTIONS"] = {
        **other.settings_dict["OPTIONS"],
        "application_name": "dpb-suite-copy",
    }
    try:
        with other.cursor() as cursor:
            cursor.execute("SELECT current_setting('application_name'), pg_backend_pid()")
            name, pid = cursor.fetchone()
    finally:
        other.close()
    assert name == "dpb-suite-copy"
    with base.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        assert cursor.fetchone()[0] != pid
    after = pool.stats()
    assert (after["requests"], after["connects"]) == (before["requests"], before["connects"])
