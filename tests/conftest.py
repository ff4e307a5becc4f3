"""Fixtures: private pools on the real servers, an observer that asks the server what
it sees, and a Gunicorn serving the testproject against the test databases."""

from __future__ import annotations

import copy
import itertools
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import MySQLdb
import psycopg
import pytest
from django.db import connections

from django_poolbackend import registry

ROOT = Path(__file__).resolve().parent.parent
MYSQL_POOL_USER = ("dpb_pool", "dpb_pool_pw")
VENDOR_ALIASES = ["default", "mysql"]

_numbers = itertools.count()


def wait_for(
    predicate: Callable[[], Any],
    timeout: float = 10.0,
    what: str = "",
    interval: float = 0.01,
) -> Any:
    """Poll until *predicate* returns something truthy, or fail after *timeout*."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def mysql_aborted_clients() -> int:
    """MariaDB's count of clients that went away without COM_QUIT (server-global)."""
    conn = MySQLdb.connect(host="127.0.0.1", user="root")
    try:
        cursor = conn.cursor()
        cursor.execute("SHOW GLOBAL STATUS LIKE 'Aborted_clients'")
        return int(cursor.fetchone()[1])
    finally:
        conn.close()


class Observer:
    """A plain driver connection, outside Django and the pool, asking the server."""

    def __init__(self, settings_dict: dict) -> None:
        self.vendor = "postgresql" if "postgresql" in settings_dict["ENGINE"] else "mysql"
        self.database = settings_dict["NAME"]
        if self.vendor == "postgresql":
            self.conn = psycopg.connect(
                host=settings_dict["HOST"],
                port=settings_dict["PORT"],
                user="postgres",
                dbname=self.database,
                autocommit=True,
            )
        else:
            self.conn = MySQLdb.connect(
                host=settings_dict["HOST"],
                port=int(settings_dict["PORT"]),
                user="root",
                database=self.database,
                autocommit=True,
            )

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        cursor = self.conn.cursor()
        try:
            cursor.execute(sql, params)
            return list(cursor.fetchall())
        finally:
            cursor.close()

    def close(self) -> None:
        self.conn.close()


class Pooled:
    """Wrappers on a private alias, so each test has a pool of its own.

    PostgreSQL sessions carry the alias as application_name; MySQL ones log in as
    a dedicated user, so the observer can count exactly this pool's sessions.
    """

    def __init__(self, base_alias: str, pool: dict, observer: Observer) -> None:
        base = connections[base_alias]
        # Unique across processes too: xdist workers share the servers.
        self.alias = f"dpb_t{os.getpid()}_{next(_numbers)}"
        self.vendor = base.vendor
        self.observer = observer
        self.cls = type(base)
        settings_dict = copy.deepcopy(base.settings_dict)
        settings_dict["POOL"] = pool
        if self.vendor == "postgresql":
            settings_dict["OPTIONS"] = {
                **settings_dict["OPTIONS"],
                "application_name": self.alias,
            }
        else:
            settings_dict["USER"], settings_dict["PASSWORD"] = MYSQL_POOL_USER
        self.settings_dict = settings_dict
        self.wrappers: list[Any] = []

    def wrapper(self) -> Any:
        wrapper = self.cls(copy.deepcopy(self.settings_dict), self.alias)
        self.wrappers.append(wrapper)
        return wrapper

    @property
    def pool(self) -> Any:
        return registry.pools[self.alias]

    def stats(self) -> dict:
        return self.pool.stats()

    def backend_id(self, wrapper: Any) -> int:
        sql = "SELECT pg_backend_pid()" if self.vendor == "postgresql" else "SELECT CONNECTION_ID()"
        with wrapper.cursor() as cursor:
            cursor.execute(sql)
            return cursor.fetchone()[0]

    def server_sessions(self) -> set[int]:
        """Ids of this pool's sessions that the server has open right now."""
        if self.vendor == "postgresql":
            rows = self.observer.query(
                "SELECT pid FROM pg_stat_activity WHERE application_name = %s",
                (self.alias,),
            )
        else:
            rows = self.observer.query(
                "SELECT id FROM information_schema.processlist WHERE user = %s AND db = %s",
                (MYSQL_POOL_USER[0], self.observer.database),
            )
        return {row[0] for row in rows}

    def session_state(self, backend_id: int) -> str | None:
        """'idle', 'idle in transaction', … or None if the session is gone."""
        if self.vendor == "postgresql":
            rows = self.observer.query(
                "SELECT state FROM pg_stat_activity WHERE pid = %s", (backend_id,)
            )
            return rows[0][0] if rows else None
        rows = self.observer.query(
            "SELECT command FROM information_schema.processlist WHERE id = %s",
            (backend_id,),
        )
        if not rows:
            return None
        open_trx = self.observer.query(
            "SELECT COUNT(*) FROM information_schema.innodb_trx WHERE trx_mysql_thread_id = %s",
            (backend_id,),
        )[0][0]
        return "idle in transaction" if open_trx else "idle"

    def wait_for_state(self, backend_id: int, state: str) -> None:
        # MariaDB refreshes its INNODB_TRX snapshot only once nobody has read it
        # for 0.1 s, so a faster poll would keep reading the same stale answer.
        interval = 0.01 if self.vendor == "postgresql" else 0.15
        wait_for(
            lambda: self.session_state(backend_id) == state,
            what=f"session {backend_id} to be {state!r}",
            interval=interval,
        )

    def kill(self, backend_id: int) -> None:
        if self.vendor == "postgresql":
            self.observer.query("SELECT pg_terminate_backend(%s)", (backend_id,))
        else:
            self.observer.query(f"KILL {int(backend_id)}")

    def close(self) -> None:
        for wrapper in self.wrappers:
            try:
                wrapper.close()
            except Exception:
                pass
        registry.retire(self.alias)


