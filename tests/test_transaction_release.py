"""POOL["release"] = "transaction": connections follow transactions, not requests.

Each test has a pool of its own (``make_pooled``) on the real servers and reads
the server's own session ids (``pg_backend_pid()``, ``CONNECTION_ID()``) to tell
which session ran what. "The end of the request" is what Django calls at the end
of every request, ``close_if_unusable_or_obsolete()`` (request_finished), here
called directly on the wrapper.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import IntegrityError, connections, transaction

import django_poolbackend
from django_poolbackend import PoolTimeout, SessionStateLost

from .conftest import wait_for

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "mysql"])

PID = {"postgresql": "SELECT pg_backend_pid()", "mysql": "SELECT CONNECTION_ID()"}


def one(wrapper: Any, sql: str, params: Any = None) -> Any:
    with wrapper.cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    return None if row is None else row[0]


def run(wrapper: Any, sql: str) -> None:
    with wrapper.cursor() as cursor:
        cursor.execute(sql)


def end_request(wrapper: Any) -> None:
    """What Django's request_finished does for each connection."""
    wrapper.close_if_unusable_or_obsolete()


@contextlib.contextmanager
def registered(wrapper: Any) -> Iterator[Any]:
    """*wrapper* as ``connections[alias]``, for transaction.atomic(using=alias)."""
    connections[wrapper.alias] = wrapper
    try:
        yield wrapper
    finally:
        del connections[wrapper.alias]


def test_an_autocommit_statement_gives_the_connection_back_when_its_cursor_closes(
    make_pooled: Any, vendor: str
) -> None:
    pooled = make_pooled(vendor, release="transaction", max_size=1)
    wrapper = pooled.wrapper()
    first = one(wrapper, PID[pooled.vendor])
    assert wrapper.connection is None
    stats = pooled.stats()
    assert (stats["in_use"], stats["idle"], stats["releases"]) == (0, 1, 1)
    # A second request's wrapper gets that same session meanwhile.
    other = pooled.wrapper()
    assert one(other, PID[pooled.vendor]) == first
    assert one(wrapper, PID[pooled.vendor]) == first
    assert pooled.stats()["releases"] == 3
    assert pooled.stats()["connects"] == 1


def test_the_default_release_keeps_the_connection_until_the_end_of_the_request(
    make_pooled: Any, vendor: str
) -> None:
    pooled = make_pooled(vendor, max_size=1)
    wrapper = pooled.wrapper()
    one(wrapper, "SELECT 1")
    assert wrapper.connection is not None
    assert pooled.stats()["in_use"] == 1
    end_request(wrapper)
    stats = pooled.stats()
    assert (stats["in_use"], stats["releases"]) == (0, 0)


def test_an_open_cursor_keeps_the_connection_until_it_is_closed(
    make_pooled: Any, vendor: str
) -> None:
    pooled = make_pooled(vendor, release="transaction", max_size=2)
    wrapper = pooled.wrapper()
    cursor = wrapper.cursor()
    cursor.execute("SELECT 1")
    with wrapper.cursor() as second:
        second.execute("SELECT 2")
    # The second cursor closed, the first still open: the connection stays.
    assert wrapper.connection is not None
    assert pooled.stats()["in_use"] == 1
    assert cursor.fetchone()[0] == 1
    cursor.close()
    assert wrapper.connection is None
    assert pooled.stats()["in_use"] == 0


def test_a_transaction_keeps_its_connection_and_gives_it_back_at_its_end(
    make_pooled: Any, vendor: str
) -> None:
    pooled = make_pooled(vendor, release="transaction", max_size=2)
    wrapper = pooled.wrapper()
    with registered(wrapper):
        with transaction.atomic(using=wrapper.alias):
            first = one(wrapper, PID[pooled.vendor])
            assert pooled.stats()["in_use"] == 1
            with transaction.atomic(using=wrapper.alias):  # a savepoint
                assert one(wrapper, PID[pooled.vendor]) == first
            assert one(wrapper, PID[pooled.vendor]) == first
            assert wrapper.connection is not None
        assert wrapper.connection is None
        assert pooled.stats()["in_use"] == 0
        # A rolled back block gives it back too.
        with pytest.raises(RuntimeError), transaction.atomic(using=wrapper.alias):
            one(wrapper, "SELECT 1")
            raise RuntimeError("the block fails")
        assert wrapper.connection is None
        # A manual transaction: back once autocommit is on again.
        wrapper.set_autocommit(False)
        one(wrapper, "SELECT 1")
        wrapper.commit()
        assert pooled.stats()["in_use"] == 1
        wrapper.set_autocommit(True)
        assert wrapper.connection is None
        stats = pooled.stats()
        assert (stats["in_use"], stats["releases"]) == (0, 3)


