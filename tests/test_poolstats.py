"""manage.py poolstats and pooldrain against real Gunicorn workers, run the way an
operator runs them: in a separate process with the same settings."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import MySQLdb
import psycopg
import pytest
from django.db import connections

from .conftest import (
    MYSQL_POOL_USER,
    ROOT,
    RUN_TAG,
    Server,
    require_module,
    server_env,
    start_gunicorn,
    stop,
    wait_for,
)

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "mysql"])

SECRET = "dpb-h3-S3cret-pw-7f1c"
SECRET_ROLE = f"dpb_secret_role{RUN_TAG}"


def gunicorn(env: dict[str, str], log: Path, workers: int = 2) -> Server:
    return start_gunicorn("--workers", str(workers), env=env, log=log)


def manage(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "django", *args],
        cwd=ROOT,
        env=server_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def poolstats_json(env: dict[str, str], *args: str) -> dict[str, Any]:
    out = manage(env, "poolstats", "--json", *args)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def until_both_workers(server: Server, env: dict[str, str], alias: str) -> dict[str, Any]:
    """Drive concurrent traffic until poolstats shows a pool in each worker."""

    def both() -> dict[str, Any] | None:
        with ThreadPoolExecutor(6) as pool:
            list(pool.map(lambda _: server.get(f"/one/?alias={alias}"), range(12)))
        document = poolstats_json(env, "--database", alias)
        return document if len({r["pid"] for r in document["pools"]}) == 2 else None

    return wait_for(both, timeout=60, what="both workers' pools in poolstats", interval=0.2)


@pytest.fixture(scope="module")
def served(
    django_db_setup: Any, mysql_pool_user: None, tmp_path_factory: Any
) -> Iterator[tuple[Server, dict]]:
    tmp = tmp_path_factory.mktemp("poolstats")
    user, password = MYSQL_POOL_USER
    env = {
        "DJANGO_POOLBACKEND_STATS_DIR": str(tmp / "stats"),
        "DPB_APPLICATION_NAME": f"dpb-h3-{os.getpid()}",
        # Its own MySQL user, so the observer counts exactly the workers' sessions.
        "DPB_TEST_MYSQL_URL": f"mysql://{user}:{password}@127.0.0.1:3306/dpb_suite",
    }
    server = gunicorn(env, tmp / "gunicorn.log")
    yield server, env
    stop(server)


# -- what an operator sees -------------------------------------------------------


@pytest.fixture
def secret_role(django_db_setup: Any) -> Iterator[str]:
    admin = psycopg.connect(host="127.0.0.1", user="postgres", dbname="postgres", autocommit=True)
    admin.execute(f"DROP ROLE IF EXISTS {SECRET_ROLE}")
    admin.execute(f"CREATE ROLE {SECRET_ROLE} LOGIN PASSWORD '{SECRET}'")
    yield f"postgres://{SECRET_ROLE}:{SECRET}@127.0.0.1:5432/dpb_suite"
    admin.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
        (SECRET_ROLE,),
    )
    wait_for(
        lambda: (
            not admin.execute(
                "SELECT 1 FROM pg_stat_activity WHERE usename = %s", (SECRET_ROLE,)
            ).fetchone()
        ),
        what="the role's sessions to end",
    )
    admin.execute(f"DROP ROLE IF EXISTS {SECRET_ROLE}")
    admin.close()


def test_poolstats_reports_both_workers_and_never_the_password(
    secret_role: str, tmp_path: Path
) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from django_poolbackend.contrib.prometheus import PoolCollector

    log = tmp_path / "gunicorn.log"
    env = {
        "DJANGO_POOLBACKEND_STATS_DIR": str(tmp_path / "stats"),
        "DPB_TEST_PG_URL": secret_role,
        # Unset: the engine names sessions dpb:<alias>:<pid> itself.
        "DPB_APPLICATION_NAME": "",
    }
    server = gunicorn(env, log)
    outputs = []
    try:
        document = until_both_workers(server, env, "default")
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda _: server.get("/one/?alias=mysql"), range(8)))
        rows = document["pools"]
        pids = {r["pid"] for r in rows}
        assert pids <= {c.pid for c in _children(server.process.pid)}
        for row in rows:
            assert row["alias"] == "default" and row["user"] == SECRET_ROLE
            assert row["vendor"] == "postgresql" and row["max_size"] == 4
            assert 1 <= row["size"] <= 4 and row["checkouts"] >= 1
            assert row["connects"] >= 1 and row["connect_ms"]["count"] == row["connects"]
            assert row["in_use"] + row["idle"] == row["size"]
            assert 0 <= row["snapshot_age"] < 30
        assert document["totals"]["checkouts"] == sum(r["checkouts"] for r in rows)
        assert document["totals"]["processes"] == 2

        table = manage(env, "poolstats")
        assert table.returncode == 0, table.stderr
        lines = table.stdout.splitlines()
        # The first line names the directory read (issue 13.4); the table follows.
        assert lines[0] == f"Snapshots in {tmp_path / 'stats'}"
        assert max(len(line) for line in lines[1:]) <= 80
        assert lines[1].split()[:3] == ["PID", "ALIAS", "SIZE"]
        assert sum(1 for line in lines if line.split()[:1] in ([str(p)] for p in pids)) >= 2
        assert any(line.lstrip().startswith("total") for line in lines)

        server_view = manage(env, "poolstats", "--server", "--database", "default")
        assert server_view.returncode == 0, server_view.stderr
        for pid in pids:  # sessions attributed to their worker by application_name
            assert f"dpb:default:{pid}" in server_view.stdout
        registry = CollectorRegistry()
        registry.register(PoolCollector(tmp_path / "stats"))
        metrics = generate_latest(registry).decode()
        for pid in pids:
            assert f'pid="{pid}"' in metrics
        outputs += [
            json.dumps(document),
            table.stdout,
            table.stderr,
            server_view.stdout,
            server_view.stderr,
            metrics,
        ]
        outputs += [p.read_text() for p in (tmp_path / "stats").glob("*.json")]
    finally:
        stop(server)
    outputs.append(log.read_text())
    for text in outputs:
        assert SECRET not in text
    # The workers are gone: so are their rows.
    after = poolstats_json(env)
    assert after["pools"] == [] and after["totals"]["processes"] == 0


def _children(pid: int) -> list[Any]:
    class P:
        def __init__(self, pid: int) -> None:
            self.pid = pid

    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    data = f.read()
            except OSError:
                continue
            if int(data[data.rindex(")") + 2 :].split()[1]) == pid:
                out.append(P(int(entry)))
    return out


def test_bad_input_is_a_clear_error(tmp_path: Path) -> None:
    env = {"DJANGO_POOLBACKEND_STATS_DIR": str(tmp_path)}
    out = manage(env, "poolstats", "--database", "nope")
    assert out.returncode != 0
    assert "'nope' is not a database alias; pooled aliases: default, mysql" in out.stderr
    out = manage(env, "pooldrain", "--database", "stock_pg")
    assert out.returncode != 0 and "not a pooled database" in out.stderr
    out = manage(env, "poolstats", "--watch", "0")
    assert out.returncode != 0 and "--watch takes a number of seconds > 0" in out.stderr
    out = manage(env, "poolstats", "--help")
    assert "--watch SECONDS" in out.stdout and "Refresh every SECONDS" in out.stdout


#: poolstats --watch with SIGINT's default action restored (Python then turns it
#: into KeyboardInterrupt), whatever the test run inherited: started from
#: ``nohup … &`` or a non-interactive shell's ``&``, SIGINT arrives ignored.
WATCH_WITH_SIGINT = (
    "import signal, sys\n"
    "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
    "from django.core.management import execute_from_command_line\n"
    "execute_from_command_line(['django', 'poolstats', '--watch', '0.2'])\n"
)


def test_watch_redraws_in_a_terminal(tmp_path: Path) -> None:
    master, slave = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "django", "poolstats", "--watch", "0.2"],
        cwd=ROOT,
        env=server_env(DJANGO_POOLBACKEND_STATS_DIR=str(tmp_path)),
        stdin=slave,
        stdout=slave,
        stderr=slave,
    )
    os.close(slave)
    seen = b""
    try:
        deadline = time.monotonic() + 60
        while seen.count(b"\x1b[H\x1b[2J") < 2:
            assert time.monotonic() < deadline, seen
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    seen += os.read(master, 4096)
                except OSError:
                    break
        # SIGTERM (what a supervisor or `kill` sends): its handler is the
        # command's own, so the test doesn't depend on what it inherited.
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(master)
    assert seen.count(b"\x1b[H\x1b[2J") >= 2
    assert b"PID ALIAS" in seen and b"Traceback" not in seen


def test_watch_without_a_terminal_repeats_plain_output(tmp_path: Path) -> None:
    """Stopped by Ctrl-C's SIGINT, restored to its default action in the child so
    the test does not depend on the disposition the run inherited."""
    process = subprocess.Popen(
        [sys.executable, "-c", WATCH_WITH_SIGINT],
        cwd=ROOT,
        env=server_env(DJANGO_POOLBACKEND_STATS_DIR=str(tmp_path)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    lines: list[bytes] = []
    # A daemon: should the command hang, a failed test must not keep pytest alive.
    reader = threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True)  # type: ignore[arg-type]
    reader.start()
    try:
        wait_for(
            lambda: sum(line.startswith(b"-- ") for line in lines) >= 2,
            timeout=60,
            what="two refreshes",
            interval=0.05,
        )
        process.send_signal(signal.SIGINT)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    reader.join(30)
    assert not any(b"\x1b[" in line for line in lines)
    assert process.stderr is not None and b"Traceback" not in process.stderr.read()


def test_watch_started_with_sigint_ignored_stops_on_sigterm(tmp_path: Path) -> None:
    """A job started in the background (``nohup … &``) inherits SIGINT ignored:
    --watch keeps ignoring it, as such a job is meant to, and stops cleanly on
    SIGTERM, status 0, without a traceback."""
    process = subprocess.Popen(
        # The shell's trap makes the command inherit SIGINT ignored, as `&` does.
        ["sh", "-c", 'trap "" INT; exec "$0" -m django poolstats --watch 0.2', sys.executable],
        cwd=ROOT,
        env=server_env(DJANGO_POOLBACKEND_STATS_DIR=str(tmp_path)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    lines: list[bytes] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True)  # type: ignore[arg-type]
    reader.start()

    def refreshes() -> int:
        return sum(line.startswith(b"-- ") for line in list(lines))

    try:
        wait_for(lambda: refreshes() >= 1, timeout=60, what="a first refresh", interval=0.05)
        process.send_signal(signal.SIGINT)
        # Still refreshing after the SIGINT: ignored, as inherited.
        after = refreshes()
        wait_for(lambda: refreshes() > after + 1, timeout=60, what="refreshes after SIGINT",
                 interval=0.05)
        assert process.poll() is None
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    reader.join(30)
    assert process.stderr is not None
    err = process.stderr.read()
    assert b"Traceback" not in err, err


def _open_transaction(vendor: str) -> Any:
    sd = connections[vendor].settings_dict
    if vendor == "default":
        conn = psycopg.connect(host=sd["HOST"], port=sd["PORT"], user=sd["USER"], dbname=sd["NAME"])
        conn.execute("SELECT 1")  # psycopg opened a transaction: left open
    else:
        conn = MySQLdb.connect(
            host=sd["HOST"], port=int(sd["PORT"]), user=sd["USER"], database=sd["NAME"]
        )
        conn.cursor().execute("START TRANSACTION WITH CONSISTENT SNAPSHOT")
    return conn


def test_server_view_lists_a_session_idle_in_transaction(vendor: str, tmp_path: Path) -> None:
    env = {"DJANGO_POOLBACKEND_STATS_DIR": str(tmp_path)}
    conn = _open_transaction(vendor)
    try:

        def seen() -> dict | None:
            view = poolstats_json(env, "--server", "--database", vendor)["server"][vendor]
            return view if view["totals"]["idle_in_transaction"] >= 1 else None

        view = wait_for(seen, timeout=30, what="the open transaction", interval=0.3)
        assert view["max_connections"] > 0
        text = manage(env, "poolstats", "--server", "--database", vendor)
        assert "IN-TRX" in text.stdout and "max_connections" in text.stdout
        assert max(len(line) for line in text.stdout.splitlines()) <= 80
    finally:
        conn.close()


def test_server_view_connects_through_the_connect_params_hook(
    mysql_pool_user: None, tmp_path: Path
) -> None:
    """Credentials that only the hook supplies (settings without the password, as
    with short-lived tokens) are good enough for --server too."""
    user, password = MYSQL_POOL_USER
    url = f"mysql://{user}@127.0.0.1:3306/dpb_suite"
    hook = "connect_params=tests.connect_hooks.pool_user_password"
    env = {"DJANGO_POOLBACKEND_STATS_DIR": str(tmp_path)}
    sd = connections["mysql"].settings_dict
    # A session of that account, which the server view must count as its own.
    other = MySQLdb.connect(
        host=sd["HOST"], port=int(sd["PORT"]), user=user, password=password, database=sd["NAME"]
    )
    try:
        without = poolstats_json({**env, "DPB_TEST_MYSQL_URL": url}, "--server")
        assert "Access denied" in without["server"]["mysql"]["error"]
        view = poolstats_json({**env, "DPB_TEST_MYSQL_URL": f"{url}?{hook}"}, "--server")
        mine = view["server"]["mysql"]
        assert "error" not in mine, mine
        # The view counts the sessions of the account it logged in as: the hook's.
        assert [g["name"] for g in mine["sessions"]] == [f"{user}@{sd['NAME']}"]
        assert mine["totals"]["idle"] >= 1 and mine["max_connections"] > 0
        assert password not in json.dumps(view)
    finally:
        other.close()


def test_a_composed_engine_is_listed_drained_and_counted(tmp_path: Path) -> None:
    """A backend composed with the mixin in a module of its own (ENGINE
    'tests.composed_prometheus') is a pooled alias for poolstats and pooldrain."""
    require_module("django_prometheus", "django-prometheus", "pip install django-prometheus")
    code = """
