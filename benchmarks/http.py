"""HTTP: Gunicorn driven by wrk on loopback, per configuration.

For each configuration a fresh Gunicorn (``--no-control-socket``) serves the
testproject with that ``DATABASES`` entry; wrk drives one view for a fixed time
while a sampler thread counts the server's sessions on the benchmark database
(``pg_stat_activity`` / ``information_schema.processlist``) every 50 ms. PgBouncer
(transaction mode) is started for each of its runs, as the ``postgres`` OS user,
on a free port with a private ini in a temporary directory, in front of the stock
engine. Before each run the previous configuration's sessions must be gone, so
that they are not counted in the next one's peak.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from typing import Any

from .children import database_settings
from .common import DB_NAME, POOL_SIZE, ROOT, free_port, log

WORKERS = 2
THREADS = 8
WRK_CONNECTIONS = 16

#: (label, worker class, threads per worker)
SERVERS = {"sync 2": ("sync", 1), "gthread 2x8": ("gthread", THREADS)}
VIEWS = {"one-query": "/one/", "ORM": "/items/"}

PG_CONFIGS = [
    "stock, CONN_MAX_AGE=0",
    "stock, persistent",
    "Django's pool",
    "django-db-connection-pool",
    "PgBouncer (transaction)",
    "django_poolbackend",
]
MY_CONFIGS = [
    "stock, CONN_MAX_AGE=0",
    "stock, persistent",
    "django-db-connection-pool",
    "django_poolbackend",
]


class PgBouncer:
    """A private PgBouncer in transaction mode; stopped by its own pid only."""

    def __init__(self, pool_size: int) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="dpb_bench_pgbouncer_")
        ini = os.path.join(self.dir, "pgbouncer.ini")
        users = os.path.join(self.dir, "userlist.txt")
        with open(users, "w") as handle:
            handle.write('"postgres" ""\n')
        with open(ini, "w") as handle:
            handle.write(
                f"[databases]\n{DB_NAME} = host=127.0.0.1 port=5432 dbname={DB_NAME}\n"
                "[pgbouncer]\n"
                f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\nunix_socket_dir =\n"
                f"auth_type = trust\nauth_file = {users}\npool_mode = transaction\n"
                f"default_pool_size = {pool_size}\nmax_client_conn = 500\n"
                f"logfile = {os.path.join(self.dir, 'pgbouncer.log')}\n"
                "ignore_startup_parameters = extra_float_digits,options\n"
                "log_connections = 0\nlog_disconnections = 0\n"
                f"pidfile = {os.path.join(self.dir, 'pgbouncer.pid')}\n"
            )
        shutil.chown(self.dir, "postgres")
        for path in (ini, users):
            shutil.chown(path, "postgres")
        self.proc = subprocess.Popen(
            ["runuser", "-u", "postgres", "--", "/usr/sbin/pgbouncer", ini],
            # Not a pipe: nobody reads it, and a full pipe would stall PgBouncer.
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 15
        import socket

        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("PgBouncer did not start: " + self._log_tail()) from None
                time.sleep(0.05)

    def _log_tail(self) -> str:
        try:
            with open(os.path.join(self.dir, "pgbouncer.log")) as handle:
                return handle.read()[-500:]
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """Stop our PgBouncer by the pid it wrote (runuser does not pass signals on)."""
        try:
            with open(os.path.join(self.dir, "pgbouncer.pid")) as handle:
                pid = int(handle.read().strip())
        except (OSError, ValueError):
            pid = None
        if pid is not None:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def database_for(vendor: str, config: str, pgbouncer_port: int | None) -> dict:
    if config == "PgBouncer (transaction)":
        db = database_settings(vendor, "stock, CONN_MAX_AGE=0")
        db["PORT"] = str(pgbouncer_port)
        db["DISABLE_SERVER_SIDE_CURSORS"] = True
    else:
        db = database_settings(vendor, config)
    db["TEST"] = {"NAME": "dpb_test_bench_h5"}
    return db


class Sampler(threading.Thread):
    """Counts the server's sessions on the benchmark database, keeps the peak."""

    def __init__(self, vendor: str) -> None:
        super().__init__(daemon=True)
        self.vendor = vendor
        self.peak = 0
        self.samples = 0
        self.stopped = threading.Event()
        self.error: str | None = None

    def run(self) -> None:
        try:
            if self.vendor == "postgresql":
                import psycopg

                conn = psycopg.connect(
                    "host=127.0.0.1 user=postgres dbname=postgres "
                    "application_name=dpb_bench_sampler",
                    autocommit=True,
                )
                sql = (
                    "SELECT count(*) FROM pg_stat_activity "
                    f"WHERE datname = '{DB_NAME}' AND backend_type = 'client backend'"
                )
            else:
                import MySQLdb

                conn = MySQLdb.connect(host="127.0.0.1", user="root")
                sql = f"SELECT count(*) FROM information_schema.processlist WHERE db = '{DB_NAME}'"
            cursor = conn.cursor()
            while not self.stopped.wait(0.05):
                cursor.execute(sql)
                self.peak = max(self.peak, int(cursor.fetchone()[0]))
                self.samples += 1
            conn.close()
        except Exception as exc:  # reported, never fatal to the run
            self.error = f"{type(exc).__name__}: {exc}"


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            response.read()
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def parse_wrk(output: str) -> dict:
    result: dict[str, Any] = {}
    match = re.search(r"Requests/sec:\s+([\d.]+)", output)
    result["req_per_s"] = float(match.group(1)) if match else 0.0
    for pct in ("50", "99"):
        match = re.search(rf"^\s+{pct}(?:\.000)?%\s+([\d.]+)(us|ms|s)\s*$", output, re.M)
        if match:
            result[f"p{pct}_ms"] = _ms(*match.groups())
    match = re.search(r"(\d+) requests in", output)
    result["requests"] = int(match.group(1)) if match else 0
    errors = 0
    match = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    if match:
        errors += int(match.group(1))
    match = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    if match:
        errors += sum(int(x) for x in match.groups())
    result["errors"] = errors
    return result


