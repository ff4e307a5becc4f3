"""pool_stats(): every key, timings from a fixed-memory histogram, no secret; and the
cross-process snapshots (directory, modes, dead processes, fork, drain)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.test import override_settings

import django_poolbackend
from django_poolbackend import process, publish
from django_poolbackend.core.pool import CLOSE_REASONS
from django_poolbackend.core.stats import BOUNDS_MS, Histogram
from django_poolbackend.figures import pool_figures
from django_poolbackend.snapshots import read_snapshots

from .conftest import (
    MYSQL_POOL_USER,
    ROOT,
    fork_from_one_thread,
    require_module,
    server_env,
    wait_for,
)

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "mysql"])

IDENTITY = ("alias", "pid", "vendor", "host", "port", "database", "user")
CONFIG = (
    "min_size",
    "max_size",
    "timeout",
    "max_waiting",
    "max_lifetime",
    "max_idle",
    "max_uses",
    "pre_ping",
    "reset",
    "leak_timeout",
    "connect_params",
)
GAUGES = ("size", "idle", "in_use", "waiting")
COUNTERS = (
    "requests",
    "checkouts",
    "waits",
    "timeouts",
    "rejected",
    "connects",
    "connect_errors",
    "closed",
    "pings",
    "ping_failures",
    "resets",
    "leaks",
    "drains",
    "drain_pending",
    "drain_generation",
)
TIMINGS = ("wait_ms", "hold_ms", "connect_ms")


def assert_complete(figures: dict) -> None:
    for key in (*IDENTITY, *CONFIG, *GAUGES, *COUNTERS, *TIMINGS, "closed_by_reason"):
        assert key in figures, key
    assert set(CLOSE_REASONS) <= set(figures["closed_by_reason"])
    for key in TIMINGS:
        assert set(figures[key]) == {"count", "mean", "p50", "p99", "max"}
    json.loads(json.dumps(figures))


# -- the histogram ----------------------------------------------------------------


def test_histogram_is_fixed_memory_and_close_to_true_percentiles() -> None:
    hist = Histogram()
    size = len(hist.counts)
    values = [0.05 + (i % 1000) * 0.1 for i in range(100_000)]  # 0.05 .. 99.95 ms
    for value in values:
        hist.add(value)
    assert len(hist.counts) == size == len(BOUNDS_MS) + 1
    summary = hist.summary()
    assert summary["count"] == 100_000
    assert summary["max"] == pytest.approx(99.95)
    assert summary["mean"] == pytest.approx(sum(values) / len(values), rel=1e-6)
    true_p50, true_p99 = 50.0, 99.0
    assert true_p50 <= summary["p50"] <= true_p50 * 1.25
    assert true_p99 <= summary["p99"] <= max(true_p99 * 1.25, summary["max"])


def test_histogram_zeros_and_round_trip() -> None:
    hist = Histogram()
    hist.add(3.0)
    summary = hist.summary(zeros=99)
    assert (summary["count"], summary["p50"], summary["p99"], summary["max"]) == (
        100,
        0.0,
        0.0,
        3.0,
    )
    assert Histogram().summary() == {"count": 0, "mean": 0.0, "p50": 0.0, "p99": 0.0, "max": 0.0}
    back, zeros = Histogram.from_json(json.loads(json.dumps(hist.to_json(zeros=5))))
    assert (back.counts, back.count, zeros) == (hist.counts, 1, 5)
    # Cumulative at Prometheus bounds: 3 ms is above 2.5 ms and within 5 ms.
    cumulative = dict(back.cumulative([0.0025, 0.005], zeros))
    assert cumulative == {0.0025: 5, 0.005: 6}


# -- pool_stats -------------------------------------------------------------------


def test_pool_stats_before_first_use_has_every_key_at_zero(vendor: str) -> None:
    process.retire(vendor)
    figures = django_poolbackend.pool_stats(vendor)
    assert_complete(figures)
    assert figures["alias"] == vendor and figures["pid"] == os.getpid()
    assert figures["vendor"] == ("postgresql" if vendor == "default" else "mysql")
    assert all(figures[key] == 0 for key in (*GAUGES, *COUNTERS))
    assert figures["wait_ms"]["count"] == 0


def test_pool_stats_unknown_or_unpooled_alias() -> None:
    from django.utils.connection import ConnectionDoesNotExist

    with pytest.raises(ConnectionDoesNotExist):
        django_poolbackend.pool_stats("nope")
    with pytest.raises(ValueError, match="pooled aliases: default, mysql"):
        django_poolbackend.pool_stats("stock_pg")


def test_pool_stats_before_first_use_of_a_composed_engine(tmp_path: Path) -> None:
    """An alias whose ENGINE is a backend composed with the mixin in a module of
    its own (tests/composed_prometheus) is pooled from the start."""
    require_module("django_prometheus", "django-prometheus", "pip install django-prometheus")
    code = (
        "import json, django\n"
        "django.setup()\n"
        "import django_poolbackend\n"
        "print(json.dumps(django_poolbackend.pool_stats('composed')))\n"
    )
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
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert_complete(figures)
    assert (figures["alias"], figures["vendor"], figures["max_size"]) == (
        "composed",
        "postgresql",
        4,
    )
    assert all(figures[key] == 0 for key in (*GAUGES, *COUNTERS))


@pytest.mark.filterwarnings("ignore:Overriding setting DATABASES:UserWarning")
def test_project_key_counts_a_composed_engine(settings: Any) -> None:
    """The snapshot directory of a project is keyed by its pooled databases: a
    composed engine is one of them, a stock one is not."""
    require_module("django_prometheus", "django-prometheus", "pip install django-prometheus")
    suite = dict(settings.DATABASES)
    composed = {**suite["default"], "ENGINE": "tests.composed_prometheus"}
    stock = {**suite["default"], "ENGINE": "django.db.backends.postgresql"}
    keys = {}
    for name, extra in {
        "none": {},
        "composed a": {"extra": {**composed, "NAME": "dpb_a"}},
        "composed b": {"extra": {**composed, "NAME": "dpb_b"}},
        "stock": {"extra": {**stock, "NAME": "dpb_a"}},
    }.items():
        with override_settings(DATABASES={**suite, **extra}):
            keys[name] = publish.project_key()
    assert len({keys["none"], keys["composed a"], keys["composed b"]}) == 3
    assert keys["stock"] == keys["none"]


def test_pool_stats_figures_after_traffic(make_pooled, vendor: str) -> None:
    pooled = make_pooled(vendor, max_size=2)
    first, second = pooled.wrapper(), pooled.wrapper()
    for _ in range(3):
        pooled.backend_id(first)
        first.close()
    pooled.backend_id(first)
    pooled.backend_id(second)
    # A third wrapper must wait for one of the two: time a real wait.
    import threading

    got: list[int] = []

    def third() -> None:
        wrapper = pooled.wrapper()  # Django wrappers belong to their thread
        got.append(pooled.backend_id(wrapper))
        wrapper.close()

    thread = threading.Thread(target=third)
    thread.start()
    wait_for(lambda: pooled.stats()["waiting"] == 1, what="the waiter")
    first.close()
    thread.join(30)
    assert got
    second.close()
    figures = pool_figures(pooled.pool)
    assert_complete(figures)
    assert figures["connects"] == 2 and figures["checkouts"] == 6
    assert figures["connect_ms"]["count"] == 2 and figures["connect_ms"]["max"] > 0
    assert figures["hold_ms"]["count"] == 6 and figures["hold_ms"]["max"] > 0
    wait = figures["wait_ms"]
    assert wait["count"] == 6 and wait["max"] > 0 and wait["p50"] == 0.0
    assert figures["user"] == (MYSQL_POOL_USER[0] if vendor == "mysql" else "postgres")
    # The MySQL pool logs in with a password: it appears nowhere.
    assert MYSQL_POOL_USER[1] not in json.dumps(figures)


# -- publishing -------------------------------------------------------------------


def test_snapshot_directory_files_and_dead_processes(
    make_pooled, vendor: str, tmp_path: Path
) -> None:
    directory = tmp_path / "stats" / "project"
    with override_settings(DJANGO_POOLBACKEND_STATS_DIR=str(directory)):
        pooled = make_pooled(vendor, max_size=2)
        wrapper = pooled.wrapper()
        pooled.backend_id(wrapper)
        wrapper.close()
        assert publish.publish(force=True)
        mine = directory / f"{os.getpid()}.json"
        assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(mine).st_mode) == 0o600
        snapshots = read_snapshots()
        (me,) = [s for s in snapshots if s["pid"] == os.getpid()]
        figures = me["pools"][pooled.alias]
        assert figures["checkouts"] == 1 and figures["connects"] == 1
        assert figures["wait_histogram"]["count"] == 1
        assert MYSQL_POOL_USER[1] not in mine.read_text()
        # A snapshot of a process that is gone is dropped, and removed.
        dead = directory / "999999999.json"
        dead.write_text(mine.read_text().replace(str(os.getpid()), "999999999"))
        assert [s["pid"] for s in read_snapshots()] == [os.getpid()]
        assert not dead.exists()
        # Closing every pool (process exit) withdraws the snapshot.
        publish.withdraw()
        assert not mine.exists()


@pytest.mark.skipif(sys.platform == "win32", reason="fork")
def test_forked_child_never_publishes_or_removes_as_parent(make_pooled, tmp_path: Path) -> None:
    directory = tmp_path / "s"
    with override_settings(DJANGO_POOLBACKEND_STATS_DIR=str(directory)):
        pooled = make_pooled("default", max_size=2)
        wrapper = pooled.wrapper()
        pooled.backend_id(wrapper)
        wrapper.close()
        publish.publish(force=True)
        parent_file = directory / f"{os.getpid()}.json"
        assert parent_file.exists()
        read, write = os.pipe()
        with fork_from_one_thread():
            child = os.fork()
        if child == 0:  # pragma: no cover - the child reports through the pipe
            code = 1
            try:
                wrote = publish.publish(force=True)  # no pool of its own: nothing
                publish.withdraw()
                process.close_all()
                os.write(write, json.dumps([wrote, parent_file.exists()]).encode())
                code = 0
            finally:
                os._exit(code)
        os.close(write)
        _, status = os.waitpid(child, 0)
        answer = json.loads(os.read(read, 100))
        os.close(read)
        assert os.waitstatus_to_exitcode(status) == 0
        assert answer == [False, True]
        assert parent_file.exists()
        assert not (directory / f"{child}.json").exists()
        publish.withdraw()


def test_drain_retires_idle_now_and_busy_on_return(
    make_pooled, vendor: str, tmp_path: Path
) -> None:
    with override_settings(DJANGO_POOLBACKEND_STATS_DIR=str(tmp_path / "d")):
        pooled = make_pooled(vendor, max_size=3)
        idle, busy = pooled.wrapper(), pooled.wrapper()
        idle_id, busy_id = pooled.backend_id(idle), pooled.backend_id(busy)
        idle.close()
        assert pooled.stats()["idle"] == 1
        generation = publish.request_drain(pooled.alias)
        assert generation == 1
        pooled.pool._tick(0.0)  # what a return or the maintenance tick does
        wait_for(lambda: idle_id not in pooled.server_sessions(), what="the idle one closed")
        figures = pool_figures(pooled.pool)
        assert (figures["drain_generation"], figures["drain_pending"]) == (1, 1)
        assert busy_id in pooled.server_sessions()
        busy.close()  # returned: retired, no error
        wait_for(lambda: busy_id not in pooled.server_sessions(), what="the busy one closed")
        figures = pool_figures(pooled.pool)
        assert figures["closed_by_reason"]["drained"] == 2 and figures["drain_pending"] == 0
        fresh = pooled.wrapper()
        assert pooled.backend_id(fresh) not in (idle_id, busy_id)
        fresh.close()


def test_the_return_that_leaves_the_pool_idle_rewrites_a_busy_snapshot(
    make_pooled, vendor: str, tmp_path: Path
) -> None:
    """Issue 18.10: right after a burst, readers must not see connections in use
    that were already returned. A snapshot that showed some in use is written
    again by the return that leaves the pool idle, at once (however recent the
    last snapshot), not by the next tick a second later. The maintenance thread
    is paused, so the return is the only thing that could have written it."""
    directory = tmp_path / "idle"
    maintainer = process._maintainer
    with override_settings(DJANGO_POOLBACKEND_STATS_DIR=str(directory)):
        pooled = make_pooled(vendor, max_size=4)
        wrappers = [pooled.wrapper() for _ in range(3)]
        snapshot = directory / f"{os.getpid()}.json"

        def figures() -> dict:
            return json.loads(snapshot.read_text())["pools"][pooled.alias]

        assert maintainer is not None
        maintainer.pause()
        try:
            for wrapper in wrappers:
                pooled.backend_id(wrapper)
            assert publish.publish(force=True)
            assert (figures()["in_use"], figures()["idle"]) == (3, 0)
            assert pooled.pool.tick_when_idle is True
            wrappers[0].close()
            wrappers[1].close()
            # Still busy: the returns so far may tick once a second, no more.
            assert figures()["in_use"] in (2, 3)
            wrappers[2].close()
            # The last return left the pool idle: the file says so already.
            assert (figures()["in_use"], figures()["idle"], figures()["size"]) == (0, 3, 3)
            assert pooled.pool.tick_when_idle is False
            # Idle now: later returns go back to at most one tick a second.
            pooled.backend_id(wrappers[0])
            wrappers[0].close()
            assert pooled.pool.tick_when_idle is False
        finally:
            maintainer.resume()
            publish.withdraw()


def test_zero_figures_match_a_fresh_pools(vendor: str) -> None:
    """An unused alias's figures are made without a pool: the same keys, in the same
    order and with the same values, as a pool that has done nothing yet. When the
    core pool gains a figure, this fails until figures.py has it too."""
    from django.db import connections

    from django_poolbackend import figures
    from django_poolbackend import settings as pool_settings
    from django_poolbackend.core import Pool

    _, config = pool_settings.prepare(connections.settings[vendor], vendor)
    assert isinstance(config, pool_settings.PoolConfig)
    where = figures.identity(connections[vendor].vendor, connections.settings[vendor])
    fresh = Pool(config, None, name=vendor)  # type: ignore[arg-type]  # never used
    fresh.context.identity = where
    expected = figures.pool_figures(fresh)
    zeros = figures.zero_figures(vendor, config, where)
    assert list(zeros) == list(expected)
    assert zeros == expected
    assert list(zeros["closed_by_reason"]) == list(expected["closed_by_reason"])