import io, json
import django
django.setup()
from django.core.management import call_command
from django.db import connections
from django_poolbackend import publish

def command(*args):
    out = io.StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()

with connections["composed"].cursor() as cursor:
    cursor.execute("SELECT pg_backend_pid()")
    backend = cursor.fetchone()[0]
connections["composed"].close()
publish.publish(force=True)
listed = json.loads(command("poolstats", "--json"))
drained = command("pooldrain", "--database", "composed", "--wait", "30")
after = json.loads(command("poolstats", "--json", "--database", "composed"))
print(json.dumps({"listed": listed, "drained": drained, "after": after}))
"""
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=server_env(
            DJANGO_SETTINGS_MODULE="tests.composed_settings",
            DJANGO_POOLBACKEND_STATS_DIR=str(tmp_path),
        ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    (row,) = [r for r in out["listed"]["pools"] if r["alias"] == "composed"]
    assert (row["vendor"], row["checkouts"], row["connects"]) == ("postgresql", 1, 1)
    assert "composed" in out["listed"]["drains"]
    assert "Drain 1 of 'composed' requested" in out["drained"]
    assert "Every process has retired its older connections." in out["drained"]
    (row,) = out["after"]["pools"]
    assert row["closed_by_reason"]["drained"] == 1 and row["size"] == 0
    assert out["after"]["drains"]["composed"]["generation"] == 1
    # The stock alias beside it is still not a pool.
    env = {
        "DJANGO_SETTINGS_MODULE": "tests.composed_settings",
        "DJANGO_POOLBACKEND_STATS_DIR": str(tmp_path),
    }
    stock = manage(env, "poolstats", "--database", "stock_pg")
    assert stock.returncode != 0
    assert "pooled aliases: default, mysql, composed" in stock.stderr


# -- pooldrain -----------------------------------------------------------------------


def _sessions(vendor: str, app: str) -> set[int]:
    sd = connections[vendor].settings_dict
    if vendor == "default":
        with psycopg.connect(host=sd["HOST"], user="postgres", dbname="postgres") as conn:
            rows = conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (app,)
            ).fetchall()
    else:
        conn = MySQLdb.connect(host=sd["HOST"], port=int(sd["PORT"]), user="root")
        try:
            cursor = conn.cursor()
            cursor.execute(
                "SELECT id FROM information_schema.processlist WHERE db = %s AND user = %s",
                (sd["NAME"], MYSQL_POOL_USER[0]),
            )
            rows = cursor.fetchall()
        finally:
            conn.close()
    return {row[0] for row in rows}


def test_pooldrain_under_load_retires_every_session(
    served: tuple[Server, dict], vendor: str
) -> None:
    server, env = served
    until_both_workers(server, env, vendor)
    app = env["DPB_APPLICATION_NAME"]
    results = {"ok": 0, "failed": 0}
    seen_after: set[int] = set()
    drained = threading.Event()
    stop_load = threading.Event()
    lock = threading.Lock()

    def client() -> None:
        while not stop_load.is_set():
            try:
                with urllib.request.urlopen(f"{server.url}/one/?alias={vendor}", timeout=30) as r:
                    backend = json.loads(r.read())["backend"]
                with lock:
                    results["ok"] += 1
                    if drained.is_set():
                        seen_after.add(backend)
            except Exception:
                with lock:
                    results["failed"] += 1

    clients = [threading.Thread(target=client) for _ in range(3)]
    for thread in clients:
        thread.start()
    try:
        wait_for(lambda: results["ok"] >= 20, timeout=60, what="steady load")
        before = _sessions(vendor, app)
        assert before
        out = manage(env, "pooldrain", "--database", vendor)
        assert out.returncode == 0, out.stderr
        drained.set()
        started = time.monotonic()
        wait_for(
            lambda: not (before & _sessions(vendor, app)),
            timeout=2.0,
            what="every pre-drain session to close",
            interval=0.05,
        )
        took = time.monotonic() - started
        with lock:
            seen_after.clear()
        wait_for(lambda: len(seen_after) >= 1, timeout=30, what="requests on new sessions")
    finally:
        stop_load.set()
        for thread in clients:
            thread.join(60)
    assert not (seen_after & before)
    assert results["failed"] == 0 and results["ok"] > 20

    # Progress as poolstats shows it: the next snapshots say the drain is done.
    def done() -> bool:
        drain = poolstats_json(env, "--database", vendor)["drains"][vendor]
        assert drain["generation"] >= 1
        return drain["connections_pending"] == 0 and drain["processes_applied"] == 2

    wait_for(done, timeout=30, what="poolstats to show the drain complete", interval=0.3)
    print(f"drain of {vendor}: old sessions gone {took:.2f} s after pooldrain returned")


def test_pooldrain_says_where_it_looked_and_fails_when_it_reached_no_process(
    tmp_path: Path,
) -> None:
    """Issue 13.4: two Gunicorn workers publish in the default place (under their
    TMPDIR, no XDG_RUNTIME_DIR); an operator whose shell has XDG_RUNTIME_DIR set
    looks elsewhere. pooldrain then names the directory it used and fails, naming
    the likely cause, instead of reporting success; with the workers' environment
    it says how many processes it reached, and they really applied the drain."""
    base = tmp_path / "tmp"
    base.mkdir(mode=0o700)
    runtime = tmp_path / "run-user"
    runtime.mkdir(mode=0o700)
    # The service's environment: no explicit directory, no XDG_RUNTIME_DIR.
    env = {"TMPDIR": str(base), "XDG_RUNTIME_DIR": "", "DJANGO_POOLBACKEND_STATS_DIR": ""}
    operator = {**env, "XDG_RUNTIME_DIR": str(runtime)}
    server = gunicorn(env, tmp_path / "gunicorn.log")
    try:
        document = until_both_workers(server, env, "default")
        workers_dir = Path(document["stats_dir"])
        assert workers_dir.parent == base / f"django_poolbackend-{os.getuid()}"
        assert document["drains"]["default"]["generation"] == 0

        # The operator's shell: another directory, and no process in it.
        table = manage(operator, "poolstats", "--database", "default")
        assert table.returncode == 0, table.stderr
        lines = table.stdout.splitlines()
        assert lines[0].startswith(f"Snapshots in {runtime / 'django_poolbackend'}/")
        assert "(no live pools" in table.stdout
        elsewhere = Path(lines[0].removeprefix("Snapshots in "))
        assert elsewhere != workers_dir
        for args in (["--wait", "3"], []):
            out = manage(operator, "pooldrain", "--database", "default", *args)
            assert out.returncode != 0, (args, out.stdout)
            assert f"Statistics directory: {elsewhere}" in out.stdout
            assert "Every process has retired" not in out.stdout
            assert "Traceback" not in out.stderr
            message = " ".join(out.stderr.split())
            assert (
                f"The drain reached no process: no process publishes a pool of 'default' in "
                f"{elsewhere}." in message
            ), message
            assert "XDG_RUNTIME_DIR, TMPDIR and the settings module" in message
            assert f"XDG_RUNTIME_DIR={runtime}" in message and f"TMPDIR={base}" in message
            assert "DJANGO_SETTINGS_MODULE=tests.settings" in message
        # Nothing reached the workers.
        after = poolstats_json(env, "--database", "default")
        assert after["drains"]["default"]["generation"] == 0
        assert all(row["drains"] == 0 for row in after["pools"])

        # The workers' environment: both reached, both applied it.
        out = manage(env, "pooldrain", "--database", "default", "--wait", "30")
        assert out.returncode == 0, out.stdout + out.stderr
        assert out.stdout.splitlines() == [
            "Drain 1 of 'default' requested: processes retire their connections within "
            "about a second.",
            f"Statistics directory: {workers_dir}",
            "Every process has retired its older connections.",
            "Processes reached: 2 ('default': 2); each applied it.",
        ]
        drained = poolstats_json(env, "--database", "default")
        assert drained["drains"]["default"] == {
            "generation": 1, "processes_applied": 2, "processes": 2, "connections_pending": 0,
        }
        assert sorted(row["drains"] for row in drained["pools"]) == [1, 1]
        table = manage(env, "poolstats", "--database", "default")
        assert table.stdout.splitlines()[0] == f"Snapshots in {workers_dir}"
    finally:
        stop(server)
