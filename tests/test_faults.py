"""Faults against real servers, and what a request sees.

* Private PostgreSQL and MariaDB instances (tests/servers.py) are stopped and
  restarted: server down, restart under load, connect back-off.
* tests/proxy.py sits between a pool and the SHARED servers to black-hole or cut
  the network; only the proxy's own sockets are affected.
* Connections killed server-side while idle, and Django's own health checks.

Time bounds here are generous on purpose (a loaded 2-core machine must meet them):
they are far below the pool ``timeout`` they prove is never waited, and the
figures actually seen are printed (run with ``-s``) and quoted in
docs/failure-behaviour.md.
"""

from __future__ import annotations

import itertools
import math
import socket
import threading
import time

import MySQLdb
import psycopg
import pytest
from django.db import DatabaseError, OperationalError, connections

from django_poolbackend import PoolTimeout, figures, process
from django_poolbackend.core import pool as pool_module
from django_poolbackend.drivers import watchdog
from django_poolbackend.mysql.base import DatabaseWrapper as MySQLWrapper
from django_poolbackend.postgresql.base import DatabaseWrapper as PGWrapper

from .conftest import free_port, wait_for
from .proxy import Proxy
from .servers import PrivateMariaDB, PrivatePostgres

_aliases = itertools.count()
#: vendor -> (private server, wrapper class, the suite's alias to copy settings from)
SERVERS = {
    "postgresql": (PrivatePostgres, PGWrapper, "default"),
    "mysql": (PrivateMariaDB, MySQLWrapper, "mysql"),
}
BACKEND_SQL = {"postgresql": "SELECT pg_backend_pid()", "mysql": "SELECT CONNECTION_ID()"}
#: The driver's own connection error, which Django wraps (as ``__cause__``).
DRIVER_ERRORS = {"postgresql": psycopg.OperationalError, "mysql": MySQLdb.OperationalError}
SHARED_PORTS = {"default": 5432, "mysql": 3306}
#: What a loaded machine may add to any bound below.
SLACK = 5.0


def report(name: str, **figures: object) -> None:
    """Figures for the failure-behaviour page (visible with ``pytest -s``)."""
    print(f"\nFIGURE {name}: " + ", ".join(f"{k}={v}" for k, v in figures.items()))


@pytest.fixture(scope="module", params=sorted(SERVERS))
def private_server(request):
    server = SERVERS[request.param][0]()
    server.vendor = request.param
    yield server
    server.destroy()


@pytest.fixture
def make_wrapper(private_server, django_db_blocker):
    alias = f"dpb_fault{next(_aliases)}"
    _, wrapper_class, base_alias = SERVERS[private_server.vendor]
    made = []

    def make(**pool):
        base = connections[base_alias].settings_dict
        wrapper = wrapper_class(private_server.settings(base, **pool), alias)
        made.append(wrapper)
        return wrapper

    with django_db_blocker.unblock():
        yield make
        for wrapper in made:
            try:
                wrapper.close()
            except Exception:
                pass
        process.retire(alias)


def _query(wrapper) -> int:
    with wrapper.cursor() as cursor:
        cursor.execute(BACKEND_SQL[wrapper.vendor])
        return cursor.fetchone()[0]


def _attempt(wrapper) -> tuple[BaseException | None, float]:
    """One request's first query: (the error or None, seconds it took)."""
    began = time.monotonic()
    try:
        _query(wrapper)
        error = None
    except OperationalError as exc:
        error = exc
    finally:
        wrapper.close()
    return error, time.monotonic() - began


def _is_connection_error(error: BaseException | None, vendor: str) -> bool:
    """Django's OperationalError wrapping the driver's own, not a pool timeout."""
    return (
        isinstance(error, OperationalError)
        and not isinstance(error, PoolTimeout)
        and isinstance(error.__cause__, DRIVER_ERRORS[vendor])
    )


