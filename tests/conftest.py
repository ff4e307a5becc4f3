"""Fixtures: private pools on the real servers, an observer that asks the server what
it sees, databases of a test's own, and a Gunicorn serving the testproject against
the test databases.

The suite shares the machine's servers with other work, with other suite runs (each
with its own ``DPB_TEST_DB_SUFFIX``) and with the other workers of its own run
(pytest-xdist). Every server-wide name the suite makes (a MySQL user, a role) so
carries ``RUN_TAG``: the run's suffix and the xdist worker's id.
"""

from __future__ import annotations

import copy
import itertools
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import MySQLdb
import psycopg
import pytest
from django.db import connections

from django_poolbackend import process as pool_process

ROOT = Path(__file__).resolve().parent.parent
#: The xdist worker this process is ("gw0", "gw1", ...), or "" in a run without
#: workers. xdist sets the variable before it imports this file.
WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
#: What makes a server-wide name (a user, a role) this process's own: two suite runs
#: at once differ by DPB_TEST_DB_SUFFIX, two workers of one run by their id.
RUN_TAG = os.environ.get("DPB_TEST_DB_SUFFIX", "") + (f"_{WORKER}" if WORKER else "")
#: The MySQL user of the pools that make_pooled() builds: one per run and worker, so
#: that counting its sessions counts this process's sessions only.
MYSQL_POOL_USER = (f"dpb_pool{RUN_TAG}", "dpb_pool_pw")
VENDOR_ALIASES = ["default", "mysql"]

_numbers = itertools.count()


# -- the caller's signals -------------------------------------------------------------

#: Signals a caller may have set to "ignored" (nohup ignores SIGHUP; a shell ignores
#: SIGINT and SIGQUIT in the jobs it starts in the background) that the servers and
#: commands the tests start must get with their default meaning.
_CALLER_SIGNALS = (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGTERM)


def _still_ignored(signum: int, frame: Any) -> None:
    """Does nothing: the signal stays as ignored in this process as its caller asked."""


def pytest_configure(config: Any) -> None:
    # An ignored signal stays ignored across exec(), so every process a test starts
    # would inherit it: a "poolstats --watch" that never sees its SIGINT, a server
    # that shrugs off SIGTERM. A handler, unlike SIG_IGN, is reset to the default by
    # exec(): a handler that does nothing keeps this process's behaviour and gives
    # the programs the tests start the dispositions of a normal terminal.
    for signum in _CALLER_SIGNALS:
        if signal.getsignal(signum) == signal.SIG_IGN:
            signal.signal(signum, _still_ignored)


# -- threads at fork() ----------------------------------------------------------------

#: Per fork() this process made while a fork_from_one_thread() block ran: the
#: names of its Python threads and how many threads the OS counted, at the moment
#: of the fork.
_threads_at_fork: list[tuple[list[str], int]] | None = None


