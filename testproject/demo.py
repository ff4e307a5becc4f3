"""The README's demo: a short load on the testproject under Gunicorn, every worker's
pool, then the same load on Django's stock engine for comparison.

    python -m testproject.demo run [SECONDS]    what ``./dev demo`` runs
    python -m testproject.demo describe | createdb | seed | load URL SECONDS

The database is SQLite (``.demo/dpb_demo.sqlite3``) unless DATABASE_URL names a
PostgreSQL or MySQL server (testproject/settings.py). ``./dev demo`` installs the
virtualenv, starts that server if one is named, and runs ``run``.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import django
from django.apps import AppConfig

ROOT = Path(__file__).resolve().parent.parent
#: Set for the demo's Gunicorn workers: where each writes its connection count.
COUNT_DIR = "DPB_DEMO_COUNT_DIR"
WORKERS = 2
CLIENTS = 8


# -- the connection counter, inside each Gunicorn worker --------------------------

_opened = 0


def _count_connection(sender: object, connection: object, **kwargs: object) -> None:
    global _opened
    _opened += 1


def _write_count(directory: Path) -> None:
    (directory / str(os.getpid())).write_text(str(_opened))


class ConnectionCounter(AppConfig):
    """Counts the physical connections this process opens and writes the count to
    ``$DPB_DEMO_COUNT_DIR/<pid>`` when the process exits.

    Django sends ``connection_created`` once per new physical connection, with the
    stock engine (every request, at ``CONN_MAX_AGE=0``) and with ours (a pooled
    connection is set up once), so one count means the same for both and for every
    vendor; writing it only at exit adds nothing to a request. settings.py installs
    this app only when DPB_DEMO_COUNT_DIR is set.
    """

    name = "testproject.demo"
    label = "dpb_demo_counter"

    def ready(self) -> None:
        from django.db.backends.signals import connection_created

        connection_created.connect(_count_connection, dispatch_uid=self.label)
        atexit.register(_write_count, Path(os.environ[COUNT_DIR]))


# -- preparing the database -------------------------------------------------------


def _settings() -> dict:
    from django.conf import settings

    return settings.DATABASES["default"]


def _vendor_of(db: dict) -> str:
    engine = db["ENGINE"]
    if "sqlite3" in engine:
        return "sqlite"
    return "postgresql" if "postgresql" in engine else "mysql"


def _description(db: dict) -> str:
    if _vendor_of(db) == "sqlite":
        return f"{db['ENGINE']}, file {db['NAME']}"
    # Never the password.
    return f"{db['ENGINE']} on {db['HOST']}:{db['PORT']}, database {db['NAME']}"


def describe() -> None:
    print(_description(_settings()))


def createdb() -> None:
    db = _settings()
    vendor = _vendor_of(db)
    if vendor == "sqlite":
        # The file itself is made by the first connection (migrate).
        Path(db["NAME"]).parent.mkdir(parents=True, exist_ok=True)
    elif vendor == "postgresql":
        import psycopg

        with psycopg.connect(
            host=db["HOST"],
            port=db["PORT"],
            user=db["USER"] or None,
            password=db["PASSWORD"] or None,
            dbname="postgres",
            autocommit=True,
        ) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", [db["NAME"]]
            ).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{db["NAME"]}"')
    else:
        import MySQLdb

        conn = MySQLdb.connect(
            host=db["HOST"], port=int(db["PORT"]), user=db["USER"], password=db["PASSWORD"]
        )
        conn.cursor().execute(f"CREATE DATABASE IF NOT EXISTS `{db['NAME']}`")
        conn.close()


def seed() -> None:
    from testproject.shop.models import Item

    missing = 20 - Item.objects.count()
    if missing > 0:
        Item.objects.bulk_create(Item(name=f"item {n}", stock=100) for n in range(missing))


# -- the load -----------------------------------------------------------------------


def paths_for(vendor: str) -> list[str]:
    """The same three pages on every vendor: /one/ is one query (on SQLite too),
    /items/ a read, /transfer/ a short transaction."""
    return ["/one/", "/items/", "/transfer/"]


@dataclass
class LoadResult:
    seconds: float
    requests: int
    errors: dict[str, int]
    p50_ms: float
    p99_ms: float

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    def summary(self) -> str:
        kinds = ", ".join(f"{kind}: {n}" for kind, n in sorted(self.errors.items()))
        errors = f"{self.error_count} errors" + (f" ({kinds})" if kinds else "")
        return (
            f"{self.requests} requests, {errors}, {self.rate:.0f} req/s, "
            f"p50 {self.p50_ms:.1f} ms, p99 {self.p99_ms:.1f} ms"
        )


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read()


def wait_ready(
    base: str, process: subprocess.Popen[bytes] | None = None, deadline_s: float = 30.0
) -> None:
    """Poll until Django answers. The probe asks for a path with no view: Django
    answers 404 without touching the database, so it opens no connection that the
    counts would include."""
    deadline = time.monotonic() + deadline_s
    while True:
        if process is not None and process.poll() is not None:
            raise SystemExit(f"Gunicorn exited with status {process.returncode} (see above)")
        try:
            _get(base + "/dpb-demo-ready/")
            return
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return
            raise
        except (urllib.error.URLError, ConnectionError):
            if time.monotonic() > deadline:
                raise SystemExit("the demo server did not start") from None
            time.sleep(0.1)


class Progress:
    """One line rewritten in place on a terminal (elapsed, requests, req/s, errors);
    a plain line per second when stdout is a file or a pipe."""

    def __init__(self, seconds: float, counts: dict[str, int]) -> None:
        self.seconds = seconds
        self.counts = counts
        self.tty = sys.stdout.isatty()
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="demo progress", daemon=True)

    def __enter__(self) -> Progress:
        self.started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        if self.tty:
            sys.stdout.write("\r\033[K")  # the summary line takes its place
            sys.stdout.flush()

    def _line(self) -> str:
        elapsed = min(time.monotonic() - self.started, self.seconds)
        done, errors = self.counts["ok"] + self.counts["errors"], self.counts["errors"]
        rate = done / elapsed if elapsed > 0 else 0.0
        return (
            f"  {elapsed:4.1f} s of {self.seconds:g}  {done:6d} requests  "
            f"{rate:5.0f} req/s  {errors} errors"
        )

    def _run(self) -> None:
        interval = 0.2 if self.tty else 1.0
        while not self._stop.wait(interval):
            if self.tty:
                sys.stdout.write("\r" + self._line())
            else:
                sys.stdout.write(self._line() + "\n")
            sys.stdout.flush()


def load(base: str, seconds: float, paths: list[str], clients: int = CLIENTS) -> LoadResult:
    counts = {"ok": 0, "errors": 0}
    errors: dict[str, int] = {}
    latencies: list[float] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def client(offset: int) -> None:
        n = offset
        while time.monotonic() < stop_at:
            started = time.monotonic()
            failure = None
            try:
                _get(base + paths[n % len(paths)])
            except urllib.error.HTTPError as exc:
                failure = f"HTTP {exc.code}"
            except Exception as exc:
                failure = type(exc).__name__
            elapsed = time.monotonic() - started
            with lock:
                if failure is None:
                    counts["ok"] += 1
                else:
                    counts["errors"] += 1
                    errors[failure] = errors.get(failure, 0) + 1
                latencies.append(elapsed)
            n += 1

    print(f"{clients} clients for {seconds:g} s on {', '.join(paths)}", flush=True)
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    with Progress(seconds, counts):
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    latencies.sort()
    p50 = latencies[len(latencies) // 2] * 1000 if latencies else 0.0
    p99 = latencies[int(len(latencies) * 0.99)] * 1000 if latencies else 0.0
    result = LoadResult(seconds, counts["ok"] + counts["errors"], errors, p50, p99)
    print(result.summary(), flush=True)
    return result


# -- the whole demo -----------------------------------------------------------------


def say(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Gunicorn:
    """The testproject under Gunicorn (2 sync workers), stopped gracefully so that
    every worker writes its connection count on the way out."""

    def __init__(self, env: dict[str, str], count_dir: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.count_dir = count_dir
        count_dir.mkdir(parents=True, exist_ok=True)
        for stale in count_dir.iterdir():
            stale.unlink()
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "-c",
                str(ROOT / "testproject" / "gunicorn.conf.py"),
                "--no-control-socket",
            ],
            cwd=ROOT,
            env={
                **env,
                "DPB_BIND": f"127.0.0.1:{self.port}",
                "WEB_CONCURRENCY": str(WORKERS),
                COUNT_DIR: str(count_dir),
            },
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def connections_opened(self) -> tuple[int, int]:
        """(connections, processes that reported); call after stop()."""
        counts = [int(path.read_text()) for path in self.count_dir.iterdir()]
        return sum(counts), len(counts)


def _pool_connects(env: dict[str, str]) -> int | None:
    """The workers' own count of connections their pools opened (poolstats --json),
    to cross-check the signal count."""
    done = subprocess.run(
        [sys.executable, "testproject/manage.py", "poolstats", "--json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode:
        return None
    return int(json.loads(done.stdout).get("totals", {}).get("connects", -1))


def _run_load(
    env: dict[str, str], count_dir: Path, seconds: float, paths: list[str], pooled: bool
) -> tuple[LoadResult, int, int, int | None]:
    server = Gunicorn(env, count_dir)
    pool_connects = None
    try:
        wait_ready(server.url, server.process)
        result = load(server.url, seconds, paths)
        if pooled:
            # A busy worker publishes its snapshot at most twice a second; once
            # quiet, its maintenance tick (once a second) publishes the final one.
            time.sleep(1.5)
            say(
                "manage.py poolstats: the pool of every Gunicorn worker, read from "
                "their published snapshots"
            )
            subprocess.run(
                [sys.executable, "testproject/manage.py", "poolstats"],
                cwd=ROOT,
                env=env,
                check=True,
            )
            pool_connects = _pool_connects(env)
    finally:
        server.stop()
    opened, reported = server.connections_opened()
    return result, opened, reported, pool_connects


def run(seconds: float) -> None:
    django.setup()
    from django.conf import settings

    db = settings.DATABASES["default"]
    vendor = _vendor_of(db)
    stock = settings.STOCK_ENGINES[db["ENGINE"]]
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "DJANGO_SETTINGS_MODULE": "testproject.settings",
        "DPB_LOG_LEVEL": "WARNING",
    }
    env.pop("DPB_STOCK_ENGINE", None)
    env.pop(COUNT_DIR, None)

    say(f"preparing the demo database ({_description(db)})")
    createdb()
    for command in (
        ["testproject/manage.py", "migrate", "--verbosity", "0"],
        ["-m", "testproject.demo", "seed"],
    ):
        subprocess.run([sys.executable, *command], cwd=ROOT, env=env, check=True)

    paths = paths_for(vendor)
    scratch = ROOT / ".demo"
    say(f"Gunicorn, {WORKERS} sync workers, pooled engine {db['ENGINE']}")
    pooled, pooled_opened, pooled_reported, pool_connects = _run_load(
        env, scratch / "count-pooled", seconds, paths, pooled=True
    )
    say(f"the same load on Django's stock engine: {stock}, CONN_MAX_AGE=0")
    plain, stock_opened, stock_reported, _ = _run_load(
        {**env, "DPB_STOCK_ENGINE": "1"}, scratch / "count-stock", seconds, paths, pooled=False
    )

    kind = "SQLite connections" if vendor == "sqlite" else "server connections"
    ratio = pooled.rate / plain.rate if plain.rate else float("inf")
    say(
        f"pooled: {pooled.rate:.0f} req/s, {pooled_opened} {kind} opened; "
        f"stock engine: {plain.rate:.0f} req/s, {stock_opened} opened ({ratio:.1f}x the req/s)"
    )
    print(f"    {kind} opened: by the {WORKERS} Gunicorn workers, from start to stop")
    print("    (Django's connection_created signal, counted in each worker)")
    if pooled_reported != WORKERS or stock_reported != WORKERS:
        print(
            f"    NOTE: {pooled_reported} and {stock_reported} worker processes reported "
            f"their counts, not {WORKERS} each: a worker was restarted or killed."
        )
    if pool_connects is not None and pool_connects != pooled_opened:
        print(
            f"    NOTE: the pools report {pool_connects} connects, the signal count is "
            f"{pooled_opened}."
        )


def main(argv: list[str]) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "testproject.settings")
    command = argv[0] if argv else ""
    if command == "run":
        run(float(argv[1]) if len(argv) > 1 else 5.0)
        return
    if command == "load":
        base = argv[1]
        wait_ready(base)
        django.setup()
        load(base, float(argv[2]), paths_for(_vendor_of(_settings())))
        return
    django.setup()
    actions = {"describe": describe, "createdb": createdb, "seed": seed}
    if command not in actions:
        raise SystemExit(__doc__)
    actions[command]()


if __name__ == "__main__":
    main(sys.argv[1:])