def test_on_commit_callbacks_run_and_their_queries_release_too(
    make_pooled: Any, vendor: str
) -> None:
    pooled = make_pooled(vendor, release="transaction", max_size=1)
    wrapper = pooled.wrapper()
    seen: list[Any] = []
    with registered(wrapper):
        with transaction.atomic(using=wrapper.alias):
            one(wrapper, "SELECT 1")
            transaction.on_commit(
                lambda: seen.append(one(wrapper, "SELECT 2")), using=wrapper.alias
            )
        assert seen == [2]
    assert pooled.stats()["in_use"] == 0


def test_a_raw_begin_keeps_the_connection_until_the_raw_commit(
    make_pooled: Any, vendor: str
) -> None:
    pooled = make_pooled(vendor, release="transaction", max_size=1)
    wrapper = pooled.wrapper()
    one(wrapper, "SELECT 1")
    with wrapper.cursor() as cursor:
        cursor.execute("BEGIN")
    assert pooled.stats()["in_use"] == 1  # inside the server's transaction
    with wrapper.cursor() as cursor:
        cursor.execute("COMMIT")
    assert pooled.stats()["in_use"] == 0


def test_a_server_side_cursor_keeps_its_connection_until_it_is_closed(make_pooled: Any) -> None:
    pooled = make_pooled("default", release="transaction", max_size=1)
    wrapper = pooled.wrapper()
    cursor = wrapper.chunked_cursor()
    cursor.execute("SELECT generate_series(1, 100)")
    assert [row[0] for row in cursor.fetchmany(3)] == [1, 2, 3]
    assert pooled.stats()["in_use"] == 1
    assert [row[0] for row in cursor.fetchmany(2)] == [4, 5]
    cursor.close()
    assert pooled.stats()["in_use"] == 0


PINS = [
    ("default", "SET search_path TO public", "set"),
    ("default", "SET SESSION statement_timeout = 5000", "set"),
    ("default", "RESET statement_timeout", "set"),
    ("default", "SELECT set_config('application_name', 'x', false)", "set"),
    ("default", "LISTEN dpb_channel", "listen"),
    ("default", "PREPARE dpb_stmt AS SELECT 1", "prepare"),
    ("default", "CREATE TEMP TABLE dpb_tmp (id int)", "temporary_table"),
    ("default", "CREATE TEMPORARY TABLE dpb_tmp2 (id int)", "temporary_table"),
    ("default", "SELECT pg_advisory_lock(4242001)", "advisory_lock"),
    ("default", "SELECT pg_try_advisory_lock(4242002)", "advisory_lock"),
    ("default", "SELECT nextval('dpb_seq')", "sequence"),
    ("mysql", "SET @dpb_x = 1", "set"),
    ("mysql", "SELECT @dpb_y := 2", "user_variable"),
    ("mysql", "SET NAMES utf8mb4", "set"),
    ("mysql", "SET SESSION sql_mode = 'STRICT_ALL_TABLES'", "set"),
    ("mysql", "SELECT GET_LOCK('dpb_lock', 0)", "named_lock"),
    ("mysql", "SELECT SQL_CALC_FOUND_ROWS 1", "found_rows"),
    ("mysql", "CREATE TEMPORARY TABLE dpb_tmp (id int)", "temporary_table"),
    ("mysql", "LOCK TABLES dpb_release_t WRITE", "lock_tables"),
    ("mysql", "USE `{database}`", "use"),
]


