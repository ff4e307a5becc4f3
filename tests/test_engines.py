"""The engines beyond the two core ones, each a few lines over the mixin: SQLite,
PostGIS, GeoDjango on MariaDB, and a third-party backend pooled by composition
(django-prometheus's)."""

from __future__ import annotations

import copy
import itertools
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import connections
from django.db.backends.signals import connection_created
from django.db.utils import load_backend

from django_poolbackend import PoolTimeout, checks, process

from .conftest import require_module, require_tool

ROOT = Path(__file__).resolve().parent.parent
SUFFIX = os.environ.get("DPB_TEST_DB_SUFFIX", "")
_numbers = itertools.count()


def _settings(engine: str, **overrides: Any) -> dict:
    """A complete DATABASES entry (the keys Django's ConnectionHandler fills in)."""
    settings_dict = copy.deepcopy(connections["default"].settings_dict)
    settings_dict.update(ENGINE=engine, NAME="", USER="", PASSWORD="", HOST="", PORT="", OPTIONS={})
    settings_dict.pop("POOL", None)
    settings_dict.update(overrides)
    return settings_dict


class Engine:
    """Wrappers of one ENGINE on a private alias (so each test has its own pool)."""

    def __init__(self, engine: str, settings_dict: dict) -> None:
        self.alias = f"dpb_h7_{os.getpid()}_{next(_numbers)}"
        self.cls = load_backend(engine).DatabaseWrapper
        self.settings_dict = settings_dict
        self.wrappers: list[Any] = []

    def wrapper(self) -> Any:
        wrapper = self.cls(copy.deepcopy(self.settings_dict), self.alias)
        self.wrappers.append(wrapper)
        return wrapper

    @property
    def pool(self) -> Any:
        return process.pools[self.alias]

    def close(self) -> None:
        for wrapper in self.wrappers:
            wrapper.close()
            if wrapper.connection is not None and wrapper.is_in_memory_db():
                wrapper.connection.close()
                wrapper.connection = None
        process.retire(self.alias)


@pytest.fixture
def engines(django_db_blocker: Any) -> Any:
    """Engines on databases of their own: not pytest-django's test databases, so
    its database blocker is lifted for them."""
    made: list[Engine] = []

    def make(engine: str, settings_dict: dict) -> Engine:
        made.append(Engine(engine, settings_dict))
        return made[-1]

    with django_db_blocker.unblock():
        yield make
        for engine in made:
            engine.close()


def run_python(code: str, env: dict | None = None, timeout: float = 300) -> str:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


# -- SQLite ----------------------------------------------------------------------


@pytest.fixture
def sqlite(engines: Any, tmp_path: Path) -> Any:
    def make(**pool: Any) -> Engine:
        name = str(tmp_path / f"db{next(_numbers)}.sqlite3")
        settings_dict = _settings("django_poolbackend.sqlite3", NAME=name, POOL=pool)
        return engines("django_poolbackend.sqlite3", settings_dict)

    return make


def test_sqlite_reuses_one_connection_set_up_once(sqlite: Any) -> None:
    engine = sqlite(max_size=1)
    created: list[int] = []

    def on_created(sender: Any, connection: Any, **kwargs: Any) -> None:
        if connection.alias == engine.alias:
            created.append(id(connection.connection))

    connection_created.connect(on_created)
    try:
        ids, pragmas = [], []
        for n in range(3):
            wrapper = engine.wrapper()
            with wrapper.cursor() as cursor:
                if n == 0:
                    # Session state of the connection: kept across requests with
                    # reset="rollback", like any pooled connection's.
                    cursor.execute("PRAGMA cache_size = -1234")
                cursor.execute("PRAGMA foreign_keys")
                foreign_keys = cursor.fetchone()[0]
                cursor.execute("PRAGMA cache_size")
                pragmas.append((foreign_keys, cursor.fetchone()[0]))
            ids.append(id(wrapper.connection))
            wrapper.close()
    finally:
        connection_created.disconnect(on_created)
    assert len(set(ids)) == 1
    assert pragmas == [(1, -1234)] * 3  # Django's PRAGMA foreign_keys = ON, set once
    assert created == ids[:1]
    stats = engine.pool.stats()
    assert (stats["connects"], stats["checkouts"], stats["size"]) == (1, 3, 1)
    assert stats["resets"] == 0  # a clean return costs nothing