def test_server_down_fails_fast_for_every_request(private_server, make_wrapper):
    vendor = private_server.vendor
    # A warm pool first, then the server goes away.
    warm = make_wrapper(max_size=4, timeout=30, pre_ping=True)
    _query(warm)
    warm.close()
    pool = process.pools[warm.alias]
    private_server.stop()
    try:
        # One request: its idle connection fails the ping, the reconnect is
        # refused, and the error comes at once: no waiting for the pool.
        error, single = _attempt(make_wrapper(max_size=4, timeout=30, pre_ping=True))
        assert _is_connection_error(error, vendor), repr(error)
        stats = pool.stats()
        assert (stats["waits"], stats["timeouts"], stats["ping_failures"]) == (0, 0, 1)
        assert stats["connect_errors"] == 1

        # Sixteen at once (max_size=4: twelve of them find no capacity and queue).
        outcomes: list[tuple[BaseException | None, float]] = []
        start = threading.Barrier(16)

        def request():
            wrapper = make_wrapper(max_size=4, timeout=30, pre_ping=True)
            start.wait()
            outcomes.append(_attempt(wrapper))

        threads = [threading.Thread(target=request) for _ in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not any(thread.is_alive() for thread in threads)
    finally:
        private_server.start()
    assert len(outcomes) == 16
    assert all(_is_connection_error(error, vendor) for error, _ in outcomes), outcomes
    slowest = max(elapsed for _, elapsed in outcomes)
    report(
        f"server down [{vendor}]",
        single_request_s=round(single, 4),
        slowest_of_16_s=round(slowest, 4),
        dials=pool.stats()["connect_errors"],
        backoffs=pool.stats()["connect_backoffs"],
    )
    # timeout is 30 s: nobody waited for it, not even the ones that queued.
    assert single < SLACK
    assert slowest < SLACK
    stats = pool.stats()
    assert stats["timeouts"] == 0 and stats["size"] == 0 and stats["waiting"] == 0
    # And once the server is back, the same pool serves again (after at most one
    # back-off window).
    again = make_wrapper(max_size=4, timeout=30, pre_ping=True)
    wait_for(lambda: _attempt(again)[0] is None, timeout=SLACK, what="the pool to reconnect")
    assert _query(again) > 0
    again.close()


def test_connect_backoff_spares_a_down_server(private_server, make_wrapper):
    """While the server is down, requests fail at once, and the pool dials far
    less often than requests come: a growing, jittered window (capped at
    BACKOFF_MAX) during which a new connection fails with the last error."""
    vendor = private_server.vendor
    clients, duration = 8, 2.0
    private_server.stop()
    try:
        requests = 0
        count = threading.Lock()
        failures: list[BaseException | None] = []

        def client():
            nonlocal requests
            wrapper = make_wrapper(max_size=4, timeout=30)
            deadline = time.monotonic() + duration
            while time.monotonic() < deadline:
                error, _ = _attempt(wrapper)
                with count:
                    requests += 1
                    if not _is_connection_error(error, vendor):
                        failures.append(error)
                time.sleep(0.005)  # a client's pace, not synchronisation

        began = time.monotonic()
        threads = [threading.Thread(target=client) for _ in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        elapsed = time.monotonic() - began
    finally:
        private_server.start()
    assert failures == []  # every request failed with the driver's connection error
    pool = process.pools[make_wrapper().alias]  # the alias all clients shared
    stats = pool.stats()
    dials = stats["connect_errors"]
    # Windows double from BACKOFF_INITIAL up to BACKOFF_MAX, and jitter takes at
    # most half off each; up to max_size requests may dial together at first.
    ramp = math.ceil(math.log2(pool_module.BACKOFF_MAX / pool_module.BACKOFF_INITIAL)) + 1
    bound = 4 + ramp + math.ceil(elapsed / (pool_module.BACKOFF_MAX / 2))
    report(
        f"back-off [{vendor}]",
        requests=requests,
        dials=dials,
        backoffs=stats["connect_backoffs"],
        seconds=round(elapsed, 2),
        dial_bound=bound,
    )
    assert requests == dials + stats["connect_backoffs"]
    assert dials <= bound
    assert dials * 10 <= requests
    # The server is back: the pool notices within one window, without a restart.
    began = time.monotonic()
    wrapper = make_wrapper(max_size=4, timeout=30)
    wait_for(lambda: _attempt(wrapper)[0] is None, timeout=SLACK, what="the pool to reconnect")
    recovered = time.monotonic() - began
    report(f"back-off recovery [{vendor}]", seconds_to_first_success=round(recovered, 3))
    assert recovered < pool_module.BACKOFF_MAX + SLACK
    assert pool.stats()["size"] >= 1


def test_recovery_after_a_restart_under_load(private_server, make_wrapper):
    threads_n = 6
    log: list[tuple[float, bool, float]] = []  # (request began, succeeded, ended)
    stop = threading.Event()

    def client():
        wrapper = make_wrapper(max_size=4, timeout=30)
        deadline = time.monotonic() + 60
        while not stop.is_set() and time.monotonic() < deadline:
            began = time.monotonic()
            try:
                _query(wrapper)
                ok = True
            except OperationalError:
                ok = False
            wrapper.close_if_unusable_or_obsolete()  # the request ends
            log.append((began, ok, time.monotonic()))
            if not ok:
                time.sleep(0.002)  # a client's pace after an error page

    def successes_since(moment: float) -> int:
        return sum(1 for began, ok, _ in list(log) if ok and began >= moment)

    workers = [threading.Thread(target=client) for _ in range(threads_n)]
    for worker in workers:
        worker.start()
    try:
        deadline = time.monotonic() + 30
        while successes_since(0) < 50 and time.monotonic() < deadline:
            time.sleep(0.01)  # poll: steady load before the fault
        went_down = time.monotonic()
        private_server.restart()
        came_back = time.monotonic()  # restart() returns once it accepts connections
        deadline = time.monotonic() + 30
        while successes_since(came_back) < 300 and time.monotonic() < deadline:
            time.sleep(0.01)  # poll: the load recovers
    finally:
        stop.set()
        for worker in workers:
            worker.join()
    before = [ok for began, ok, _ in log if began < went_down]
    during = [ok for began, ok, _ in log if went_down <= began < came_back]
    after = sorted((began, ok, ended) for began, ok, ended in log if began >= came_back)
    # Before the restart began, only requests already in flight can have failed
    # (the shutdown caught them): one per client at most.
    assert before.count(False) <= threads_n
    assert sum(ok for _, ok, _ in after) >= 300
    # Once the server accepts connections again, the pool notices within one
    # back-off window: requests until the first successful connect (the probe)
    # has completed fail at once, without dialling.
    first_ok = min(ended for _, ok, ended in after if ok)
    in_window = [ok for began, ok, _ in after if began < first_ok]
    settled = [ok for began, ok, _ in after if began >= first_ok]
    report(
        f"restart under load [{private_server.vendor}]",
        failed_before=before.count(False),
        failed_during=during.count(False),
        requests_during=len(during),
        seconds_to_first_success=round(first_ok - came_back, 3),
        failed_in_backoff_window=in_window.count(False),
        failed_after_first_success=settled.count(False),
        succeeded_after=settled.count(True),
    )
    assert first_ok - came_back < pool_module.BACKOFF_MAX + SLACK
    # From then on the back-off is over: only requests already in flight can
    # fail (one per client), plus at most max_size connections from before the
    # restart that nobody had used since.
    assert settled.count(False) <= 4 + threads_n, (len(during), during.count(False))
    # ... and those failures come first: the last 200 requests all succeeded.
    assert all(settled[-200:])


@pytest.mark.django_db(transaction=True, databases=["default", "mysql"])
def test_idle_connections_killed_server_side_cost_no_request(make_pooled, vendor):
    """pre_ping checks a connection that sat idle longer than its threshold, so
    connections terminated while idle are replaced invisibly: zero errors."""
    pooled = make_pooled(vendor, max_size=4, pre_ping=0.2)
    wrappers = [pooled.wrapper() for _ in range(4)]
    ids = {pooled.backend_id(w) for w in wrappers}
    for w in wrappers:
        w.close()
    assert len(ids) == 4 and pooled.stats()["idle"] == 4
    for ident in ids:
        pooled.kill(ident)
    wait_for(lambda: not ids & pooled.server_sessions(), what="the kills")
    time.sleep(0.25)  # the idleness pre_ping looks at is what is under test
    # Four requests at once: each takes one of the four dead connections, whose
    # liveness check fails, and gets a new connection instead, invisibly.
    holders = [pooled.wrapper() for _ in range(4)]
    assert not {pooled.backend_id(w) for w in holders} & ids
    for w in holders:
        w.close()
    stats = pooled.stats()
    assert stats["ping_failures"] == 4
    assert stats["closed_by_reason"].get("ping_failed") == 4
    errors: list[BaseException] = []

    def request():
        wrapper = pooled.wrapper()
        try:
            for _ in range(5):
                assert pooled.backend_id(wrapper) not in ids
                wrapper.close_if_unusable_or_obsolete()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=request) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


# -- the network breaks between the pool and the server (tests/proxy.py) ---------------

#: OPTIONS['connect_timeout'] of the proxied pools (both drivers take it, seconds).
CONNECT_TIMEOUT = 2


@pytest.fixture
def proxied(make_pooled, vendor):
    """A pool on the shared server of *vendor*, through a proxy of its own."""
    proxies: list[Proxy] = []

    def make(**pool) -> tuple:
        pooled = make_pooled(vendor, **pool)
        sd = pooled.settings_dict
        proxy = Proxy(int(sd["PORT"] or SHARED_PORTS[vendor]))
        proxies.append(proxy)
        sd["HOST"], sd["PORT"] = "127.0.0.1", str(proxy.port)
        sd["OPTIONS"] = {**sd["OPTIONS"], "connect_timeout": CONNECT_TIMEOUT}
        return pooled, proxy

    yield make
    for proxy in proxies:
        proxy.close()  # before the pools close: their sockets see the cut


def _ping_timeout(timeout: float) -> float:
    return max(pool_module.PING_TIMEOUT_MIN, min(timeout, pool_module.PING_TIMEOUT_MAX))


@pytest.mark.django_db(transaction=True, databases=["default", "mysql"])
def test_black_holed_network_fails_within_bounds_and_recovers(proxied, vendor):
    timeout = 3.0
    pooled, proxy = proxied(max_size=1, timeout=timeout, pre_ping=True)
    warm = pooled.wrapper()
    old_id = pooled.backend_id(warm)
    warm.close()
    pool = pooled.pool
    proxy.black_hole()

    # Two requests at once on a pool of one: one pings the idle connection (no
    # answer: ping timeout), discards it and dials (no answer: connect_timeout);
    # the other waits for the pool, at most `timeout`.
    outcomes: list[tuple[BaseException | None, float]] = []
    start = threading.Barrier(2)

    def request():
        wrapper = pooled.wrapper()
        start.wait()
        outcomes.append(_attempt(wrapper))

    threads = [threading.Thread(target=request) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads)  # never hangs
    worst = _ping_timeout(timeout) + CONNECT_TIMEOUT
    assert len(outcomes) == 2
    assert all(isinstance(error, OperationalError) for error, _ in outcomes), outcomes
    assert any(_is_connection_error(error, pooled.vendor) for error, _ in outcomes), outcomes
    for error, elapsed in outcomes:
        bound = timeout if isinstance(error, PoolTimeout) else worst
        assert elapsed < bound + SLACK, (error, elapsed)
    stats = pool.stats()
    assert (stats["ping_failures"], stats["closed_by_reason"]["ping_failed"]) == (1, 1)
    assert stats["connect_errors"] == 1  # one dial, however many requests
    assert stats["size"] == 0

    # Still black-holed: the next request fails too, bounded by connect_timeout
    # (at once, if it falls in the back-off window).
    error, third = _attempt(pooled.wrapper())
    assert _is_connection_error(error, pooled.vendor)
    assert third < CONNECT_TIMEOUT + SLACK

    # The network comes back: the same pool serves again, no restart.
    proxy.resume()
    began = time.monotonic()
    wait_for(
        lambda: _attempt(pooled.wrapper())[0] is None,
        timeout=pool_module.BACKOFF_MAX + CONNECT_TIMEOUT + SLACK,
        what="the pool to recover",
    )
    recovered = time.monotonic() - began
    wrapper = pooled.wrapper()
    ids = set()
    for _ in range(10):
        ids.add(pooled.backend_id(wrapper))
        wrapper.close()
    assert old_id not in ids and len(ids) == 1  # a new connection, then reused
    stats = pool.stats()
    assert stats["size"] == 1
    report(
        f"black hole [{vendor}]",
        timeout=timeout,
        ping_timeout=_ping_timeout(timeout),
        connect_timeout=CONNECT_TIMEOUT,
        first_two=sorted((round(elapsed, 3), type(error).__name__) for error, elapsed in outcomes),
        third_s=round(third, 3),
        seconds_to_recover=round(recovered, 3),
        connect_errors=stats["connect_errors"],
        connect_backoffs=stats["connect_backoffs"],
    )


@pytest.mark.django_db(transaction=True, databases=["default", "mysql"])
def test_network_cut_while_idle_and_in_use(proxied, vendor):
    pooled, proxy = proxied(max_size=2, timeout=5, pre_ping=True)
    wrappers = [pooled.wrapper() for _ in range(2)]
    ids = {pooled.backend_id(w) for w in wrappers}
    for w in wrappers:
        w.close()
    proxy.cut()
    wait_for(lambda: not ids & pooled.server_sessions(), what="the server to see the cut")
    # Idle connections cut: pre_ping finds out and replaces them, invisibly.
    wrappers = [pooled.wrapper() for _ in range(2)]
    new_ids = {pooled.backend_id(w) for w in wrappers}
    assert len(new_ids) == 2 and not new_ids & ids
    stats = pooled.stats()
    assert (stats["ping_failures"], stats["connect_errors"]) == (2, 0)
    wrappers[1].close()
    # Cut while a request holds its connection: that request's query fails (it
    # was in flight), the connection is discarded on return, the next one works.
    holder = wrappers[0]
    proxy.cut()
    with pytest.raises(OperationalError):
        pooled.backend_id(holder)
    holder.close()
    stats = pooled.stats()
    discarded = stats["closed_by_reason"]
    assert discarded.get("broken", 0) + discarded.get("reset_failed", 0) == 1
    after = pooled.wrapper()
    assert pooled.backend_id(after) not in ids | new_ids
    after.close()
    stats = pooled.stats()
    assert stats["size"] <= 2 and stats["connect_errors"] == 0
    report(
        f"network cut [{vendor}]",
        ping_failures=stats["ping_failures"],
        closed_by_reason={k: v for k, v in stats["closed_by_reason"].items() if v},
        connect_errors=stats["connect_errors"],
    )


# -- Django's own health checks keep working -------------------------------------------


@pytest.mark.django_db(transaction=True, databases=["default", "mysql"])
def test_conn_health_checks_and_conn_max_age_as_stock(make_pooled, vendor):
    """CONN_MAX_AGE > 0 and CONN_HEALTH_CHECKS keep Django's meaning: the thread
    keeps its connection across requests, Django checks it at the first query
    of a request, and one that fails the check is replaced (and never pooled)."""
    pooled = make_pooled(vendor, max_size=2, pre_ping=False)  # Django's check only
    pooled.settings_dict.update(CONN_HEALTH_CHECKS=True, CONN_MAX_AGE=60)
    wrapper = pooled.wrapper()

    def request() -> int:
        # What Django's request_started / request_finished handlers do.
        wrapper.close_if_unusable_or_obsolete()
        try:
            return pooled.backend_id(wrapper)
        finally:
            wrapper.close_if_unusable_or_obsolete()

    first, second = request(), request()
    assert first == second
    stats = pooled.stats()
    # Kept by the thread between requests, as with the stock engine.
    assert (stats["checkouts"], stats["in_use"], stats["idle"]) == (1, 1, 0)
    pooled.kill(first)
    wait_for(lambda: first not in pooled.server_sessions(), what="the kill")
    third = request()  # the health check fails; Django reconnects; no error
    assert third != first
    stats = pooled.stats()
    assert stats["closed_by_reason"]["broken"] == 1
    assert (stats["size"], stats["in_use"], stats["idle"]) == (1, 1, 0)
    assert request() == third

    # CONN_MAX_AGE passing: Django closes it at the end of a request, which gives
    # it back to the pool (healthy: reused, not closed).
    wrapper.settings_dict["CONN_MAX_AGE"] = 0.05
    wrapper.close_at = time.monotonic() + 0.05
    wait_for(lambda: time.monotonic() > wrapper.close_at, what="CONN_MAX_AGE to pass")
    wrapper.close_if_unusable_or_obsolete()
    assert wrapper.connection is None
    stats = pooled.stats()
    assert (stats["size"], stats["in_use"], stats["idle"]) == (1, 0, 1)
    assert request() == third  # reused from the pool

    # An error Django saw, on a connection that is still fine: kept, as stock.
    wrapper.settings_dict["CONN_MAX_AGE"] = 60
    wrapper.close_if_unusable_or_obsolete()
    with pytest.raises(DatabaseError):
        with wrapper.cursor() as cursor:
            cursor.execute("SELECT * FROM dpb_no_such_table")
    assert wrapper.errors_occurred
    wrapper.close_if_unusable_or_obsolete()
    assert wrapper.connection is not None
    assert pooled.backend_id(wrapper) == third


# -- the watchdog that bounds mysqlclient's (and psycopg2's) liveness check ----------


def test_watchdog_bounds_a_blocking_call_and_spares_a_finished_one():
    class Conn:
        OperationalError = ConnectionError

        def __init__(self, sock):
            self.fileno = sock.fileno

    stuck, silent = socket.socketpair()
    began = time.monotonic()
    with pytest.raises(ConnectionError, match="no answer from the server within 0.2 s"):
        with watchdog.Watchdog(Conn(stuck), 0.2):
            stuck.recv(1)  # blocks: nothing is ever sent; the watchdog ends it
    assert time.monotonic() - began < 0.2 + SLACK
    assert stuck.recv(1) == b""  # shut down, not closed: the descriptor is still ours
    stuck.close()
    silent.close()

    # A call that finished in time: its socket is never touched afterwards.
    ours, peer = socket.socketpair()
    peer.send(b"x")
    with watchdog.Watchdog(Conn(ours), 0.2):
        assert ours.recv(1) == b"x"
    deadline = time.monotonic() + 0.5
    wait_for(lambda: time.monotonic() > deadline, what="the deadline to pass")
    peer.send(b"y")
    assert ours.recv(1) == b"y"
    ours.close()
    peer.close()


def test_watchdog_thread_ends_when_idle():
    ours, peer = socket.socketpair()

    class Conn:
        OperationalError = ConnectionError
        fileno = ours.fileno

    with watchdog.Watchdog(Conn(), 0.1):
        pass
    thread = watchdog._watchdogs._thread
    assert thread is not None and thread.is_alive()
    thread.join(watchdog._IDLE_EXIT + 0.1 + SLACK)
    assert not thread.is_alive() and watchdog._watchdogs._thread is None
    with watchdog.Watchdog(Conn(), 0.1):  # and comes back when needed
        pass
    assert watchdog._watchdogs._thread is not None
    ours.close()
    peer.close()


@pytest.mark.django_db(transaction=True, databases=["default", "mysql"])
def test_a_corrected_password_connects_at_once_despite_the_back_off():
    """A connect refused for a wrong PASSWORD opens the back-off window; putting the
    right password back must not be answered with the old refusal (the stock engine
    simply dials again). The password is part of what names a pool, so the corrected
    settings get a pool of their own. MariaDB: PostgreSQL here trusts any password."""
    alias = f"dpb_fault{next(_aliases)}"
    wrapper = MySQLWrapper(dict(connections["mysql"].settings_dict), alias)
    right = wrapper.settings_dict["PASSWORD"]
    try:
        wrapper.settings_dict["PASSWORD"] = right + "-wrong-dpb"
        with pytest.raises(OperationalError) as refused:
            _query(wrapper)
        assert refused.value.args[0] == 1045  # Access denied
        wrapper.settings_dict["PASSWORD"] = right
        assert _query(wrapper) > 0  # the connection id of a fresh session
        assert figures.stats(alias)["connect_backoffs"] == 0
    finally:
        wrapper.close()
        process.retire(alias)


@pytest.mark.django_db(transaction=True, databases=["default", "mysql"])
@pytest.mark.parametrize("base_alias", ["default", "mysql"])
def test_the_back_off_note_is_on_the_drivers_error_under_djangos(base_alias):
    """Inside the connect back-off a checkout raises a copy of the last connect
    error with a note. Django wraps every driver error in its own class, with the
    driver's as ``__cause__``: the note is there (and in the printed traceback),
    not on the exception the request catches. docs/failure-behaviour.md says so."""
    port = free_port()  # nothing listens there: connection refused
    base = connections[base_alias].settings_dict
    settings_dict = {**base, "HOST": "127.0.0.1", "PORT": str(port), "POOL": {"max_size": 2}}
    wrapper_class = PGWrapper if base_alias == "default" else MySQLWrapper
    alias = f"dpb_fault_note{next(_aliases)}"
    try:
        for _attempt in ("dials", "backs off"):
            wrapper = wrapper_class(dict(settings_dict), alias)
            with pytest.raises(OperationalError) as info:
                wrapper.ensure_connection()
        error = info.value
        assert type(error) is OperationalError  # django.db.utils', not the driver's
        assert not getattr(error, "__notes__", None)
        # The copy also carries the note of the connect it copies (the frames cut
        # for the password's sake), but one back-off note only.
        notes = [
            note
            for note in error.__cause__.__notes__
            if note.startswith("django_poolbackend: no connection attempt was made;")
        ]
        assert len(notes) == 1, error.__cause__.__notes__
        assert isinstance(error.__cause__, DRIVER_ERRORS[wrapper.vendor])
        assert process.pools[alias].stats()["connect_backoffs"] == 1
    finally:
        process.retire(alias)