@pytest.mark.parametrize(("alias", "sql", "reason"), PINS, ids=[p[1][:40] for p in PINS])
def test_a_statement_with_session_state_pins_the_connection_until_the_end_of_the_request(
    make_pooled: Any, alias: str, sql: str, reason: str
) -> None:
    pooled = make_pooled(alias, release="transaction", max_size=2)
    wrapper = pooled.wrapper()
    if "dpb_seq" in sql:
        run(wrapper, "CREATE SEQUENCE IF NOT EXISTS dpb_seq")
    if "dpb_release_t" in sql:
        run(wrapper, "CREATE TABLE IF NOT EXISTS dpb_release_t (id int)")
    first = one(wrapper, PID[pooled.vendor])
    with wrapper.cursor() as cursor:
        cursor.execute(sql.format(database=pooled.settings_dict["NAME"]))
    assert wrapper.connection is not None, "the statement should have pinned the connection"
    # Another borrower meanwhile gets the pool's other connection, and this one
    # stays on its session for every later statement.
    other = pooled.wrapper()
    assert one(other, PID[pooled.vendor]) != first
    assert one(wrapper, PID[pooled.vendor]) == first
    if "LOCK TABLES" in sql:
        run(wrapper, "UNLOCK TABLES")
    stats = pooled.stats()
    assert stats["pins"] == {reason: 1}
    assert stats["in_use"] == 1
    end_request(wrapper)
    stats = pooled.stats()
    assert stats["in_use"] == 0
    assert wrapper.connection is None


ORM_LIKE = [
    ("default", 'SELECT "t"."id" FROM "t" WHERE "t"."data" @> %s'),
    ("default", "SET LOCAL statement_timeout = 1000"),
    ("mysql", "SELECT @@SQL_AUTO_IS_NULL"),
    ("mysql", "SELECT 'someone@example.com'"),
]


@pytest.mark.parametrize(("alias", "sql"), ORM_LIKE, ids=[s[:40] for _, s in ORM_LIKE])
def test_statements_without_session_state_do_not_pin(
    make_pooled: Any, alias: str, sql: str
) -> None:
    pooled = make_pooled(alias, release="transaction", max_size=1)
    wrapper = pooled.wrapper()
    if "@>" in sql:
        run(wrapper, "CREATE TABLE IF NOT EXISTS t (id int, data jsonb)")
        with wrapper.cursor() as cursor:
            cursor.execute(sql, ['{"a": 1}'])
    elif "LOCAL" in sql:
        with registered(wrapper), transaction.atomic(using=wrapper.alias):
            with wrapper.cursor() as cursor:
                cursor.execute(sql)
    else:
        one(wrapper, sql)
    assert wrapper.connection is None
    stats = pooled.stats()
    assert stats["pins"] == {}
    assert stats["in_use"] == 0


def test_the_state_a_pinned_request_set_is_reset_at_its_end_with_reset_full(
    make_pooled: Any, vendor: str
) -> None:
    pooled = make_pooled(vendor, release="transaction", reset="full", max_size=1)
    wrapper = pooled.wrapper()
    if pooled.vendor == "postgresql":
        run(wrapper, "SET search_path TO dpb_nowhere")
        assert one(wrapper, "SHOW search_path") == "dpb_nowhere"
    else:
        run(wrapper, "SET @dpb_v = 7")
        assert one(wrapper, "SELECT @dpb_v") == 7
    end_request(wrapper)
    other = pooled.wrapper()
    if pooled.vendor == "postgresql":
        assert one(other, "SHOW search_path") != "dpb_nowhere"
    else:
        assert one(other, "SELECT @dpb_v") is None
    assert pooled.stats()["resets"] >= 1


def test_mysqls_own_set_up_statements_pin_nothing(make_pooled: Any) -> None:
    # Django's MySQL wrapper runs SET statements through its own cursors when a
    # connection is set up (SQL_AUTO_IS_NULL, init_command, isolation level).
    pooled = make_pooled("mysql", release="transaction", max_size=1)
    wrapper = pooled.wrapper()
    one(wrapper, "SELECT 1")
    assert pooled.stats()["pins"] == {}
    assert wrapper.connection is None