def test_sqlite_transaction_left_open_is_rolled_back(sqlite: Any) -> None:
    engine = sqlite(max_size=1)
    setup = engine.wrapper()
    with setup.cursor() as cursor:
        cursor.execute("CREATE TABLE t (x integer)")
    setup.close()

    wrapper = engine.wrapper()
    wrapper.set_autocommit(False)
    with wrapper.cursor() as cursor:
        cursor.execute("INSERT INTO t VALUES (1)")
    conn = wrapper.connection
    assert conn.in_transaction
    wrapper.close()
    assert not conn.in_transaction
    assert conn.isolation_level is None  # back to Django's autocommit

    reader = engine.wrapper()
    with reader.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM t")
        assert cursor.fetchone()[0] == 0
    assert reader.connection is conn
    reader.close()
    assert engine.pool.stats()["resets"] == 1


def test_sqlite_transaction_mode_on_a_reused_connection(sqlite: Any) -> None:
    engine = sqlite(max_size=1)
    engine.settings_dict["OPTIONS"] = {"transaction_mode": "IMMEDIATE"}
    first = engine.wrapper()
    with first.cursor() as cursor:
        cursor.execute("CREATE TABLE t (x integer)")
    first.close()
    # A wrapper that reuses the connection never runs get_connection_params(),
    # which is where Django's SQLite wrapper sets transaction_mode.
    second = engine.wrapper()
    second.ensure_connection()
    assert second.transaction_mode == "IMMEDIATE"
    # What atomic() does on SQLite: BEGIN IMMEDIATE under autocommit.
    second.set_autocommit(False, force_begin_transaction_with_broken_autocommit=True)
    assert second.connection.in_transaction
    with second.cursor() as cursor:
        cursor.execute("INSERT INTO t VALUES (1)")
    second.commit()
    second.set_autocommit(True)
    with second.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM t")
        assert cursor.fetchone()[0] == 1
    second.close()
    stats = engine.pool.stats()
    assert (stats["connects"], stats["checkouts"]) == (1, 2)


def test_sqlite_cap_is_never_exceeded(sqlite: Any) -> None:
    engine = sqlite(max_size=1, timeout=0.2)
    holder = engine.wrapper()
    holder.ensure_connection()
    other = engine.wrapper()
    with pytest.raises(PoolTimeout) as info:
        other.ensure_connection()
    assert "max_size=1" in str(info.value)
    assert engine.pool.stats()["size"] == 1
    holder.close()
    other.ensure_connection()
    assert other.connection is not None
    other.close()


def test_sqlite_in_memory_databases_are_not_pooled(engines: Any) -> None:
    engine = engines("django_poolbackend.sqlite3", _settings("x", NAME=":memory:"))
    wrapper = engine.wrapper()
    with wrapper.cursor() as cursor:
        cursor.execute("CREATE TABLE t (x integer)")
        cursor.execute("INSERT INTO t VALUES (42)")
    assert wrapper._dpb_slot is None
    assert engine.alias not in process.pools
    wrapper.close()  # Django's no-op for in-memory databases: the data stays
    with wrapper.cursor() as cursor:
        cursor.execute("SELECT x FROM t")
        assert cursor.fetchone()[0] == 42


