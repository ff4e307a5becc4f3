"""Server facts (django_poolbackend.introspect): the system checks and
``poolstats --server`` read them in one place, so they name the same limit; and
the one reader of ``/proc/<pid>/stat`` the snapshot readers use."""

from __future__ import annotations

import ast
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.management import call_command
from django.db import connections

from django_poolbackend import checks, introspect, publish, snapshots

from .conftest import ROOT, wait_for
from .test_checks import server_limit as independent_limit

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "mysql"])


def server_view(alias: str) -> dict:
    out = io.StringIO()
    call_command("poolstats", "--json", "--server", "--database", alias, stdout=out)
    view: dict = json.loads(out.getvalue())["server"][alias]
    assert "error" not in view, view
    return view


@pytest.mark.parametrize("alias", ["default", "mysql"])
def test_checks_and_poolstats_report_the_same_limit(alias, monkeypatch, tmp_path):
    """The limit W002 compares with is the one ``poolstats --server`` shows, and
    both take PostgreSQL's reserved connections off max_connections."""
    monkeypatch.setenv("DJANGO_POOLBACKEND_STATS_DIR", str(tmp_path))
    limit = independent_limit(alias)
    # One process per connection the server allows, 4 connections each: W002.
    monkeypatch.setenv("WEB_CONCURRENCY", str(limit))
    messages = checks.server_messages(alias, connections[alias].settings_dict)
    (w002,) = [m for m in messages if m.id == "django_poolbackend.W002"]
    found = re.search(r"the server allows (\d+) \(", w002.msg)
    assert found is not None, w002.msg
    checked = int(found.group(1))

    view = server_view(alias)
    assert checked == limit
    assert view["connection_limit"] == limit
    if connections[alias].vendor == "postgresql":
        assert view["max_connections"] - view["superuser_reserved_connections"] - (
            view["reserved_connections"]
        ) == limit
    else:
        assert view["max_connections"] == limit
    text = io.StringIO()
    call_command("poolstats", "--server", "--database", alias, stdout=text)
    assert f"  {limit} usable by this application: the limit W002 checks." in text.getvalue()


def test_server_limits_on_a_connection_of_its_own():
    """server_limits() reads PostgreSQL's settings, leaves no transaction open, and
    tells a direct connection from one through a proxy."""
    wrapper = connections["default"]
    conn = wrapper.get_new_connection(wrapper.get_connection_params())
    try:
        facts = introspect.server_limits(conn, "postgresql")
        assert facts["proxied"] is False
        assert facts["connection_limit"] == independent_limit("default")
        assert facts["limits"][0][0] == facts["connection_limit"]
        # The query's transaction was ended: the session is idle, not in one.
        assert conn.info.transaction_status.name == "IDLE"
    finally:
        conn.close()


def test_behind_proxy_by_pid_or_by_version():
    assert introspect.behind_proxy(10, 10) is False
    assert introspect.behind_proxy(10, 11) is True
    assert introspect.behind_proxy(None, 11) is False
    assert introspect.behind_proxy(10, 10, "1.22.0 (PgBouncer)") is True


def test_introspect_imports_nothing_from_django():
    """The module only runs queries on a connection it is given, so the driver
    code may use it without importing Django."""
    tree = ast.parse((ROOT / "django_poolbackend" / "introspect.py").read_text())
    imported = [
        alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
        for alias in node.names
    ] + [
        node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
    ]
    assert not [name for name in imported if name.split(".")[0] == "django"], imported
    assert not [
        node for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level
    ]


def test_proc_stat_survives_a_command_name_with_a_parenthesis(tmp_path: Path):
    """A process may name itself anything, ")" and a state letter included: the
    reader still finds its state and start time, and sees it become a zombie."""
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; open('/proc/self/comm', 'w').write('x) Z 1 2'); "
            "print('named', flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == "named\n"
        assert Path(f"/proc/{child.pid}/comm").read_text() == "x) Z 1 2\n"
        assert snapshots._alive(child.pid) is True
        started = publish.start_time(child.pid)
        mine = publish.start_time(os.getpid())
        assert isinstance(started, int) and isinstance(mine, int) and started >= mine
        assert child.stdin is not None
        child.stdin.close()
        # Not reaped yet (nobody waits for it): a zombie, which serves nothing.
        wait_for(lambda: not snapshots._alive(child.pid), what="the child to exit")
        assert publish.proc_stat(child.pid) is not None
    finally:
        child.kill()
        child.wait()


def test_the_commands_share_the_document_not_each_other():
    """pooldrain reads the document poolstats prints from django_poolbackend.snapshots,
    so neither command imports the other."""
    commands = ROOT / "django_poolbackend" / "management" / "commands"
    for name, other in (("pooldrain", "poolstats"), ("poolstats", "pooldrain")):
        tree = ast.parse((commands / f"{name}.py").read_text())
        modules = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        assert "snapshots" in modules, modules
        assert other not in modules, modules