def test_pinned_keeps_the_connection_for_code_the_scan_cannot_see(
    make_pooled: Any, vendor: str
) -> None:
    pooled = make_pooled(vendor, release="transaction", max_size=2)
    wrapper = pooled.wrapper()
    with registered(wrapper):
        with django_poolbackend.pinned(wrapper.alias) as connection:
            assert connection is wrapper
            raw = wrapper.connection.cursor()  # the raw driver connection
            raw.execute(PID[pooled.vendor])
            first = raw.fetchone()[0]
            raw.close()
        assert one(wrapper, PID[pooled.vendor]) == first
        assert pooled.stats()["pins"] == {"explicit": 1}
        end_request(wrapper)
    assert pooled.stats()["in_use"] == 0


def test_a_value_left_in_a_session_given_back_and_reused_is_an_error_not_a_wrong_answer(
    make_pooled: Any, vendor: str
) -> None:
    pooled = make_pooled(vendor, release="transaction", max_size=1)
    wrapper = pooled.wrapper()
    if pooled.vendor == "postgresql":
        run(wrapper, "CREATE TABLE IF NOT EXISTS dpb_serial (id serial PRIMARY KEY, v int)")
        insert, read = "INSERT INTO dpb_serial (v) VALUES (1)", "SELECT lastval()"
    else:
        run(
            wrapper,
            "CREATE TABLE IF NOT EXISTS dpb_serial (id int AUTO_INCREMENT PRIMARY KEY, v int)",
        )
        insert, read = "INSERT INTO dpb_serial (v) VALUES (1)", "SELECT LAST_INSERT_ID()"
    with wrapper.cursor() as cursor:
        cursor.execute(insert)
    # Nobody used the session in between: the value is this request's, and it is read.
    assert one(wrapper, read) >= 1
    end_request(wrapper)
    # Another request uses the session between the two statements.
    with wrapper.cursor() as cursor:
        cursor.execute(insert)
    other = pooled.wrapper()
    with other.cursor() as cursor:
        cursor.execute(insert)
    with pytest.raises(SessionStateLost, match="pinned"):
        one(wrapper, read)
    assert pooled.stats()["in_use"] == 0
    end_request(wrapper)


def test_a_statement_that_sets_a_session_value_on_a_later_checkout_just_pins(
    make_pooled: Any, vendor: str
) -> None:
    # nextval() and SQL_CALC_FOUND_ROWS set the value; only its readers can be
    # answered from the wrong session.
    pooled = make_pooled(vendor, release="transaction", max_size=2)
    wrapper = pooled.wrapper()
    one(wrapper, "SELECT 1")
    other = pooled.wrapper()
    one(other, "SELECT 1")  # the session is used by someone else in between
    if pooled.vendor == "postgresql":
        run(wrapper, "CREATE SEQUENCE IF NOT EXISTS dpb_seq2")
        setter, reader = "SELECT nextval('dpb_seq2')", "SELECT currval('dpb_seq2')"
    else:
        setter, reader = "SELECT SQL_CALC_FOUND_ROWS 1", "SELECT FOUND_ROWS()"
    first = one(wrapper, setter)
    assert pooled.stats()["pins"] == {
        "sequence" if pooled.vendor == "postgresql" else "found_rows": 1
    }
    assert one(wrapper, reader) == first  # pinned: the same session answers
    end_request(wrapper)


def test_a_checkout_in_the_middle_of_a_request_that_times_out_says_so(
    make_pooled: Any, vendor: str
) -> None:
    pooled = make_pooled(vendor, release="transaction", max_size=1, timeout=0.2)
    wrapper = pooled.wrapper()
    one(wrapper, "SELECT 1")  # the request's first checkout, given back
    holder = pooled.wrapper()
    held = holder.cursor()
    held.execute("SELECT 1")  # holds the only connection
    with pytest.raises(PoolTimeout, match="second checkout of this request") as caught:
        one(wrapper, "SELECT 1")
    assert "max_size" in str(caught.value)
    assert wrapper.connection is None and wrapper._dpb_slot is None
    held.close()
    assert one(wrapper, "SELECT 1") == 1
    end_request(wrapper)
    assert pooled.stats()["in_use"] == 0


def test_a_connection_killed_between_two_transactions_is_replaced_transparently(
    make_pooled: Any, vendor: str
) -> None:
    pooled = make_pooled(vendor, release="transaction", max_size=1, pre_ping=False)
    wrapper = pooled.wrapper()
    first = one(wrapper, PID[pooled.vendor])
    pooled.kill(first)
    wait_for(lambda: first not in pooled.server_sessions(), what="the session to end")
    second = one(wrapper, PID[pooled.vendor])
    assert second != first
    assert pooled.stats()["closed_by_reason"]["broken"] == 1


