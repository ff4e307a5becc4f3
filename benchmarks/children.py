"""What runs inside one fresh interpreter: one configuration, one measurement.

Every function returns a flat dict of numbers (µs, counts) that the parent
collects over the rounds. Nothing here asserts a speed: the report compares.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from typing import Any

from .common import APP_NAME, MY, PG, POOL_SIZE, percentile, timed_loop

# -- opening raw connections ---------------------------------------------------


def _pg_conninfo() -> str:
    return (
        f"host={PG['HOST']} port={PG['PORT']} user={PG['USER']} dbname={PG['NAME']} "
        f"application_name={APP_NAME}"
    )


def _pg_connect() -> Any:
    import psycopg

    return psycopg.connect(_pg_conninfo(), autocommit=True)


def _my_connect() -> Any:
    import MySQLdb

    return MySQLdb.connect(
        host=MY["HOST"], port=int(MY["PORT"]), user=MY["USER"], database=MY["NAME"]
    )


# -- bare pools ------------------------------------------------------------------


class _Bare:
    """checkout() -> handle, checkin(handle), close(): one bare pool, pre-filled."""

    def __init__(self, impl: str, size: int) -> None:
        self.impl = impl
        if impl == "ours":
            from django_poolbackend.core import Pool, PoolConfig
            from django_poolbackend.drivers import PsycopgDriver

            pool = Pool(PoolConfig(max_size=size, min_size=0), PsycopgDriver(), name="bench")
            getconn, self.checkin = pool.getconn, pool.putconn

            def checkout() -> Any:
                return getconn(_pg_connect)

            self.checkout = checkout
            self.close = pool.close
        elif impl == "psycopg_pool":
            import psycopg_pool

            pool = psycopg_pool.ConnectionPool(
                _pg_conninfo(),
                min_size=size,
                max_size=size,
                kwargs={"autocommit": True},
                open=True,
            )
            pool.wait(timeout=10)
            self.checkout, self.checkin, self.close = pool.getconn, pool.putconn, pool.close
        elif impl == "queuepool":
            from sqlalchemy.pool import QueuePool

            pool = QueuePool(_pg_connect, pool_size=size, max_overflow=0, timeout=30)
            self.checkout = pool.connect

            def checkin(fairy: Any) -> None:
                fairy.close()

            self.checkin = checkin
            self.close = pool.dispose
        else:
            raise ValueError(f"unknown bare pool {impl!r}: use ours, psycopg_pool or queuepool")
        # Fill the pool so that no measurement pays a connect.
        held = [self.checkout() for _ in range(size)]
        for handle in held:
            self.checkin(handle)


def bare(
    impl: str, threads: int = 1, size: int = POOL_SIZE, budget: float = 1.0, threaded: bool = False
) -> dict:
    """One checkout+return of a bare pool: uncontended, or *threads* on *size*.

    *threaded* measures even one thread the contended way (per-checkout waits,
    a holder that yields), so that a scaling curve starts from a comparable point.
    With threads, each holder yields the GIL once while it holds the connection
    (``time.sleep(0)``), so that the others really find the pool empty: without
    it the GIL alone would serialise the loop and nothing would ever wait.
    """
    pool = _Bare(impl, size)
    try:
        if threads == 1 and not threaded:
            checkout, checkin = pool.checkout, pool.checkin

            def cycle() -> None:
                checkin(checkout())

            us, count = timed_loop(cycle, budget)
            return {"us_per_cycle": us, "ops": count}
        return _contended(pool, threads, budget)
    finally:
        pool.close()


def _contended(pool: _Bare, threads: int, budget: float) -> dict:
    checkout, checkin = pool.checkout, pool.checkin
    stop = False
    start = threading.Barrier(threads + 1)
    latencies: list[list[int]] = [[] for _ in range(threads)]
    counts = [0] * threads
    clock = time.perf_counter_ns
    yield_gil = time.sleep

    def worker(index: int) -> None:
        record = latencies[index].append
        start.wait()
        n = 0
        while not stop:
            t0 = clock()
            handle = checkout()
            t1 = clock()
            yield_gil(0)
            checkin(handle)
            record(t1 - t0)
            n += 1
        counts[index] = n

    workers = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for thread in workers:
        thread.start()
    start.wait()
    started = time.perf_counter()
    time.sleep(budget)  # the measurement window itself, not a synchronisation
    stop = True
    for thread in workers:
        thread.join()
    elapsed = time.perf_counter() - started
    waits = [ns / 1000.0 for per in latencies for ns in per]
    total = sum(counts)
    return {
        "ops_per_s": total / elapsed,
        "p50_wait_us": percentile(waits, 0.50),
        "p99_wait_us": percentile(waits, 0.99),
        "ops": total,
    }


def memory(checkouts: int = 1_000_000) -> dict:
    """RSS and tracemalloc growth of the bare pool (ours) over many checkouts."""
    import array
    import gc
    import resource
    import tracemalloc

    pool = _Bare("ours", POOL_SIZE)
    checkout, checkin = pool.checkout, pool.checkin

    def rss_kb() -> int:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024

    for _ in range(10_000):  # warm: every lazily created object exists
        checkin(checkout())
    gc.collect()
    steps = 10
    step = max(1, checkouts // steps)
    # Samples go into storage made before tracing starts, so that recording them
    # allocates nothing that tracemalloc would then report as growth.
    rss = array.array("q", [0] * steps)
    traced = array.array("q", [0] * steps)
    rss0 = rss_kb()
    tracemalloc.start()
    traced0 = tracemalloc.get_traced_memory()[0]
    started = time.perf_counter()
    for index in range(steps):
        for _ in range(step):
            checkin(checkout())
        traced[index] = tracemalloc.get_traced_memory()[0] - traced0
        rss[index] = rss_kb() - rss0
        if index == 0:
            first = tracemalloc.take_snapshot()
    elapsed = time.perf_counter() - started
    last = tracemalloc.take_snapshot()
    tracemalloc.stop()
    pool.close()
    # What the package itself still holds, by allocation site: the totals above
    # also see the interpreter's own bookkeeping (and the snapshots).
    only_package = [tracemalloc.Filter(True, "*django_poolbackend*")]
    package_growth = sum(
        stat.size_diff
        for stat in last.filter_traces(only_package).compare_to(
            first.filter_traces(only_package), "lineno"
        )
    )
    samples = [((i + 1) * step, rss[i], traced[i]) for i in range(steps)]
    return {
        "checkouts": step * steps,
        "rss_growth_kb": samples[-1][1],
        "tracemalloc_growth_bytes": samples[-1][2],
        "package_growth_bytes": package_growth,
        "package_growth_over": step * (steps - 1),
        "max_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "seconds": elapsed,
        "samples": samples,
    }


# -- the physical floor ------------------------------------------------------------


def floor(vendor: str, budget: float = 1.0) -> dict:
    """A SELECT 1 round trip on an open connection, and a connect+close."""
    connect = _pg_connect if vendor == "postgresql" else _my_connect
    conn = connect()
    cursor = conn.cursor()

    def select1() -> None:
        cursor.execute("SELECT 1")
        cursor.fetchone()

    select_us, _ = timed_loop(select1, budget)
    conn.close()

    def connect_close() -> None:
        connect().close()

    connect_us, _ = timed_loop(connect_close, budget, batch=5)
    return {"select1_us": select_us, "connect_close_us": connect_us}


# -- Django's request cycle ----------------------------------------------------------

#: Django configurations: ENGINE, CONN_MAX_AGE, health checks, extra keys.
DJANGO_CONFIGS: dict[str, dict] = {
    "stock, CONN_MAX_AGE=0": {"engine": "stock", "max_age": 0},
    "stock, persistent": {"engine": "stock", "max_age": 600, "health": True},
    "Django's pool": {
        "engine": "stock",
        "max_age": 0,
        "options": {"pool": {"min_size": POOL_SIZE, "max_size": POOL_SIZE}},
    },
    "django-db-connection-pool": {
        "engine": "dj_db_conn_pool",
        "max_age": 0,
        "extra": {"POOL_OPTIONS": {"POOL_SIZE": POOL_SIZE, "MAX_OVERFLOW": 0}},
    },
    "django_poolbackend": {
        "engine": "ours",
        "max_age": 0,
        "extra": {"POOL": {"max_size": POOL_SIZE}},
    },
}

ENGINES = {
    ("stock", "postgresql"): "django.db.backends.postgresql",
    ("stock", "mysql"): "django.db.backends.mysql",
    ("dj_db_conn_pool", "postgresql"): "dj_db_conn_pool.backends.postgresql",
    ("dj_db_conn_pool", "mysql"): "dj_db_conn_pool.backends.mysql",
    ("ours", "postgresql"): "django_poolbackend.postgresql",
    ("ours", "mysql"): "django_poolbackend.mysql",
}


def database_settings(vendor: str, config: str) -> dict:
    spec = DJANGO_CONFIGS[config]
    server = PG if vendor == "postgresql" else MY
    options = dict(spec.get("options", {}))
    if vendor == "postgresql":
        options["application_name"] = APP_NAME
    return {
        "ENGINE": ENGINES[(spec["engine"], vendor)],
        **server,
        "CONN_MAX_AGE": spec["max_age"],
        "CONN_HEALTH_CHECKS": spec.get("health", False),
        "OPTIONS": options,
        **spec.get("extra", {}),
    }


class _Counter:
    """Round trips each physical connection makes, counted on the client side.

    psycopg: libpq's own protocol trace of every connection (each ``Query`` or
    ``Sync`` message the client sends is one round trip; ``Query``/``Execute`` are
    statements). mysqlclient: ``MySQLdb.connect`` returns a subclass whose
    server-bound methods count their calls. Installed before Django opens anything.
    """

    def __init__(self, vendor: str, trace_dir: str) -> None:
        self.vendor = vendor
        self.trace_dir = trace_dir
        self.active = False
        self.conns: list[Any] = []
        self.files: list[Any] = []
        self.calls: dict[str, int] = {}
        self.statements: list[str] = []
        if vendor == "postgresql":
            self._install_psycopg()
        else:
            self._install_mysqldb()

    def _install_psycopg(self) -> None:
        import psycopg

        original = psycopg.Connection.connect.__func__  # a classmethod
        counter = self

        def connect(cls: Any, *args: Any, **kwargs: Any) -> Any:
            conn = original(cls, *args, **kwargs)
            counter.conns.append(conn)
            if counter.active:
                counter._trace(conn)
            return conn

        psycopg.Connection.connect = classmethod(connect)  # type: ignore[method-assign]
        # psycopg.connect is the classmethod bound at import time: rebind it.
        psycopg.connect = psycopg.Connection.connect  # type: ignore[assignment]

    def _trace(self, conn: Any) -> None:
        from psycopg import pq

        handle = open(os.path.join(self.trace_dir, f"{len(self.files)}.trace"), "w+b")
        self.files.append(handle)
        conn.pgconn.trace(handle.fileno())
        conn.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)

    def _install_mysqldb(self) -> None:
        import MySQLdb
        from MySQLdb.connections import Connection

        counter = self

        def counted(name: str) -> Any:
            method = getattr(Connection, name)

            def call(self: Any, *args: Any) -> Any:
                if counter.active:
                    counter.calls[name] = counter.calls.get(name, 0) + 1
                    if name == "query" and len(counter.statements) < 40:
                        query = args[0]
                        counter.statements.append(
                            query.decode() if isinstance(query, bytes) else str(query)
                        )
                return method(self, *args)

            return call

        names = (
            "query",
            "ping",
            "commit",
            "rollback",
            "autocommit",
            "select_db",
            "change_user",
            "set_character_set",
            "set_server_option",
        )
        counting = type("CountingConnection", (Connection,), {n: counted(n) for n in names})

        def connect(*args: Any, **kwargs: Any) -> Any:
            conn = counting(*args, **kwargs)
            counter.conns.append(conn)
            return conn

        MySQLdb.connect = connect  # type: ignore[assignment]

    def start(self) -> None:
        self.active = True
        if self.vendor == "postgresql":
            for conn in self.conns:
                if not conn.closed:
                    self._trace(conn)

    def stop(self) -> dict:
        self.active = False
        if self.vendor != "postgresql":
            total = sum(self.calls.values())
            return {
                "round_trips": total,
                "calls": dict(self.calls),
                "statements": list(self.statements),
            }
        for conn in self.conns:
            if not conn.closed:
                conn.pgconn.untrace()
        round_trips = statements = 0
        sent: list[str] = []
        for handle in self.files:
            handle.flush()
            handle.seek(0)
            for line in handle.read().decode(errors="replace").splitlines():
                fields = line.split("\t")
                if len(fields) < 3 or fields[0] != "F":
                    continue
                kind = fields[2]
                if kind in ("Query", "Sync"):
                    round_trips += 1
                if kind in ("Query", "Execute", "Parse"):
                    if kind != "Parse":
                        statements += 1
                    if len(sent) < 40:
                        sent.append(f"{kind} {fields[3].strip() if len(fields) > 3 else ''}")
        return {"round_trips": round_trips, "statements_sent": statements, "statements": sent}


def django_cycle(vendor: str, config: str, budget: float = 1.0, requests: int = 200) -> dict:
    """Django's request cycle, per configuration, as a WSGI request runs it.

    ``close_old_connections`` (request_started) -> ``ensure_connection`` (first
    query) -> ``close_old_connections`` (request_finished); and the same with one
    ``SELECT 1``. Then the round trips of *requests* one-query requests in steady
    state, counted on the client side.
    """
    import tempfile

    trace_dir = tempfile.mkdtemp(prefix="dpb_bench_trace_")
    counter = _Counter(vendor, trace_dir)
    import django
    from django.conf import settings

    settings.configure(
        USE_TZ=True,
        TIME_ZONE="UTC",
        INSTALLED_APPS=[],
        DATABASES={"default": database_settings(vendor, config)},
    )
    django.setup()
    from django.db import close_old_connections, connection

    def bare_cycle() -> None:
        close_old_connections()
        connection.ensure_connection()
        close_old_connections()

    def query_cycle() -> None:
        close_old_connections()
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
        close_old_connections()

    batch = 5 if config == "stock, CONN_MAX_AGE=0" else 50
    cycle_us, _ = timed_loop(bare_cycle, budget, batch)
    query_us, _ = timed_loop(query_cycle, budget, batch)

    # Steady state: warm (psycopg prepares a statement after 5 runs), then count.
    for _ in range(20):
        query_cycle()
    questions_before = _questions(counter) if vendor == "mysql" else None
    counter.start()
    try:
        for _ in range(requests):
            query_cycle()
        counted = counter.stop()
    finally:
        for handle in counter.files:
            handle.close()
        shutil.rmtree(trace_dir, ignore_errors=True)
    result: dict[str, Any] = {
        "cycle_us": cycle_us,
        "query_cycle_us": query_us,
        "round_trips_per_request": counted["round_trips"] / requests,
        "statements": counted["statements"][:8],
    }
    if "statements_sent" in counted:
        result["statements_per_request"] = counted["statements_sent"] / requests
    if "calls" in counted:
        result["calls"] = {k: v / requests for k, v in counted["calls"].items()}
    if questions_before is not None:
        after = _questions(counter)
        if after is not None:
            # Same session before and after: the server's own count between the
            # last read before and the first read after, minus what one read
            # itself counts (the difference of two reads in a row).
            per_read = after[1] - after[0]
            result["server_questions_per_request"] = (
                after[0] - questions_before[1] - per_read
            ) / requests
    close_old_connections()
    return result


def _questions(counter: _Counter) -> tuple[int, int] | None:
    """Two reads in a row of Questions of the session the pool hands out, or None
    when more than one session is alive (the count would mix sessions)."""
    live = [conn for conn in counter.conns if conn.open]
    if len(live) != 1:
        return None
    conn = live[0]
    active, counter.active = counter.active, False
    try:
        values = []
        for _ in range(2):
            cursor = conn.cursor()
            cursor.execute("SHOW SESSION STATUS LIKE 'Questions'")
            values.append(int(cursor.fetchone()[1]))
            cursor.close()
    finally:
        counter.active = active
    return values[0], values[1]