@pytest.fixture(scope="session")
def mysql_pool_user(django_db_setup: Any) -> None:
    """A MySQL role of our own, so the suite can count its sessions exactly."""
    user, password = MYSQL_POOL_USER
    conn = MySQLdb.connect(host="127.0.0.1", user="root", autocommit=True)
    cursor = conn.cursor()
    for host in ("%", "localhost"):
        account = f"'{user}'@'{host}'"
        cursor.execute(f"CREATE USER IF NOT EXISTS {account} IDENTIFIED BY '{password}'")
        cursor.execute(f"GRANT ALL ON `dpb\\_%%`.* TO {account}".replace("%%", "%"))
    conn.close()


@pytest.fixture
def make_pooled(
    django_db_setup: Any, django_db_blocker: Any, mysql_pool_user: None
) -> Iterator[Callable[..., Pooled]]:
    made: list[Pooled] = []
    observers: dict[str, Observer] = {}
    with django_db_blocker.unblock():

        def make(base_alias: str, **pool: Any) -> Pooled:
            if base_alias not in observers:
                observers[base_alias] = Observer(connections[base_alias].settings_dict)
            pooled = Pooled(base_alias, pool, observers[base_alias])
            made.append(pooled)
            return pooled

        yield make
        for pooled in made:
            pooled.close()
        for observer in observers.values():
            observer.close()


@pytest.fixture(params=VENDOR_ALIASES)
def vendor(request: Any) -> str:
    """Run the test once per vendor: the alias of that vendor's pooled database."""
    return request.param


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    def __init__(self, url: str, process: subprocess.Popen) -> None:
        self.url = url
        self.process = process

    def get(self, path: str, timeout: float = 30.0) -> bytes:
        with urllib.request.urlopen(self.url + path, timeout=timeout) as response:
            return response.read()


def server_env(**extra: str) -> dict[str, str]:
    """The environment of a server process (Gunicorn, uvicorn, a Celery worker)
    that serves the testproject on the test databases pytest-django created."""
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DPB_USE_TEST_DB": "1",
        "PYTHONPATH": str(ROOT),
        **extra,
    }


def wait_listening(
    process: subprocess.Popen, port: int, name: str, log: Path | None = None
) -> None:
    """Poll until *process* accepts connections on *port*; fail (with its *log*)
    if it exits."""

    def ready() -> bool:
        if process.poll() is not None:
            output = f":\n{log.read_text()}" if log is not None else ""
            raise AssertionError(f"{name} exited with {process.returncode}{output}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            return False

    wait_for(ready, timeout=30, what=f"{name} to listen")


def start_gunicorn(*args: str, env: dict | None = None, log: Path | None = None) -> Server:
    """Gunicorn on a free port; its output goes to *log* (appended) if given."""
    port = free_port()
    output = open(log, "ab") if log is not None else None
    try:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "-c",
                str(ROOT / "testproject" / "gunicorn.conf.py"),
                "--bind",
                f"127.0.0.1:{port}",
                "--no-control-socket",
                *args,
            ],
            cwd=ROOT,
            env=server_env(**(env or {})),
            stdout=output,
            stderr=output,
        )
    finally:
        if output is not None:
            output.close()  # the child has its own copy
    wait_listening(process, port, "gunicorn", log)
    return Server(f"http://127.0.0.1:{port}", process)


def stop(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


@pytest.fixture(scope="session")
def gunicorn_server(django_db_setup: Any) -> Iterator[Server]:
    """One sync worker serving the testproject on the test databases."""
    server = start_gunicorn("--workers", "1")
    yield server
    stop(server)