def _record_threads_at_fork() -> None:
    if _threads_at_fork is not None:
        names = [thread.name for thread in threading.enumerate()]
        tasks = len(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else 1
        _threads_at_fork.append((names, tasks))


# Registered when this file is imported, before any pool exists, so before the
# package registers its own hooks with its first pool: Python runs "before" hooks in
# the reverse order of registration, so this one runs last, after the package has
# paused its maintenance thread, just before the fork itself.
os.register_at_fork(before=_record_threads_at_fork)

_FORK_WARNING = r"This process \(pid=\d+\) is multi-threaded, use of fork\(\) may lead to deadlocks"


@contextmanager
def fork_from_one_thread() -> Iterator[list[tuple[list[str], int]]]:
    """Around code that forks a process holding pools: every fork() in the block
    must happen while this process runs one thread only.

    The package pauses its maintenance thread around fork() (stopped and joined
    in its "before" hook, started again in its "after in parent" hook), so no
    thread of it runs across a fork. Python 3.12+ still prints "This process is
    multi-threaded, use of fork() may lead to deadlocks" for such a fork: it counts
    the threads after running the "after in parent" hooks, and so counts the
    restarted maintenance thread. This block checks the claim itself, at the moment
    of each fork, and takes that warning only for a fork the check passed; any
    other warning goes on as usual.

    One exception: an xdist worker always has a second OS thread, execnet's I/O
    thread, which is not a Python thread and not the package's. There the check is
    that the main thread is the only Python thread; in a run without workers the
    OS must count one thread. Yields the record (Python thread names and the OS
    count, per fork).
    """
    global _threads_at_fork
    record: list[tuple[list[str], int]] = []
    _threads_at_fork = record
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield record
    finally:
        _threads_at_fork = None
    assert record, "the block forked no process"
    crowded = [
        (names, tasks) for names, tasks in record if len(names) != 1 or (tasks != 1 and not WORKER)
    ]
    assert not crowded, f"forked while other threads ran (Python threads, OS count): {crowded}"
    for warning in caught:
        if not (
            issubclass(warning.category, DeprecationWarning)
            and re.match(_FORK_WARNING, str(warning.message))
        ):
            warnings.warn_explicit(
                warning.message, warning.category, warning.filename, warning.lineno
            )


# -- tools the CI installs ------------------------------------------------------------


def _on_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def _expected_skips() -> set[str]:
    """Tools named in DPB_EXPECTED_SKIPS (comma or space separated): the CI knows it
    does not install them on this line, so a test that needs one is skipped."""
    return set(re.split(r"[\s,]+", os.environ.get("DPB_EXPECTED_SKIPS", "").strip())) - {""}


def require_tool(name: str, present: bool, reason: str) -> None:
    """Skip the calling test when the tool *name* is missing (*present* false).

    Under CI (``CI=true``) a missing tool is a failure instead: the CI installs
    every tool the suite uses, so a skip there would mean a broken install step had
    silently dropped that coverage. A tool the CI run names in DPB_EXPECTED_SKIPS
    (for instance ``django-prometheus`` on a Django line it does not support yet)
    is skipped even there.
    """
    if present:
        return
    message = f"{name} is missing: {reason}"
    if _on_ci() and name not in _expected_skips():
        pytest.fail(
            f"{message}. CI=true, where every tool the suite needs is installed; "
            f"if this line cannot have {name}, add it to DPB_EXPECTED_SKIPS.",
            pytrace=False,
        )
    # allow_module_level: a test module may call this at import (a module whose
    # every test needs the tool); inside a test it is the test's skip.
    pytest.skip(message, allow_module_level=True)


def require_module(module: str, name: str, reason: str) -> Any:
    """The imported *module*, or require_tool()'s skip (a failure under CI).

    *name* is the distribution that provides it, as DPB_EXPECTED_SKIPS names it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        require_tool(name, False, f"{reason} ({exc})")
        raise  # not reached: require_tool() skipped or failed


def require_file(path: str, name: str, reason: str) -> None:
    """require_tool() for a tool that is a file (a binary such as /usr/sbin/pgbouncer)."""
    require_tool(name, os.path.exists(path), f"{path} does not exist; {reason}")


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

    def __init__(
        self, base_alias: str, pool: dict, observer: Observer, database: str | None = None
    ) -> None:
        base = connections[base_alias]
        # Unique across processes too: xdist workers share the servers.
        self.alias = f"dpb_t{os.getpid()}_{next(_numbers)}"
        self.vendor = base.vendor
        self.observer = observer
        self.cls = type(base)
        settings_dict = copy.deepcopy(base.settings_dict)
        settings_dict["POOL"] = pool
        if database is not None:  # e.g. one of own_databases()
            settings_dict["NAME"] = database
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
        return pool_process.pools[self.alias]

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
                (MYSQL_POOL_USER[0], self.settings_dict["NAME"]),
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
        pool_process.retire(self.alias)


@pytest.fixture(scope="session")
def mysql_pool_user(django_db_setup: Any) -> Iterator[None]:
    """A MySQL user of this run and worker only (MYSQL_POOL_USER), so the suite can
    count its sessions exactly; dropped when the session ends."""
    user, password = MYSQL_POOL_USER
    accounts = [f"'{user}'@'{host}'" for host in ("%", "localhost")]
    conn = MySQLdb.connect(host="127.0.0.1", user="root", autocommit=True)
    try:
        cursor = conn.cursor()
        for account in accounts:
            cursor.execute(f"CREATE USER IF NOT EXISTS {account} IDENTIFIED BY '{password}'")
            cursor.execute(f"GRANT ALL ON `dpb\\_%`.* TO {account}")
    finally:
        conn.close()
    yield
    conn = MySQLdb.connect(host="127.0.0.1", user="root", autocommit=True)
    try:
        conn.cursor().execute("DROP USER IF EXISTS " + ", ".join(accounts))
    finally:
        conn.close()


# -- databases of a test's own --------------------------------------------------------


class OwnDatabases:
    """A PostgreSQL and a MariaDB database that nothing but one test connects to.

    The servers count how sessions ended per database, never per session or per
    user; a database that only this test's sessions use turns those counts into
    counts of this test's sessions, whatever else runs on the servers (other suite
    runs, the other xdist workers, anything else on the machine):

    - PostgreSQL: ``pg_stat_database.sessions_abandoned`` of the database: sessions
      that ended because the client went away without a Terminate message.
    - MariaDB: the error log's ``Aborted connection <id> to db: '<name>'`` lines
      (one per session that ended without COM_QUIT; written with log_warnings >= 2,
      the default, before the session leaves the process list).

    The observing connections connect to no database of these, so they are never
    part of what they measure.
    """

    def __init__(self) -> None:
        self.name = f"dpb_own{RUN_TAG}_{os.getpid()}_{next(_numbers)}"
        self.pg = psycopg.connect(
            host="127.0.0.1", user="postgres", dbname="postgres", autocommit=True
        )
        try:
            self.my = MySQLdb.connect(host="127.0.0.1", user="root", autocommit=True)
        except BaseException:
            self.pg.close()
            raise
        try:
            self._error_log = self._mariadb_error_log()
            self.pg.execute(f'CREATE DATABASE "{self.name}"')
            self._my_query(f"CREATE DATABASE `{self.name}`")
            self._log_offset = os.path.getsize(self._error_log)
            self._abandoned_before = self._pg_abandoned()
        except BaseException:
            self.drop()
            raise

    def _my_query(self, sql: str, params: tuple = ()) -> list[tuple]:
        cursor = self.my.cursor()
        try:
            cursor.execute(sql, params or None)
            return list(cursor.fetchall())
        finally:
            cursor.close()

    def _mariadb_error_log(self) -> str:
        (path, datadir, warnings), *_ = self._my_query(
            "SELECT @@log_error, @@datadir, @@log_warnings"
        )
        path = os.path.join(datadir, path) if path else ""
        if int(warnings) < 2 or not path or not os.access(path, os.R_OK):
            raise RuntimeError(
                "MariaDB's error log must be a file this user can read (@@log_error is "
                f"{path!r}) and @@log_warnings at least 2 (it is {warnings}): the log's "
                "'Aborted connection' lines are the only per-session record of sessions "
                "that ended without COM_QUIT"
            )
        return path

    def settings(self, base_alias: str, **changes: Any) -> dict[str, Any]:
        """The settings of *base_alias* (a vendor's pooled alias) on this database."""
        settings_dict = copy.deepcopy(connections[base_alias].settings_dict)
        settings_dict.update(NAME=self.name, **changes)
        return settings_dict

    def url(self, vendor: str) -> str:
        """A DATABASE_URL (testproject.settings.database_from_url) for *vendor*."""
        if vendor == "postgresql":
            return f"postgres://postgres@127.0.0.1:5432/{self.name}"
        return f"mysql://root@127.0.0.1:3306/{self.name}"

    def sessions(self) -> dict[str, int]:
        """Sessions open on the database now, by vendor."""
        pg = self.pg.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (self.name,)
        ).fetchone()
        my = self._my_query(
            "SELECT count(*) FROM information_schema.processlist WHERE db = %s", (self.name,)
        )
        return {"postgresql": int(pg[0]) if pg else 0, "mysql": int(my[0][0])}

    def _pg_abandoned(self) -> int:
        row = self.pg.execute(
            "SELECT sessions_abandoned FROM pg_stat_database WHERE datname = %s", (self.name,)
        ).fetchone()
        return int(row[0] or 0) if row else 0

    def impolite_endings(self, timeout: float = 30.0) -> dict[str, list[str]]:
        """Sessions on the database that ended without a goodbye, by vendor: an empty
        list when every session closed politely.

        Waits (up to *timeout*) until no session is open on the database any more:
        a server records how a session ended as it ends."""
        wait_for(
            lambda: not any(self.sessions().values()),
            timeout=timeout,
            what=f"every session on {self.name} to end",
        )
        abandoned = self._pg_abandoned() - self._abandoned_before
        with open(self._error_log, errors="replace") as log:
            if os.path.getsize(self._error_log) >= self._log_offset:
                log.seek(self._log_offset)  # else the log was rotated: all of it is new
            mine = f" to db: '{self.name}' "
            aborted = [line for line in log.read().splitlines() if mine in line]
        return {
            "postgresql": [f"{abandoned} session(s) abandoned"] if abandoned else [],
            "mysql": [line for line in aborted if "Aborted connection" in line],
        }

    def drop(self) -> None:
        """Drop both databases (and so end whatever session is left on them: only
        this test's) and close the observing connections."""
        try:
            self.pg.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
            self._my_query(f"DROP DATABASE IF EXISTS `{self.name}`")
        finally:
            self.pg.close()
            self.my.close()


