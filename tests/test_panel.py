"""The debug-toolbar panel, tested the way django-debug-toolbar tests its own panels:
build a toolbar for a request, run the panel, generate its stats, reload them from
the toolbar's store, render the content and validate the HTML. Real servers."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from typing import Any

import html5lib
import pytest
from django.core.signals import request_finished
from django.db import connections
from django.http import HttpResponse
from django.test import RequestFactory, override_settings

from django_poolbackend.toolbar import recorder

from .conftest import MYSQL_POOL_USER, ROOT, require_module

# At import, where a failure is a collection error under CI (require_module).
require_module("debug_toolbar", "django-debug-toolbar", "the dev extra installs it")

pytestmark = [
    # transaction=True: no test transaction around the view, so the panel sees the
    # real checkouts and returns (and the suite sets up both test databases).
    pytest.mark.django_db(transaction=True, databases=["default", "mysql"]),
    pytest.mark.usefixtures("toolbar_settings"),
]

BACKEND_ID_SQL = {"postgresql": "SELECT pg_backend_pid()", "mysql": "SELECT CONNECTION_ID()"}
rf = RequestFactory()


@pytest.fixture
def toolbar_settings() -> Any:
    """The toolbar installed (its store module defines a model, so the app must be)
    with only our panel."""
    from django.conf import settings

    # Two steps: the toolbar's ready() reads STATIC_URL while the apps are set up,
    # before the other settings of the same override apply.
    with override_settings(
        DEBUG=True,
        DEBUG_TOOLBAR_PANELS=["django_poolbackend.panels.PoolPanel"],
        STATIC_URL="static/",
        TEMPLATES=[
            {"BACKEND": "django.template.backends.django.DjangoTemplates", "APP_DIRS": True}
        ],
    ), override_settings(INSTALLED_APPS=[*settings.INSTALLED_APPS, "debug_toolbar"]):
        yield


def assert_valid_html(content: str) -> None:
    parser = html5lib.HTMLParser()
    parser.parseFragment(content)
    problems = [
        html5lib.constants.E[code] % data for _position, code, data in parser.errors
    ]
    assert not problems, f"invalid HTML: {problems}\n{content}"


def run_request(view: Any) -> Any:
    """One request through a toolbar with the pool panel, as the toolbar's
    middleware runs it: instrumentation on, the view, instrumentation off, stats."""
    from debug_toolbar.toolbar import DebugToolbar

    request = rf.get("/")
    toolbar = DebugToolbar(request, view)
    panel = toolbar.get_panel_by_id("PoolPanel")
    assert panel.enabled
    panel.enable_instrumentation()
    try:
        response = toolbar.process_request(request)
    finally:
        panel.disable_instrumentation()
    panel.generate_stats(request, response)
    return toolbar


def reloaded(toolbar: Any) -> Any:
    from debug_toolbar.toolbar import DebugToolbar

    stored = DebugToolbar.fetch(toolbar.request_id, "PoolPanel")
    assert stored is not None
    panel = stored.get_panel_by_id("PoolPanel")
    assert panel.from_store
    return panel


def query_view(wrapper: Any, ids: list[int], *, leave_transaction: bool = False) -> Any:
    def view(request: Any) -> HttpResponse:
        if leave_transaction:
            # Left open on purpose: the pool must roll it back on return.
            wrapper.set_autocommit(False)
        with wrapper.cursor() as cursor:
            cursor.execute(BACKEND_ID_SQL[wrapper.vendor])
            ids.append(cursor.fetchone()[0])
        return HttpResponse("<html><body><p>ok</p></body></html>")

    return view


def test_panel_records_checkouts_and_replays_from_the_store(make_pooled, vendor):
    pooled = make_pooled(vendor, max_size=2, pre_ping=True)
    wrapper = pooled.wrapper()
    ids: list[int] = []

    # 1: a new physical connection.
    toolbar = run_request(query_view(wrapper, ids))
    live = toolbar.get_panel_by_id("PoolPanel")
    assert live.nav_subtitle == "1 checkout, 1 new connection"
    wrapper.close()  # what Django's request_finished does, after the toolbar ran
    panel = reloaded(toolbar)
    stats = panel.get_stats()
    (row,) = [r for r in stats["requests"] if r["alias"] == pooled.alias]
    assert row["checkouts"] == 1
    assert row["new_connections"] == 1
    assert row["connect_ms"] > 0
    assert row["pings"] == 0
    assert row["server_ids"] == [ids[0]]
    # The late return reached the stored data.
    assert row["returns"] == 1
    assert row["resets"] == 0
    assert row["events"][0]["new"] is True
    assert row["events"][0]["hold_ms"] is not None
    assert panel.nav_subtitle == "1 checkout, 1 new connection"
    content = panel.content
    assert_valid_html(content)
    assert str(ids[0]) in content
    assert pooled.alias in content
    (pool,) = [p for p in stats["pools"] if p["alias"] == pooled.alias]
    assert pool["figures"]["checkouts"] == 1
    assert pool["figures"]["connects"] == 1
    assert pool["figures"]["in_use"] == 0  # refreshed by the late return

    # 2: the same connection again, pinged (pre_ping=True) and rolled back on return.
    toolbar = run_request(query_view(wrapper, ids, leave_transaction=True))
    assert toolbar.get_panel_by_id("PoolPanel").nav_subtitle == "1 checkout, 0 new connections"
    wrapper.close()
    stats = reloaded(toolbar).get_stats()
    (row,) = [r for r in stats["requests"] if r["alias"] == pooled.alias]
    assert ids[1] == ids[0]
    assert row == {
        **row,
        "checkouts": 1,
        "new_connections": 0,
        "connect_ms": 0.0,
        "pings": 1,
        "ping_failures": 0,
        "returns": 1,
        "resets": 1,
        "discarded": 0,
        "server_ids": [ids[0]],
    }
    assert row["events"][0]["reset"] is True
    assert pooled.stats()["pings"] == 1
    assert_valid_html(reloaded(toolbar).content)
    # Nothing stays live once the request's connections are back.
    assert recorder.active == 0


def test_several_checkouts_in_one_request_and_the_stored_json(make_pooled, vendor):
    pooled = make_pooled(vendor, max_size=2)
    wrapper = pooled.wrapper()
    ids: list[int] = []

    def view(request: Any) -> HttpResponse:
        for _ in range(3):
            with wrapper.cursor() as cursor:
                cursor.execute(BACKEND_ID_SQL[wrapper.vendor])
                ids.append(cursor.fetchone()[0])
            wrapper.close()
        return HttpResponse("<html><body></body></html>")

    toolbar = run_request(view)
    assert toolbar.get_panel_by_id("PoolPanel").nav_subtitle == "3 checkouts, 1 new connection"
    # The store keeps JSON: what was recorded survives a round trip unchanged.
    raw = toolbar.store.panel(toolbar.request_id, "PoolPanel")
    assert json.loads(json.dumps(raw)) == raw
    (row,) = [r for r in raw["requests"] if r["alias"] == pooled.alias]
    assert row["checkouts"] == 3 and row["returns"] == 3
    assert [e["new"] for e in row["events"]] == [True, False, False]
    assert row["server_ids"] == [ids[0]] and len(set(ids)) == 1
    assert recorder.active == 0


def test_real_alias_returned_at_request_finished():
    """The settings' own alias, returned by Django's request_finished handler."""
    connection = connections["default"]
    connection.close()
    ids: list[int] = []
    toolbar = run_request(query_view(connection, ids))
    assert connection.connection is not None  # still checked out after the toolbar
    request_finished.send(sender=None)
    assert connection.connection is None
    stats = reloaded(toolbar).get_stats()
    (row,) = [r for r in stats["requests"] if r["alias"] == "default"]
    assert row["checkouts"] == 1
    assert row["returns"] == 1
    assert row["server_ids"] == ids
    (pool,) = [p for p in stats["pools"] if p["alias"] == "default"]
    assert pool["config"]["max_size"] == 4
    assert ["max_size", "4"] in [row[:2] for row in pool["config_rows"]] + [
        row[2:] for row in pool["config_rows"]
    ]
    assert dict(pool["identity_rows"])["engine"] == "django_poolbackend.postgresql"
    assert_valid_html(reloaded(toolbar).content)


def test_password_never_reaches_the_panel(make_pooled):
    pooled = make_pooled("mysql", max_size=1)
    assert pooled.settings_dict["PASSWORD"] == MYSQL_POOL_USER[1]
    wrapper = pooled.wrapper()
    toolbar = run_request(query_view(wrapper, []))
    wrapper.close()
    panel = reloaded(toolbar)
    stored = json.dumps(toolbar.store.panel(toolbar.request_id, "PoolPanel"))
    assert pooled.alias in stored
    for text in (stored, panel.content, panel.nav_subtitle):
        assert MYSQL_POOL_USER[1] not in text


def test_other_threads_and_unrecorded_requests_stay_out(make_pooled):
    pooled = make_pooled("default", max_size=2)
    mine = pooled.wrapper()
    other_done = threading.Event()

    def other_thread() -> None:
        theirs = pooled.wrapper()
        with theirs.cursor() as cursor:  # checked out while a recorder is live
            cursor.execute("SELECT 1")
        theirs.close()
        other_done.set()

    def view(request: Any) -> HttpResponse:
        assert recorder.active == 1
        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join(60)
        with mine.cursor() as cursor:
            cursor.execute("SELECT 1")
        return HttpResponse("<html><body></body></html>")

    toolbar = run_request(view)
    assert other_done.is_set()
    mine.close()
    (row,) = [r for r in reloaded(toolbar).get_stats()["requests"] if r["alias"] == pooled.alias]
    assert row["checkouts"] == 1
    assert pooled.stats()["checkouts"] == 2
    # With no panel recording, a checkout leaves no trace on the wrapper.
    assert recorder.active == 0
    with mine.cursor() as cursor:
        cursor.execute("SELECT 1")
    assert "_dpb_recording" not in mine.__dict__
    mine.close()


def test_async_request_records_sync_to_async_queries(make_pooled):
    """Under ASGI the toolbar runs in a task and the ORM in sync_to_async threads:
    the recorder set around the request must reach them."""
    from asgiref.sync import async_to_sync, sync_to_async
    from debug_toolbar.toolbar import DebugToolbar

    pooled = make_pooled("default", max_size=1)
    ids: list[int] = []

    def query() -> None:
        wrapper = pooled.wrapper()  # made in the thread that uses it
        with wrapper.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            ids.append(cursor.fetchone()[0])
        wrapper.close()

    async def view(request: Any) -> HttpResponse:
        await sync_to_async(query)()
        return HttpResponse("<html><body></body></html>")

    async def run() -> Any:
        request = rf.get("/")
        toolbar = DebugToolbar(request, view)
        panel = toolbar.get_panel_by_id("PoolPanel")
        panel.enable_instrumentation()
        try:
            response = await toolbar.process_request(request)
        finally:
            panel.disable_instrumentation()
        panel.generate_stats(request, response)
        return toolbar

    toolbar = async_to_sync(run)()
    (row,) = [r for r in reloaded(toolbar).get_stats()["requests"] if r["alias"] == pooled.alias]
    assert row["checkouts"] == 1 and row["returns"] == 1
    assert row["server_ids"] == ids
    assert recorder.active == 0


def test_a_request_without_pooled_queries():
    toolbar = run_request(lambda request: HttpResponse("<html><body></body></html>"))
    panel = reloaded(toolbar)
    # An empty record reloads as "not enabled": the toolbar treats {} as no data,
    # so the panel always records the pool snapshot too.
    assert panel.get_stats()["checkouts"] == 0
    assert panel.nav_subtitle == "0 checkouts, 0 new connections"
    content = panel.content
    assert_valid_html(content)
    assert "did not use a pooled connection" in content
    assert [p["alias"] for p in panel.get_stats()["pools"]][:2] == ["default", "mysql"]


def test_importing_the_package_does_not_need_the_toolbar():
    code = (
        "import sys; sys.modules['debug_toolbar'] = None\n"
        "import django_poolbackend, django_poolbackend.toolbar.recorder\n"
        "try:\n"
        "    import django_poolbackend.panels\n"
        "except ImportError as exc:\n"
        "    print('ImportError:', exc)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "pip install 'django-poolbackend[debug-toolbar]'" in result.stdout


def test_panel_check_needs_the_app_installed():
    from django_poolbackend.panels import PoolPanel

    assert PoolPanel.run_checks() == []
    with override_settings(INSTALLED_APPS=["django.contrib.contenttypes"]):
        (error,) = PoolPanel.run_checks()
    assert error.id == "django_poolbackend.E005"


def test_checkout_cost_when_no_panel_records(make_pooled):
    """The instrumentation's whole cost when inactive is one attribute read per
    checkout and return: nothing is allocated or marked."""
    pooled = make_pooled("default", max_size=1)
    wrapper = pooled.wrapper()
    assert recorder.active == 0
    for _ in range(200):
        wrapper.ensure_connection()
        wrapper.close()
    assert "_dpb_recording" not in wrapper.__dict__
    assert pooled.stats()["checkouts"] == 200