def test_an_integrity_error_in_autocommit_still_gives_the_connection_back(
    make_pooled: Any, vendor: str
) -> None:
    pooled = make_pooled(vendor, release="transaction", max_size=1)
    wrapper = pooled.wrapper()
    run(wrapper, "CREATE TABLE IF NOT EXISTS dpb_unique (id int PRIMARY KEY)")
    with wrapper.cursor() as cursor:
        cursor.execute("DELETE FROM dpb_unique")
    with wrapper.cursor() as cursor:
        cursor.execute("INSERT INTO dpb_unique VALUES (1)")
    with pytest.raises(IntegrityError), wrapper.cursor() as cursor:
        cursor.execute("INSERT INTO dpb_unique VALUES (1)")
    first = one(wrapper, PID[pooled.vendor])
    assert pooled.stats()["in_use"] == 0
    assert one(wrapper, PID[pooled.vendor]) == first


def test_checkouts_per_request_are_counted_at_the_end_of_each_request(
    make_pooled: Any, vendor: str
) -> None:
    pooled = make_pooled(vendor, release="transaction", max_size=1)
    wrapper = pooled.wrapper()
    end_request(wrapper)  # request_started: nothing yet
    for _ in range(3):
        one(wrapper, "SELECT 1")
    end_request(wrapper)
    one(wrapper, "SELECT 1")
    end_request(wrapper)
    summary = pooled.stats()["checkouts_per_request"]
    assert (summary["count"], summary["max"], summary["mean"]) == (2, 3.0, 2.0)


def test_threads_share_fewer_connections_than_there_are_requests(
    make_pooled: Any, vendor: str
) -> None:
    # Eight "requests" in eight threads, each a query, a pause outside the
    # database, and a query, all at once, on a pool of two.
    pooled = make_pooled(vendor, release="transaction", max_size=2, timeout=30)
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def request() -> None:
        wrapper = pooled.wrapper()
        try:
            one(wrapper, "SELECT 1")
            barrier.wait(timeout=30)  # all eight are "between queries" at once
            one(wrapper, "SELECT 2")
            end_request(wrapper)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=request) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    stats = pooled.stats()
    assert stats["connects"] <= 2
    assert stats["releases"] == 16
    assert stats["in_use"] == 0


# -- SQLite -------------------------------------------------------------------------


def test_a_sqlite_file_database_releases_between_transactions_too(
    tmp_path: Any, django_db_blocker: Any
) -> None:
    from django.db.utils import load_backend

    from django_poolbackend import process

    from .test_engines import _settings

    settings_dict = _settings(
        "django_poolbackend.sqlite3",
        NAME=str(tmp_path / "release.sqlite3"),
        POOL={"release": "transaction", "max_size": 2},
    )
    cls = load_backend("django_poolbackend.sqlite3").DatabaseWrapper
    alias = f"dpb_sqlite_release_{id(settings_dict)}"
    with django_db_blocker.unblock():
        wrapper = cls(settings_dict, alias)
        try:
            run(wrapper, "CREATE TABLE t (id integer)")
            assert wrapper.connection is None
            with registered(wrapper), transaction.atomic(using=alias):
                run(wrapper, "INSERT INTO t VALUES (1)")
                assert wrapper.connection is not None
            assert wrapper.connection is None
            run(wrapper, "PRAGMA cache_size = -2000")
            assert wrapper.connection is not None  # pinned: a PRAGMA is per connection
            stats = process.pools[alias].stats()
            assert (stats["releases"], stats["pins"]) == (2, {"pragma": 1})
            end_request(wrapper)
            assert process.pools[alias].stats()["in_use"] == 0
        finally:
            wrapper.close()
            process.retire(alias)


# -- system checks ----------------------------------------------------------------


def _db(**extra: Any) -> dict[str, Any]:
    return {"ENGINE": "django_poolbackend.postgresql", "NAME": "x", **extra}