@pytest.fixture
def own_databases() -> Iterator[OwnDatabases]:
    """A PostgreSQL and a MariaDB database of this test's own (see OwnDatabases)."""
    databases = OwnDatabases()
    try:
        yield databases
    finally:
        databases.drop()


@pytest.fixture
def make_pooled(
    django_db_setup: Any, django_db_blocker: Any, mysql_pool_user: None
) -> Iterator[Callable[..., Pooled]]:
    made: list[Pooled] = []
    observers: dict[str, Observer] = {}
    with django_db_blocker.unblock():

        def make(base_alias: str, *, database: str | None = None, **pool: Any) -> Pooled:
            if base_alias not in observers:
                observers[base_alias] = Observer(connections[base_alias].settings_dict)
            pooled = Pooled(base_alias, pool, observers[base_alias], database)
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


def _ephemeral_ports() -> range:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return range(int(low), int(high) + 1)
    except (OSError, ValueError):
        return range(32768, 61000)  # Linux's default


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on, for a server a test starts.

    Not one the kernel would pick (bind to port 0): every outgoing connection on
    the machine, the suite's own database sessions included, takes its local port
    from that same ephemeral range, and could take this one before the server
    binds it. Below that range only servers bind, and a random pick makes two
    workers of a run choosing the same port at the same moment unlikely."""
    # SystemRandom: a test that seeds the random module (hypothesis does) must not
    # make every worker try the same ports in the same order.
    pick = random.SystemRandom()
    top = min(_ephemeral_ports().start, 65536)
    for _ in range(200):
        port = pick.randrange(20000 if top > 25000 else 1024, top)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue  # taken
            return port
    raise AssertionError(f"no free TCP port below {top} after 200 tries")


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
        # pytest-django names an xdist worker's test databases after the worker
        # (dpb_test_pg_gw0): tests/settings.py does the same with this.
        "DPB_TEST_DB_WORKER": WORKER,
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