def sessions(vendor: str) -> int:
    """The server's sessions on the benchmark database right now."""
    if vendor == "postgresql":
        import psycopg

        with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres", autocommit=True) as c:
            row = c.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = %s AND backend_type = 'client backend'",
                [DB_NAME],
            ).fetchone()
            return int(row[0])
    import MySQLdb

    conn = MySQLdb.connect(host="127.0.0.1", user="root")
    try:
        cursor = conn.cursor()
        cursor.execute(
            "SELECT count(*) FROM information_schema.processlist WHERE db = %s", [DB_NAME]
        )
        return int(cursor.fetchone()[0])
    finally:
        conn.close()


def wait_quiet(vendor: str, deadline_s: float = 15.0) -> int:
    """Wait until the previous configuration's sessions are gone (so that they are
    not counted in this one's peak); returns how many were still there."""
    deadline = time.monotonic() + deadline_s
    while True:
        left = sessions(vendor)
        if left == 0 or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


def run_one(vendor: str, config: str, server: str, view: str, duration: float) -> dict:
    """One Gunicorn (and for that configuration one PgBouncer), one wrk run."""
    leftover = wait_quiet(vendor)
    bouncer = PgBouncer(pool_size=WORKERS * POOL_SIZE) if config.startswith("PgBouncer") else None
    try:
        result = _run_gunicorn(
            vendor, config, server, view, duration, bouncer.port if bouncer else None
        )
    finally:
        if bouncer is not None:
            bouncer.stop()
    if leftover:
        result["sessions_left_before"] = leftover
    return result


def _run_gunicorn(
    vendor: str, config: str, server: str, view: str, duration: float, pgbouncer_port: int | None
) -> dict:
    worker_class, threads = SERVERS[server]
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "DJANGO_SETTINGS_MODULE": "benchmarks.http_settings",
        "DPB_BENCH_DATABASE": json.dumps(database_for(vendor, config, pgbouncer_port)),
        "DPB_BIND": f"127.0.0.1:{port}",
        "WEB_CONCURRENCY": str(WORKERS),
        "DPB_WORKER_CLASS": worker_class,
        "DPB_THREADS": str(threads),
    }
    # A file, not a pipe: a pipe nobody reads fills up and blocks the workers.
    errors = tempfile.TemporaryFile(mode="w+")
    gunicorn = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "-c",
            "testproject/gunicorn.conf.py",
            "--no-control-socket",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=errors,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                status = _get(base + VIEWS[view])
                if status == 200:
                    break
                raise RuntimeError(f"{VIEWS[view]} answered {status}")
            except OSError:
                if gunicorn.poll() is not None or time.monotonic() > deadline:
                    errors.seek(0)
                    tail = errors.read()[-400:]
                    raise RuntimeError(f"Gunicorn did not start: {tail}") from None
                time.sleep(0.1)
        # Warm every worker (and thread) before measuring.
        subprocess.run(
            ["wrk", "-t2", f"-c{WRK_CONNECTIONS}", "-d1s", base + VIEWS[view]],
            capture_output=True,
            timeout=30,
            check=False,
        )
        sampler = Sampler(vendor)
        sampler.start()
        out = subprocess.run(
            [
                "wrk",
                "-t2",
                f"-c{WRK_CONNECTIONS}",
                f"-d{duration:g}s",
                "--latency",
                base + VIEWS[view],
            ],
            capture_output=True,
            text=True,
            timeout=duration + 60,
            check=False,
        )
        sampler.stopped.set()
        sampler.join(10)
        result = parse_wrk(out.stdout)
        if not result["requests"]:
            errors.seek(0)
            result["server_log_tail"] = errors.read()[-600:]
        result["peak_server_connections"] = sampler.peak
        if sampler.error:
            result["sampler_error"] = sampler.error
        return result
    finally:
        # Our own Gunicorn only: its session's process group.
        try:
            os.killpg(gunicorn.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            gunicorn.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(gunicorn.pid, signal.SIGKILL)
            gunicorn.wait()
        errors.close()


def run(quick: bool, rounds: int) -> dict:
    """Every scenario, configurations interleaved per round; returns raw runs."""
    duration = 3.0 if quick else 5.0
    scenarios = [("sync 2", "one-query"), ("gthread 2x8", "one-query")]
    if not quick:
        scenarios += [("sync 2", "ORM"), ("gthread 2x8", "ORM")]
    if shutil.which("wrk") is None:
        return {"error": "wrk is not installed (apt-get install wrk)"}
    results: dict[str, Any] = {"duration_s": duration, "wrk_connections": WRK_CONNECTIONS}
    for server, view in scenarios:
        for vendor, configs in (("postgresql", PG_CONFIGS), ("mysql", MY_CONFIGS)):
            key = f"{vendor} | {server} | {view}"
            runs: dict[str, list[dict]] = {config: [] for config in configs}
            for number in range(rounds):
                for config in configs:
                    started = time.monotonic()
                    try:
                        value = run_one(vendor, config, server, view, duration)
                    except Exception as exc:
                        value = {"error": f"{type(exc).__name__}: {exc}"}
                    runs[config].append(value)
                    log(
                        f"  [http {key} {number + 1}/{rounds}] {config}: "
                        f"{value.get('error') or round(value['req_per_s'])} req/s "
                        f"({time.monotonic() - started:.1f} s)"
                    )
            results[key] = runs
    return results
