"""Throw-away PostgreSQL and MariaDB instances for the comparison runs.

Django's ``schema`` tests once crashed the machine's shared MariaDB, and six
configurations create and drop hundreds of databases: the runs go to private
instances (``tests/servers.py``: a temporary directory, a free port, removed at the
end) so the shared servers and other people's test runs never see them.

A pooled run holds more sessions than a stock one (every ``--parallel`` worker keeps
up to ``max_size`` idle connections per alias, Django's own tests open extra wrappers
and threads), so the instances get ``MAX_CONNECTIONS`` instead of the servers'
defaults (100 and 151), and each run records the most sessions the server had at once.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import MySQLdb
import psycopg

MAX_CONNECTIONS = 300
_PG_SESSIONS = "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"


def _pg(port: int) -> psycopg.Connection:
    return psycopg.connect(host="127.0.0.1", port=port, user="postgres", autocommit=True)


def _my(port: int) -> MySQLdb.Connection:
    return MySQLdb.connect(host="127.0.0.1", port=port, user="root", autocommit=True)


def _configure_postgres(server) -> None:
    with _pg(server.port) as conn:
        conn.execute(f"ALTER SYSTEM SET max_connections = {MAX_CONNECTIONS}")
    server.restart()  # max_connections only changes at server start


def _configure_mariadb(server) -> None:
    conn = _my(server.port)
    try:
        conn.cursor().execute(f"SET GLOBAL max_connections = {MAX_CONNECTIONS}")
    finally:
        conn.close()
    # The time zone tables, so Django's CONVERT_TZ tests run instead of being skipped
    # (has_zoneinfo_database). The tool warns on stderr about files it skips.
    sql = subprocess.run(
        ["mariadb-tzinfo-to-sql", "/usr/share/zoneinfo"],
        check=True,
        capture_output=True,
        timeout=300,
    ).stdout
    subprocess.run(
        ["mariadb", "-h127.0.0.1", f"-P{server.port}", "-uroot", "mysql"],
        input=sql,
        check=True,
        capture_output=True,
        timeout=300,
    )


def describe(vendor: str, port: int) -> dict:
    """The server's version and connection limit, for the report."""
    if vendor == "postgresql":
        with _pg(port) as conn:
            version = conn.execute("SHOW server_version").fetchone()[0]
            limit = int(conn.execute("SHOW max_connections").fetchone()[0])
        return {"server": f"PostgreSQL {version.split()[0]}", "max_connections": limit}
    conn = _my(port)
    try:
        cursor = conn.cursor()
        cursor.execute("SELECT VERSION(), @@GLOBAL.max_connections")
        version, limit = cursor.fetchone()
    finally:
        conn.close()
    return {"server": f"MariaDB {version.split('-')[0]}", "max_connections": int(limit)}


class SessionPeak:
    """The most client sessions the server had at once while the block ran.

    MariaDB counts it itself (``Max_used_connections``, reset by ``FLUSH STATUS``, which
    is why this is only for private instances); PostgreSQL has no such counter, so a
    thread samples ``pg_stat_activity`` every 0.1 s (a lower bound), not counting its
    own session.
    """

    def __init__(self, vendor: str, port: int) -> None:
        self.vendor, self.port = vendor, port
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> SessionPeak:
        if self.vendor == "mysql":
            conn = _my(self.port)
            try:
                conn.cursor().execute("FLUSH STATUS")
            finally:
                conn.close()
        else:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        with _pg(self.port) as conn:
            while not self._stop.wait(0.1):
                self.peak = max(self.peak, conn.execute(_PG_SESSIONS).fetchone()[0] - 1)

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=10)
            return
        conn = _my(self.port)
        try:
            cursor = conn.cursor()
            cursor.execute("SHOW GLOBAL STATUS LIKE 'Max_used_connections'")
            # The FLUSH's session had ended before the run and this one is only
            # counted if nothing else was connected.
            self.peak = int(cursor.fetchone()[1])
        finally:
            conn.close()


@contextlib.contextmanager
def private_servers(vendors: list[str], repo: Path) -> Iterator[dict[str, int]]:
    """Start one instance per vendor and yield their ports; remove them at the end."""
    if str(repo) not in sys.path:
        sys.path.insert(0, str(repo))
    from tests.servers import PrivateMariaDB, PrivatePostgres

    started = []
    try:
        ports = {}
        for vendor in vendors:
            print(f"== starting a private {vendor} server", flush=True)
            if vendor == "postgresql":
                server = PrivatePostgres()
                started.append(server)
                _configure_postgres(server)
            else:
                server = PrivateMariaDB()
                started.append(server)
                _configure_mariadb(server)
            ports[vendor] = server.port
        yield ports
    finally:
        for server in reversed(started):
            server.destroy()