def test_sqlite_reset_full_is_refused_clearly(sqlite: Any, tmp_path: Path) -> None:
    engine = sqlite(reset="full")
    with pytest.raises(ImproperlyConfigured) as info:
        engine.wrapper().ensure_connection()
    message = str(info.value)
    assert message == (
        f"DATABASES['{engine.alias}']['POOL']['reset'] = 'full' is not supported by "
        "django_poolbackend.sqlite3: a SQLite connection has no server session to reset. "
        "Use 'rollback' (the default) or a dotted path to a callable."
    )
    assert engine.alias not in process.pools
    # The system check reads the same rule: the same message, before any request.
    (error,) = checks.pool_settings_messages({engine.alias: engine.settings_dict})
    assert (error.id, error.msg) == ("django_poolbackend.E001", message)
    # And so does `manage.py check` of a project on that engine.
    database = tmp_path / "project.sqlite3"
    result = subprocess.run(
        [sys.executable, "testproject/manage.py", "check"],
        cwd=ROOT,
        env={
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "testproject.settings",
            "DATABASE_URL": f"sqlite:///{database}?reset=full",
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "(django_poolbackend.E001) DATABASES['default']['POOL']['reset'] = 'full' is " in (
        result.stderr
    )


def test_sqlite_fork_child_never_uses_or_closes_inherited_connections(tmp_path: Path) -> None:
    """In a subprocess (it forks): the child builds its own pool, the inherited
    connections stay open in the child (closing is using them, for SQLite), and
    the parent's connections keep working."""
    out = run_python(
        """
        import gc, json, os, sys
        import django
        django.setup()
        from django.db import connection
        from django_poolbackend import process

        with connection.cursor() as cursor:
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("CREATE TABLE t (who text)")
            cursor.execute("INSERT INTO t VALUES ('parent')")
        inherited = connection.connection
        busy = connection.copy()
        busy.ensure_connection()  # checked out at fork time
        connection.close()  # idle in the pool at fork time

        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read)
            with connection.cursor() as cursor:
                cursor.execute("INSERT INTO t VALUES ('child')")
            result = {
                "own_connection": connection.connection is not inherited,
                "connects": process.pools["default"].stats()["connects"],
            }
            connection.close()
            process.close_all()
            gc.collect()
            result["inherited_open"] = inherited.total_changes >= 0
            os.write(write, json.dumps(result).encode())
            os.close(write)
            sys.exit(0)  # a normal exit: the parent's connections must survive it
        os.close(write)
        child = json.loads(os.read(read, 10000))
        _, status = os.waitpid(pid, 0)
        with connection.cursor() as cursor:
            cursor.execute("SELECT who FROM t ORDER BY who")
            rows = [r[0] for r in cursor.fetchall()]
        same = connection.connection is inherited
        with busy.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM t")
            busy_count = cursor.fetchone()[0]
        print(json.dumps({"child": child, "status": status, "rows": rows,
                          "same": same, "busy_count": busy_count}))
        """,
        env={
            "DJANGO_SETTINGS_MODULE": "tests.sqlite_settings",
            "DPB_SQLITE_NAME": str(tmp_path / "fork.sqlite3"),
        },
    )
    result = json.loads(out.strip().splitlines()[-1])
    assert result["status"] == 0
    assert result["child"] == {"own_connection": True, "connects": 1, "inherited_open": True}
    assert result["rows"] == ["child", "parent"]
    assert result["same"] is True  # the parent's idle connection, reused
    assert result["busy_count"] == 2


def test_sqlite_migrate_and_requests_through_django(tmp_path: Path) -> None:
    out = run_python(
        """
        import json
        import django
        django.setup()
        from django.core.management import call_command
        from django.core.wsgi import get_wsgi_application
        from wsgiref.util import setup_testing_defaults
        import django_poolbackend
        from testproject.shop.models import Item

        import io
        checked = io.StringIO()
        call_command("check", databases=["default"], stdout=checked, stderr=checked)
        assert "W003" not in checked.getvalue(), checked.getvalue()
        call_command("migrate", verbosity=0)
        Item.objects.bulk_create([Item(name=f"item{i}", stock=10) for i in range(5)])
        from django.db import connection
        connection.close()
        # Django's own request cycle (WSGI): the test Client would keep the
        # connection across requests, a real server gives it back after each.
        app = get_wsgi_application()
        codes = []

        def get(path):
            environ = {}
            setup_testing_defaults(environ)
            environ["PATH_INFO"] = path
            body = app(environ, lambda status, headers: codes.append(status))
            content = b"".join(body)
            body.close()  # request_finished: the connection goes back
            return json.loads(content)

        # The demo's pages (testproject/demo.py), /one/ included on SQLite.
        from testproject.demo import paths_for
        paths = paths_for("sqlite")
        answered = []
        for _ in range(10):
            for path in paths:
                answer = get(path)
                if path == "/one/":
                    answered.append(answer["backend"])
        stock = list(Item.objects.order_by("id").values_list("stock", flat=True))
        print(json.dumps({"codes": sorted(set(codes)), "stock": stock, "paths": paths,
                          "answered": answered,
                          "stats": django_poolbackend.pool_stats("default")}))
        """,
        env={
            "DJANGO_SETTINGS_MODULE": "tests.sqlite_settings",
            "DPB_SQLITE_NAME": str(tmp_path / "project.sqlite3"),
        },
    )
    result = json.loads(out.strip().splitlines()[-1])
    assert result["codes"] == ["200 OK"]
    assert result["paths"] == ["/one/", "/items/", "/transfer/"]
    assert result["stock"] == [0, 20, 10, 10, 10]
    # /one/ ran its query on the same pooled connection each time.
    assert len(result["answered"]) == 10 and len(set(result["answered"])) == 1
    stats = result["stats"]
    assert stats["vendor"] == "sqlite"
    assert stats["connects"] == 1  # migrate, the seed and 30 requests: one connection
    assert stats["checkouts"] >= 32


@pytest.mark.parametrize(
    "test_name, extra",
    [(None, ["--parallel", "2"]), ("file", [])],
    ids=["in-memory-parallel", "file"],
)
def test_sqlite_django_test_runner(tmp_path: Path, test_name: str | None, extra: list) -> None:
    """Django's test runner on the pooled SQLite engine: its in-memory test
    database (cloned into forked workers with --parallel), and a file one."""
    env = {
        "DJANGO_SETTINGS_MODULE": "tests.sqlite_settings",
        "DPB_SQLITE_NAME": str(tmp_path / "main.sqlite3"),
    }
    if test_name:
        env["DPB_SQLITE_TEST_NAME"] = str(tmp_path / "test.sqlite3")
    result = subprocess.run(
        [sys.executable, "-m", "django", "test", "testproject.shop", "--noinput", *extra],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Ran 4 tests" in result.stderr
    assert "OK" in result.stderr
    if test_name:
        assert not (tmp_path / "test.sqlite3").exists()  # destroyed at the end


# -- GeoDjango ---------------------------------------------------------------------


def _gis_available() -> str | None:
    """Why GeoDjango can't run here, or None."""
    try:
        from django.contrib.gis import gdal, geos

        gdal.gdal_version()
        geos.geos_version()
    except Exception as exc:  # ImproperlyConfigured, OSError: libraries missing
        return f"GeoDjango needs the GDAL and GEOS libraries: {exc}"
    return None


@pytest.fixture
def postgis_db() -> Any:
    import psycopg

    reason = _gis_available()
    require_tool("gdal", not reason, reason or "")
    name = "dpb_gis" + SUFFIX
    admin = psycopg.connect(host="127.0.0.1", user="postgres", dbname="postgres", autocommit=True)
    available = admin.execute(
        "SELECT 1 FROM pg_available_extensions WHERE name = 'postgis'"
    ).fetchone()
    if not available:
        admin.close()
        require_tool(
            "postgis",
            False,
            "not installed for this PostgreSQL server (Debian: postgresql-N-postgis-3)",
        )
    admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.execute(f'CREATE DATABASE "{name}"')
    yield name
    admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()


def test_postgis_geometries_on_pooled_connections(engines: Any, postgis_db: str) -> None:
    from django.contrib.gis.db.backends.postgis.adapter import PostGISAdapter
    from django.contrib.gis.geos import Point

    engine = engines(
        "django_poolbackend.postgis",
        _settings(
            "x",
            NAME=postgis_db,
            USER="postgres",
            HOST="127.0.0.1",
            PORT="5432",
            POOL={"max_size": 2},
        ),
    )
    engine.settings_dict["OPTIONS"] = {"application_name": engine.alias}
    # Two connections opened before the extension exists: GeoDjango registers
    # its types per connection when it opens one, and found none then.
    early = [engine.wrapper(), engine.wrapper()]
    for wrapper in early:
        wrapper.ensure_connection()
    for wrapper in early:
        wrapper.close()
    assert engine.pool.stats()["idle"] == 2

    migrator = engine.wrapper()
    migrator.prepare_database()  # what migrate does first: CREATE EXTENSION postgis
    migrator.close()
    assert engine.pool.stats()["closed_by_reason"].get("drained", 0) == 2

    # Both connections a busy moment needs can send and read geometries.
    users = [engine.wrapper(), engine.wrapper()]
    answers = []
    for n, wrapper in enumerate(users):
        with wrapper.cursor() as cursor:
            if n == 0:
                cursor.execute("CREATE TABLE places (id serial, pt geometry(Point, 4326))")
            point = Point(n + 1.5, 2.0, srid=4326)
            # Sent as a geometry, not as an untyped literal the server must guess.
            cursor.execute("SELECT pg_typeof(%s)::text", [PostGISAdapter(point)])
            assert cursor.fetchone()[0] == "geometry"
            cursor.execute("INSERT INTO places (pt) VALUES (%s)", [PostGISAdapter(point)])
            cursor.execute("SELECT ST_X(pt), ST_SRID(pt) FROM places ORDER BY id DESC LIMIT 1")
            answers.append(cursor.fetchone())
    assert answers == [(1.5, 4326), (2.5, 4326)]
    assert users[0].connection is not users[1].connection
    for wrapper in users:
        wrapper.close()
    again = engine.wrapper()
    with again.cursor() as cursor:
        cursor.execute(
            "SELECT ST_Distance(%s, %s)", [PostGISAdapter(Point(0, 0)), PostGISAdapter(Point(3, 4))]
        )
        assert cursor.fetchone()[0] == 5.0
    again.close()
    stats = engine.pool.stats()
    assert stats["size"] <= 2 and stats["checkouts"] == 6


@pytest.fixture
def mariadb_gis_db() -> Any:
    import MySQLdb

    reason = _gis_available()
    require_tool("gdal", not reason, reason or "")
    name = "dpb_gis" + SUFFIX
    admin = MySQLdb.connect(host="127.0.0.1", user="root", autocommit=True)
    admin.cursor().execute(f"DROP DATABASE IF EXISTS `{name}`")
    admin.cursor().execute(f"CREATE DATABASE `{name}`")
    yield name
    admin.cursor().execute(f"DROP DATABASE IF EXISTS `{name}`")
    admin.close()


def test_mysql_gis_spatial_queries_on_a_reused_connection(
    engines: Any, mariadb_gis_db: str
) -> None:
    from django.contrib.gis.geos import Point

    engine = engines(
        "django_poolbackend.mysql_gis",
        _settings(
            "x",
            NAME=mariadb_gis_db,
            USER="root",
            HOST="127.0.0.1",
            PORT="3306",
            POOL={"max_size": 1},
        ),
    )
    ids, answers = [], []
    for n in range(2):
        wrapper = engine.wrapper()
        assert wrapper.features.gis_enabled and wrapper.ops.Adapter is not None
        with wrapper.cursor() as cursor:
            if n == 0:
                cursor.execute("CREATE TABLE places (id serial, pt POINT NOT NULL)")
            adapter = wrapper.ops.Adapter(Point(3, 4))
            cursor.execute("INSERT INTO places (pt) VALUES (ST_GeomFromText(%s))", [str(adapter)])
            cursor.execute("SELECT ST_Distance(pt, ST_GeomFromText('POINT(0 0)')) FROM places")
            answers.append([row[0] for row in cursor.fetchall()])
            cursor.execute("SELECT CONNECTION_ID()")
            ids.append(cursor.fetchone()[0])
        wrapper.close()
    assert answers == [[5.0], [5.0, 5.0]]
    assert ids[0] == ids[1]
    assert engine.pool.stats()["connects"] == 1


# -- Composition ---------------------------------------------------------------------


@pytest.mark.django_db
def test_a_third_party_backend_pooled_by_composition(engines: Any) -> None:
    require_module("django_prometheus", "django-prometheus", "pip install django-prometheus")
    from django_prometheus.db import connections_total, execute_total

    from django_poolbackend.mixin import PooledDatabaseWrapperMixin

    settings_dict = copy.deepcopy(connections["default"].settings_dict)
    settings_dict["ENGINE"] = "tests.composed_prometheus"
    settings_dict["POOL"] = {"max_size": 1}
    engine = engines("tests.composed_prometheus", settings_dict)
    settings_dict["OPTIONS"] = {**settings_dict["OPTIONS"], "application_name": engine.alias}
    assert issubclass(engine.cls, PooledDatabaseWrapperMixin)
    labels = (engine.alias, "postgresql")
    backends, executed = [], []
    for _ in range(5):
        wrapper = engine.wrapper()
        with wrapper.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            backends.append(cursor.fetchone()[0])
        wrapper.close()
        executed.append(execute_total.labels(*labels)._value.get())
    # django-prometheus counts what it sees: one physical connection (the pool
    # opened one), and every query, through its cursor wrapper on the pooled
    # connection: one per request once the connection is set up.
    assert connections_total.labels(*labels)._value.get() == 1
    assert [b - a for a, b in itertools.pairwise(executed)] == [1, 1, 1, 1]
    assert len(set(backends)) == 1
    stats = engine.pool.stats()
    assert (stats["connects"], stats["checkouts"]) == (1, 5)


# -- PoolTimeout names CONN_MAX_AGE (issue 18, item 3) ---------------------------------


def _request(wrapper: Any) -> None:
    """One request of a thread, as Django runs it: a query, then what
    ``close_old_connections`` does at ``request_finished``."""
    with wrapper.cursor() as cursor:
        cursor.execute("SELECT 1")
    wrapper.close_if_unusable_or_obsolete()


TIMEOUT_ADVICE = (
    "Raise POOL['max_size'] (within the server's connection limit) or POOL['timeout'], "
    "keep work that holds a connection short, or set POOL['leak_timeout'] to find code "
    "that holds one too long."
)


def test_pool_timeout_names_conn_max_age_when_threads_keep_their_connections(
    sqlite: Any,
) -> None:
    """gthread with CONN_MAX_AGE=None: a thread keeps its connection after its
    request, the next thread's request waits for it and times out, and the message
    says why and what to do. Each wrapper is one thread's connection."""
    engine = sqlite(max_size=1, timeout=0.2)
    engine.settings_dict["CONN_MAX_AGE"] = None
    _request(engine.wrapper())
    assert engine.pool.stats()["in_use"] == 1  # kept between requests
    with pytest.raises(PoolTimeout) as info:
        _request(engine.wrapper())
    assert str(info.value) == (
        f"couldn't get a connection to database {engine.alias!r} after waiting 0.2 s: "
        "1 connections are in use (max_size=1) and 0 other requests are waiting. "
        f"DATABASES[{engine.alias!r}]['CONN_MAX_AGE'] is None, so each thread keeps its "
        "connection out of the pool between requests, busy or not: set it to 0, so that "
        "connections go back to the pool at the end of each request (the pool keeps them "
        "open). " + TIMEOUT_ADVICE
    )
    # The troubleshooting page shows this message and says what to do.
    page = (ROOT / "docs" / "troubleshooting.md").read_text()
    assert (
        "after waiting 10.0 s: 4 connections are in use (max_size=4) and 2 other requests "
        "are waiting. DATABASES['default']['CONN_MAX_AGE'] is None, so each thread keeps "
        "its connection out of the pool between requests, busy or not: set it to 0, so "
        "that connections go back to the pool at the end of each request (the pool keeps "
        "them open). " + TIMEOUT_ADVICE + "\n"
    ) in page


def test_with_conn_max_age_zero_the_same_requests_share_one_connection(sqlite: Any) -> None:
    engine = sqlite(max_size=1, timeout=0.2)
    engine.settings_dict["CONN_MAX_AGE"] = 0
    first, second = engine.wrapper(), engine.wrapper()
    _request(first)
    _request(second)
    stats = engine.pool.stats()
    assert (stats["in_use"], stats["checkouts"], stats["connects"], stats["timeouts"]) == (
        0,
        2,
        1,
        0,
    )
