"""Closing a connection in the middle of a protocol exchange, on the real servers.

A request that ends with a COPY still open, an unbuffered result not read to its
end, or a psycopg pipeline still entered returns a connection nobody can clean: a
rollback would wait forever on psycopg's connection lock (which the COPY holds) or
fail with "Commands out of sync" on MySQL. The stock engine just closes such a
connection; the pool must do the same, at once, free the capacity, and serve the
next checkout. Each close runs in a thread with a deadline, so a regression fails
the test instead of hanging the suite.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Any

import MySQLdb
import MySQLdb.cursors
import pytest

from .conftest import wait_for

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "mysql"])

#: How long a close() may take before the test calls it a hang. A close sends at
#: most one message and waits for nothing, so this is slack for a loaded machine.
DEADLINE = 20.0


def _in_thread(request: Callable[[], None]) -> dict[str, Any]:
    """Run *request* (which opens, starts an exchange and closes) in its own thread,
    as a request would, and fail if it has not finished within DEADLINE."""
    outcome: dict[str, Any] = {}
    done = threading.Event()

    def run() -> None:
        try:
            request()
        except BaseException as exc:  # reported below, in the test's thread
            outcome["error"] = exc
        finally:
            done.set()

    threading.Thread(target=run, name="dpb busy close", daemon=True).start()
    assert done.wait(DEADLINE), f"close() did not return within {DEADLINE} s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome


def _assert_discarded_and_replaced(pooled: Any, old_id: int) -> None:
    """The busy connection was closed (reason ``busy``), not pooled: its capacity
    is back, its server session ends, and the next checkout gets a working one."""
    stats = pooled.stats()
    assert stats["closed_by_reason"].get("busy") == 1, stats["closed_by_reason"]
    assert (stats["size"], stats["in_use"], stats["idle"]) == (0, 0, 0)
    wait_for(lambda: old_id not in pooled.server_sessions(), what="the busy session to end")
    wrapper = pooled.wrapper()  # max_size=1: only possible if the capacity came back
    assert pooled.backend_id(wrapper) != old_id
    with wrapper.cursor() as cursor:
        cursor.execute("SELECT 41 + 1")
        assert cursor.fetchone()[0] == 42
    wrapper.close()
    assert pooled.stats()["closed_by_reason"].get("busy") == 1


def test_close_inside_an_open_copy_discards_at_once(make_pooled, caplog):
    pooled = make_pooled("default", max_size=1)

    def request() -> None:
        wrapper = pooled.wrapper()
        outcome["id"] = pooled.backend_id(wrapper)
        psycopg_cursor = wrapper.cursor().cursor
        with contextlib.suppress(Exception):  # leaving the COPY on a closed connection
            with psycopg_cursor.copy("COPY (SELECT generate_series(1, 200000)) TO STDOUT") as copy:
                outcome["block"] = bytes(copy.read())
                wrapper.close()  # entered, not exited: psycopg holds its lock
                outcome["closed"] = True

    outcome: dict[str, Any] = {}
    with caplog.at_level(logging.WARNING, logger="django_poolbackend"):
        _in_thread(request)
    assert outcome["closed"] and outcome["block"].startswith(b"1\n")
    assert "discarding a connection (busy)" in caplog.text
    _assert_discarded_and_replaced(pooled, outcome["id"])


def test_close_inside_a_copy_from_stdin_discards_at_once(make_pooled):
    pooled = make_pooled("default", max_size=1)
    outcome: dict[str, Any] = {}

    def request() -> None:
        wrapper = pooled.wrapper()
        outcome["id"] = pooled.backend_id(wrapper)
        psycopg_cursor = wrapper.cursor().cursor
        psycopg_cursor.execute("CREATE TEMPORARY TABLE dpb_busy_copy (n int)")
        with contextlib.suppress(Exception):
            with psycopg_cursor.copy("COPY dpb_busy_copy (n) FROM STDIN") as copy:
                copy.write_row([1])
                wrapper.close()
                outcome["closed"] = True

    _in_thread(request)
    assert outcome["closed"]
    _assert_discarded_and_replaced(pooled, outcome["id"])


@pytest.mark.parametrize("queued", [False, True], ids=["empty", "queued"])
def test_close_inside_a_psycopg_pipeline_discards(make_pooled, queued):
    """A pipeline left entered: with a command queued libpq says ACTIVE; with none
    it says IDLE, but every later command on the connection would go through the
    pipeline, so it must not reach the next request either."""
    pooled = make_pooled("default", max_size=1)
    outcome: dict[str, Any] = {}

    def request() -> None:
        wrapper = pooled.wrapper()
        outcome["id"] = pooled.backend_id(wrapper)
        conn = wrapper.connection
        with contextlib.suppress(Exception):
            with conn.pipeline():
                if queued:
                    conn.execute("SELECT 1")
                wrapper.close()
                outcome["closed"] = True

    _in_thread(request)
    assert outcome["closed"]
    _assert_discarded_and_replaced(pooled, outcome["id"])


def test_close_with_an_unread_streaming_result_discards_without_out_of_sync(make_pooled, caplog):
    """An SSCursor (mysql_use_result) read halfway: the client library refuses every
    command until the rest is read. The connection must not be pooled (the next
    request would fail "Commands out of sync"), and no rollback may be tried on it
    (it would fail the same way: a 'reset failed' warning)."""
    pooled = make_pooled("mysql", max_size=1)
    outcome: dict[str, Any] = {}

    def request() -> None:
        wrapper = pooled.wrapper()
        outcome["id"] = pooled.backend_id(wrapper)
        streaming = wrapper.connection.cursor(MySQLdb.cursors.SSCursor)
        streaming.execute("SELECT seq FROM seq_1_to_200000")
        outcome["first"] = streaming.fetchone()
        wrapper.close()
        outcome["closed"] = True
        with contextlib.suppress(MySQLdb.Error):
            streaming.close()  # its connection is closed: nothing left to read

    with caplog.at_level(logging.WARNING, logger="django_poolbackend"):
        _in_thread(request)
    assert outcome["closed"] and outcome["first"] == (1,)
    assert "discarding a connection (busy)" in caplog.text
    assert "reset failed" not in caplog.text
    _assert_discarded_and_replaced(pooled, outcome["id"])


def test_close_with_a_multi_statement_result_still_to_come_discards(make_pooled, caplog):
    """Two statements in one call (mysqlclient allows it by default), the second
    result set never read: the server announced it (SERVER_MORE_RESULTS_EXISTS),
    so the connection is discarded without a rollback, and the next request does
    not receive the leftover result or "Commands out of sync"."""
    pooled = make_pooled("mysql", max_size=1)
    outcome: dict[str, Any] = {}

    def request() -> None:
        wrapper = pooled.wrapper()
        outcome["id"] = pooled.backend_id(wrapper)
        cursor = wrapper.connection.cursor()  # left open: nothing reads the rest
        cursor.execute("SELECT 1; SELECT 2")
        outcome["first"] = cursor.fetchall()
        wrapper.close()
        outcome["closed"] = True

    with caplog.at_level(logging.WARNING, logger="django_poolbackend"):
        _in_thread(request)
    assert outcome["closed"] and outcome["first"] == ((1,),)
    assert "discarding a connection (busy)" in caplog.text
    assert "reset failed" not in caplog.text
    _assert_discarded_and_replaced(pooled, outcome["id"])


def test_busy_is_a_listed_close_reason(make_pooled):
    """``pool_stats()`` lists every close reason (zeros included), busy among them."""
    from django_poolbackend.core.pool import CLOSE_REASONS
    from django_poolbackend.figures import pool_figures

    assert "busy" in CLOSE_REASONS
    pooled = make_pooled("mysql", max_size=1)
    wrapper = pooled.wrapper()
    wrapper.ensure_connection()
    wrapper.close()
    assert pool_figures(pooled.pool)["closed_by_reason"]["busy"] == 0


def test_a_streaming_result_read_to_its_end_is_pooled(make_pooled):
    """The check costs no false alarm: an SSCursor read to its end leaves the
    connection ready, and it is reused."""
    pooled = make_pooled("mysql", max_size=1)
    wrapper = pooled.wrapper()
    first = pooled.backend_id(wrapper)
    streaming = wrapper.connection.cursor(MySQLdb.cursors.SSCursor)
    streaming.execute("SELECT seq FROM seq_1_to_1000")
    assert len(streaming.fetchall()) == 1000
    wrapper.close()
    assert pooled.backend_id(wrapper) == first
    wrapper.close()
    assert "busy" not in pooled.stats()["closed_by_reason"]


def test_close_with_a_server_side_cursor_mid_fetch_is_prompt_and_pooled(make_pooled):
    """Django's chunked cursor (``iterator()``) outside a transaction is a WITH HOLD
    cursor: between two fetches the connection is idle and its lock free, so the
    return needs no special case. The cursor itself stays in the session under
    ``reset="rollback"`` (see tests/test_state_leakage.py)."""
    pooled = make_pooled("default", max_size=1)
    outcome: dict[str, Any] = {}

    def request() -> None:
        wrapper = pooled.wrapper()
        outcome["id"] = pooled.backend_id(wrapper)
        cursor = wrapper.chunked_cursor()
        cursor.execute("SELECT generate_series(1, 100000)")
        outcome["rows"] = cursor.fetchmany(10)
        wrapper.close()
        outcome["wrapper"] = wrapper
        outcome["cursor"] = cursor

    _in_thread(request)
    assert [row[0] for row in outcome["rows"]] == list(range(1, 11))
    stats = pooled.stats()
    assert stats["closed_by_reason"] == {} and (stats["idle"], stats["in_use"]) == (1, 0)
    wrapper = pooled.wrapper()
    assert pooled.backend_id(wrapper) == outcome["id"]
    wrapper.close()