def test_the_checks_warn_where_transaction_release_cannot_help_and_refuse_what_cannot_work() -> (
    None
):
    from django_poolbackend.checks import pool_settings_messages

    def ids(db: dict[str, Any]) -> list[str]:
        return [m.id for m in pool_settings_messages({"default": db})]

    assert ids(_db(POOL={"release": "transaction"})) == []
    assert ids(_db(POOL={"release": "transaction"}, ATOMIC_REQUESTS=True)) == [
        "django_poolbackend.W007"
    ]
    assert ids(_db(ATOMIC_REQUESTS=True)) == []  # the default mode: nothing to say
    assert ids(_db(POOL={"release": "transaction"}, AUTOCOMMIT=False)) == [
        "django_poolbackend.E008"
    ]
    (message,) = pool_settings_messages({"default": _db(POOL={"release": "per-query"})})
    assert message.id == "django_poolbackend.E001"
    assert message.msg == (
        "DATABASES['default']['POOL']['release'] = 'per-query' is invalid: "
        'must be "request" or "transaction".'
    )


# -- poolstats -----------------------------------------------------------------


def test_poolstats_shows_the_mode_and_the_pins_of_each_alias_in_transaction_mode(
    make_pooled: Any,
) -> None:
    from django_poolbackend import figures
    from django_poolbackend.management.commands.poolstats import render_table

    pooled = make_pooled("default", release="transaction", max_size=1)
    wrapper = pooled.wrapper()
    one(wrapper, "SELECT 1")
    run(wrapper, "SET search_path TO public")
    end_request(wrapper)
    row = figures.pool_figures(pooled.pool)
    document = {
        "stats_dir": "/nowhere",
        "pools": [row],
        "totals": {**row, "processes": 1},
        "drains": {},
    }
    text = render_table(document)
    assert (
        f"Release of {pooled.alias!r}: per transaction; 1 returns between transactions; "
        "pins: set 1." in text.splitlines()
    )
    assert row["release"] == "transaction"
    assert row["releases"] == 1 and row["pins"] == {"set": 1}


# -- the debug-toolbar panel ---------------------------------------------------------


def test_the_panel_shows_each_checkout_of_a_request_and_the_pin_with_its_statement(
    make_pooled: Any, vendor: str
) -> None:
    from django.http import HttpResponse
    from django.test import override_settings

    from .test_panel import assert_valid_html, reloaded, run_request

    pooled = make_pooled(vendor, release="transaction", max_size=2)
    wrapper = pooled.wrapper()
    secret = "s3cr3t-in-a-literal"
    setting = (
        f"SET application_name = '{secret}'"
        if pooled.vendor == "postgresql"
        else f"SET @dpb_secret = '{secret}'"
    )

    def view(request: Any) -> HttpResponse:
        one(wrapper, "SELECT 1")
        one(wrapper, "SELECT 2")
        run(wrapper, setting)
        one(wrapper, "SELECT 3")
        return HttpResponse("<html><body></body></html>")

    from django.conf import settings

    with (
        override_settings(
            DEBUG=True,
            DEBUG_TOOLBAR_PANELS=["django_poolbackend.panels.PoolPanel"],
            STATIC_URL="static/",
            TEMPLATES=[
                {"BACKEND": "django.template.backends.django.DjangoTemplates", "APP_DIRS": True}
            ],
        ),
        override_settings(INSTALLED_APPS=[*settings.INSTALLED_APPS, "debug_toolbar"]),
    ):
        toolbar = run_request(view)
        end_request(wrapper)  # request_finished, after the toolbar ran
        panel = reloaded(toolbar)
        (row,) = [r for r in panel.get_stats()["requests"] if r["alias"] == pooled.alias]
        assert row["checkouts"] == 3 and row["releases"] == 2
        assert [e["released"] for e in row["events"]] == [True, True, False]
        assert all(e["hold_ms"] is not None for e in row["events"])
        (pin,) = row["pins"]
        assert pin["reason"] == "set" and pin["checkout"] == 3
        assert pin["statement"].startswith("SET ") and secret not in pin["statement"]
        content = panel.content
        assert_valid_html(content)
        assert "between transactions" in content and "at the end of the request" in content
        assert "Pinned to its server session from checkout 3" in content
        assert secret not in content
