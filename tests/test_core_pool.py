"""Unit tests of the driver-agnostic pool core, against a fake DB-API driver.

No database server and no Django are involved: ``django_poolbackend.core`` imports
nothing from Django, and the driver below is a stub in the spirit of HikariCP's
stub driver. Every wait between threads is an event or a poll with a deadline,
never a bare sleep used as synchronisation.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from django_poolbackend.core import (
    ConfigError,
    Pool,
    PoolClosed,
    PoolConfig,
    PoolError,
    PoolTimeout,
    Slot,
)
from django_poolbackend.core import pool as pool_module

#: Upper bound for anything that should happen "soon"; only reached on failure.
DEADLINE = 10.0


# -- the fake driver ------------------------------------------------------------


class FakeConnection:
    _ids = itertools.count(1)

    def __init__(self, tag: str = "") -> None:
        self.id = next(self._ids)
        self.tag = tag
        self.closed = False
        self.close_calls = 0
        self.pings = 0
        self.abandoned = False

    def __repr__(self) -> str:
        return f"<FakeConnection {self.id}{' ' + self.tag if self.tag else ''}>"


class FakeDriver:
    """Records every call; can make pings fail and connects slow or failing."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.created: list[FakeConnection] = []
        self.closed: list[FakeConnection] = []
        self.abandoned: list[FakeConnection] = []
        self.pinged: list[FakeConnection] = []
        self.ping_timeouts: list[float | None] = []
        self.fail_ping = False
        self.connect_delay = 0.0
        self.connect_error: BaseException | None = None
        self.open_now = 0
        self.max_open = 0
        #: When set, the first close() of ``gate_conn`` signals ``close_entered``
        #: and blocks until ``close_gate`` is set.
        self.gate_conn: FakeConnection | None = None
        self.close_entered = threading.Event()
        self.close_gate = threading.Event()

    # The opener (what the Django layer passes to getconn()).
    def connect(self, tag: str = "") -> FakeConnection:
        if self.connect_delay:
            time.sleep(self.connect_delay)
        if self.connect_error is not None:
            raise self.connect_error
        conn = FakeConnection(tag)
        with self._lock:
            self.created.append(conn)
            self.open_now += 1
            self.max_open = max(self.max_open, self.open_now)
        return conn

    def opener(self, tag: str = "") -> Callable[[], FakeConnection]:
        return lambda: self.connect(tag)

    # The Driver protocol.
    def close(self, conn: FakeConnection) -> None:
        if conn is self.gate_conn and not self.close_entered.is_set():
            self.close_entered.set()
            assert self.close_gate.wait(DEADLINE)
        with self._lock:
            conn.close_calls += 1
            if not conn.closed:
                self.open_now -= 1
            conn.closed = True
            self.closed.append(conn)

    def ping(self, conn: FakeConnection, timeout: float | None = None) -> None:
        with self._lock:
            conn.pings += 1
            self.pinged.append(conn)
            self.ping_timeouts.append(timeout)
        if self.fail_ping:
            raise OSError("server closed the connection unexpectedly")

    def abandon(self, conn: FakeConnection) -> None:
        with self._lock:
            conn.abandoned = True
            self.abandoned.append(conn)


# -- helpers ----------------------------------------------------------------------


def make_pool(driver: FakeDriver | None = None, name: str = "x", **settings: Any) -> Pool:
    settings.setdefault("pre_ping", False)
    return Pool(PoolConfig.from_mapping(settings), driver or FakeDriver(), name=name)


def wait_until(predicate: Callable[[], bool], timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(0.001)


def wait_for_waiters(pool: Pool, n: int) -> None:
    wait_until(lambda: pool.stats()["waiting"] == n)


class Worker(threading.Thread):
    """Runs *fn* in a thread and keeps its result or exception."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        super().__init__(daemon=True)
        self.fn = fn
        self.result: Any = None
        self.error: BaseException | None = None
        self.elapsed: float | None = None

    def run(self) -> None:
        start = time.monotonic()
        try:
            self.result = self.fn()
        except BaseException as exc:  # noqa: B036 - recorded for the test
            self.error = exc
        finally:
            self.elapsed = time.monotonic() - start

    def finish(self) -> Any:
        self.join(DEADLINE)
        assert not self.is_alive(), "worker thread did not finish"
        return self.result


def consistent(stats: dict[str, Any]) -> None:
    assert stats["size"] == stats["idle"] + stats["in_use"]
    assert stats["size"] >= 0 and stats["idle"] >= 0 and stats["in_use"] >= 0
    assert stats["closed"] == sum(stats["closed_by_reason"].values())


# -- PoolConfig ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"maxsize": 3}, "maxsize"),
        ({"max_size": 5, "bogus": 1}, "bogus"),
        ({"max_size": True}, "max_size"),
        ({"min_size": False}, "min_size"),
        ({"max_uses": True}, "max_uses"),
        ({"max_waiting": True}, "max_waiting"),
        ({"max_size": 0}, "max_size"),
        ({"max_size": 2.0}, "max_size"),
        ({"max_size": "4"}, "max_size"),
        ({"min_size": -1}, "min_size"),
        ({"max_uses": -1}, "max_uses"),
        ({"min_size": 5, "max_size": 2}, "min_size"),
        ({"min_size": 11}, "min_size"),  # default max_size is 10
        ({"timeout": -1}, "timeout"),
        ({"timeout": -0.001}, "timeout"),
        ({"timeout": float("nan")}, "timeout"),
        ({"timeout": float("inf")}, "timeout"),
        ({"timeout": True}, "timeout"),
        ({"timeout": "10"}, "timeout"),
        ({"timeout": None}, "timeout"),
        ({"max_lifetime": float("nan")}, "max_lifetime"),
        ({"max_lifetime": 0}, "max_lifetime"),
        ({"max_lifetime": -5}, "max_lifetime"),
        ({"max_idle": float("inf")}, "max_idle"),
        ({"max_idle": 0}, "max_idle"),
        ({"leak_timeout": -1}, "leak_timeout"),
        ({"leak_timeout": None}, "leak_timeout"),
        ({"pre_ping": "yes"}, "pre_ping"),
        ({"pre_ping": -1}, "pre_ping"),
        ({"pre_ping": float("nan")}, "pre_ping"),
        ({"pre_ping": None}, "pre_ping"),
        ({"reset": "bogus"}, "reset"),
        ({"reset": ""}, "reset"),
        ({"reset": "."}, "reset"),
        ({"reset": None}, "reset"),
        ({"connect_params": 3}, "connect_params"),
        ({"connect_params": "nodots"}, "connect_params"),
    ],
)
def test_config_rejects(raw: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        PoolConfig.from_mapping(raw)
    err = info.value
    assert err.key == key
    assert isinstance(err, ValueError)
    assert str(err).startswith(f"{key}=")
    if key in raw:
        assert err.value is raw[key] or (isinstance(raw[key], float) and math.isnan(raw[key]))


def test_config_unknown_key_lists_allowed_keys() -> None:
    with pytest.raises(ConfigError) as info:
        PoolConfig.from_mapping({"maxsize": 3})
    assert info.value.value == 3
    assert "max_size" in info.value.allowed and "pre_ping" in info.value.allowed


def test_config_not_a_mapping() -> None:
    with pytest.raises(ConfigError) as info:
        PoolConfig.from_mapping([("max_size", 3)])  # type: ignore[arg-type]
    assert info.value.key is None


def test_config_first_error_follows_field_order() -> None:
    # Unknown keys are reported first, then fields in declaration order.
    with pytest.raises(ConfigError) as info:
        PoolConfig.from_mapping({"timeout": -1, "max_size": 0, "zzz": 1})
    assert info.value.key == "zzz"
    with pytest.raises(ConfigError) as info:
        PoolConfig.from_mapping({"timeout": -1, "max_size": 0})
    assert info.value.key == "max_size"


def _reset_callable(conn: Any) -> None:  # used as a callable reset policy
    pass


@pytest.mark.parametrize(
    ("raw", "attr", "expected"),
    [
        ({"pre_ping": True}, "pre_ping", True),
        ({"pre_ping": False}, "pre_ping", False),
        ({"pre_ping": 0.5}, "pre_ping", 0.5),
        ({"pre_ping": 0}, "pre_ping", 0.0),
        ({"reset": "full"}, "reset", "full"),
        ({"reset": "rollback"}, "reset", "rollback"),
        ({"reset": "myapp.db.reset_session"}, "reset", "myapp.db.reset_session"),
        ({"reset": _reset_callable}, "reset", _reset_callable),
        ({"connect_params": "myapp.db.params"}, "connect_params", "myapp.db.params"),
        ({"connect_params": None}, "connect_params", None),
        ({"max_lifetime": None}, "max_lifetime", None),
        ({"max_idle": None}, "max_idle", None),
        ({"max_lifetime": 60}, "max_lifetime", 60.0),
        ({"timeout": 0}, "timeout", 0.0),
        ({"timeout": 5}, "timeout", 5.0),
        ({"min_size": 3, "max_size": 3}, "min_size", 3),
        ({"max_size": 1}, "max_size", 1),
        ({"max_waiting": 0}, "max_waiting", 0),
        ({"max_uses": 100}, "max_uses", 100),
        ({"leak_timeout": 2.5}, "leak_timeout", 2.5),
    ],
)
def test_config_accepts(raw: dict[str, Any], attr: str, expected: Any) -> None:
    config = PoolConfig.from_mapping(raw)
    value = getattr(config, attr)
    assert value == expected
    assert type(value) is type(expected)


def test_config_defaults_and_as_dict() -> None:
    assert PoolConfig.from_mapping({}) == PoolConfig()
    config = PoolConfig.from_mapping({"reset": _reset_callable, "max_size": 4})
    out = config.as_dict()
    assert out["reset"] == f"{__name__}._reset_callable"
    assert out["max_size"] == 4
    # Only the keys the pool reads: expected_processes, a POOL key that only the
    # system checks read, is the Django layer's (tests/test_config_validation.py).
    assert set(out) == {
        "min_size", "max_size", "timeout", "max_waiting", "max_lifetime",
        "max_idle", "max_uses", "pre_ping", "reset", "leak_timeout",
        "connect_params", "release",
    }  # fmt: skip


def test_errors_hierarchy() -> None:
    assert issubclass(PoolTimeout, PoolError)
    assert issubclass(PoolClosed, PoolError)


# -- checkout and reuse ---------------------------------------------------------------


def test_first_checkout_connects_and_slot_fields() -> None:
    driver = FakeDriver()
    pool = make_pool(driver, max_size=2)
    before = time.monotonic()
    slot = pool.getconn(driver.opener())
    assert isinstance(slot, Slot)
    assert slot.conn is driver.created[0]
    assert slot.pool is pool
    assert slot.uses == 1
    assert before <= slot.created <= time.monotonic()
    assert slot.last_used == slot.created
    assert not slot.closed
    s = pool.stats()
    assert (s["size"], s["idle"], s["in_use"], s["connects"]) == (1, 0, 1, 1)
    pool.putconn(slot)
    s = pool.stats()
    assert (s["size"], s["idle"], s["in_use"]) == (1, 1, 0)


def test_lifo_reuse() -> None:
    driver = FakeDriver()
    pool = make_pool(driver, max_size=3)
    a = pool.getconn(driver.opener("a"))
    b = pool.getconn(driver.opener("b"))
    assert a.conn is not b.conn
    pool.putconn(a)
    pool.putconn(b)
    again = pool.getconn(driver.opener("new"))
    assert again is b  # the slot object itself is reused
    assert again.conn.tag == "b"
    assert again.uses == 2
    again2 = pool.getconn(driver.opener("new"))
    assert again2 is a
    assert len(driver.created) == 2
    s = pool.stats()
    assert (s["connects"], s["requests"], s["checkouts"]) == (2, 4, 4)


def test_hard_cap_under_burst() -> None:
    driver = FakeDriver()
    driver.connect_delay = 0.005  # widen the race window at start-up
    pool = make_pool(driver, max_size=4, timeout=DEADLINE)
    n_threads, rounds = 32, 3
    barrier = threading.Barrier(n_threads)
    held_lock = threading.Lock()
    held = {"now": 0, "max": 0}
    conns_seen: set[int] = set()

    def work() -> int:
        barrier.wait(DEADLINE)
        for _ in range(rounds):
            slot = pool.getconn(driver.opener())
            with held_lock:
                held["now"] += 1
                held["max"] = max(held["max"], held["now"])
                conns_seen.add(slot.conn.id)
                assert not slot.conn.closed
            time.sleep(0.001)
            with held_lock:
                held["now"] -= 1
            pool.putconn(slot)
        return rounds

    workers = [Worker(work) for _ in range(n_threads)]
    for w in workers:
        w.start()
    for w in workers:
        assert w.finish() == rounds, w.error
    assert driver.max_open <= 4
    assert len(driver.created) <= 4
    assert len(conns_seen) <= 4
    assert held["max"] <= 4
    s = pool.stats()
    consistent(s)
    assert s["size"] <= 4 and s["in_use"] == 0 and s["waiting"] == 0
    assert s["requests"] == n_threads * rounds
    assert s["checkouts"] == n_threads * rounds
    assert s["timeouts"] == 0 and s["connect_errors"] == 0
    assert s["waits"] > 0  # the burst really did queue


def test_fifo_fairness() -> None:
    driver = FakeDriver()
    pool = make_pool(driver, max_size=1, timeout=DEADLINE)
    holder = pool.getconn(driver.opener())
    order: list[int] = []
    order_lock = threading.Lock()

    def waiter(i: int) -> Callable[[], int]:
        def run() -> int:
            slot = pool.getconn(driver.opener())
            with order_lock:
                order.append(i)
            conn_id = slot.conn.id
            pool.putconn(slot)
            return conn_id

        return run

    workers = []
    for i in range(6):
        w = Worker(waiter(i))
        w.start()
        wait_for_waiters(pool, i + 1)  # verifiably queued before the next starts
        workers.append(w)
    pool.putconn(holder)
    ids = [w.finish() for w in workers]
    assert all(w.error is None for w in workers)
    assert order == list(range(6))
    assert ids == [holder.conn.id] * 6  # handed over, never reconnected
    s = pool.stats()
    consistent(s)
    assert (s["connects"], s["waits"], s["checkouts"], s["size"]) == (1, 6, 7, 1)


def test_timeout_message_and_no_swallowed_connection() -> None:
    driver = FakeDriver()
    pool = make_pool(driver, name="timeout-pool", max_size=1, timeout=DEADLINE)
    holder = pool.getconn(driver.opener())
    # Someone else is already queued (with a long timeout).
    patient = Worker(lambda: pool.getconn(driver.opener()))
    patient.start()
    wait_for_waiters(pool, 1)

    timeout = 0.2
    start = time.monotonic()
    with pytest.raises(PoolTimeout) as info:
        pool.getconn(driver.opener(), timeout=timeout)
    elapsed = time.monotonic() - start
    assert elapsed >= timeout - 1e-3  # 1 ms of clock rounding, no more
    assert elapsed < DEADLINE
    msg = str(info.value)
    assert "'timeout-pool'" in msg
    assert "max_size=1" in msg
    assert "after waiting 0.2 s" in msg
    assert "1 connections are in use" in msg
    assert "1 other requests are waiting" in msg

    s = pool.stats()
    assert (s["waiting"], s["timeouts"], s["in_use"]) == (1, 1, 1)

    # The returned connection goes to the patient waiter, not the timed-out one.
    pool.putconn(holder)
    got = patient.finish()
    assert patient.error is None and got is holder

    # And once that is back, the next checkout gets it at once.
    pool.putconn(got)
    waits = pool.stats()["waits"]
    again = pool.getconn(driver.opener(), timeout=timeout)
    assert again is holder
    assert pool.stats()["waits"] == waits  # served from idle, no queueing
    s = pool.stats()
    consistent(s)
    assert (s["size"], s["idle"], s["in_use"], s["waiting"]) == (1, 0, 1, 0)
    assert (s["connects"], s["timeouts"]) == (1, 1)
    assert s["checkouts"] == 3  # holder, patient, again
    assert s["requests"] == 4


def test_timed_out_waiter_alone_leaves_connection_idle() -> None:
    driver = FakeDriver()
    pool = make_pool(driver, max_size=1)
    holder = pool.getconn(driver.opener())
    with pytest.raises(PoolTimeout) as info:
        pool.getconn(driver.opener(), timeout=0.05)
    assert "0 other requests are waiting" in str(info.value)
    assert pool.stats()["waiting"] == 0
    pool.putconn(holder)
    s = pool.stats()
    assert (s["idle"], s["in_use"], s["size"]) == (1, 0, 1)
    assert pool.getconn(driver.opener(), timeout=0.05) is holder


def test_timeout_from_config_and_zero_timeout() -> None:
    driver = FakeDriver()
    pool = make_pool(driver, max_size=1, timeout=0.05)
    holder = pool.getconn(driver.opener())
    start = time.monotonic()
    with pytest.raises(PoolTimeout):
        pool.getconn(driver.opener())
    assert time.monotonic() - start >= 0.05 - 1e-3
    with pytest.raises(PoolTimeout):
        pool.getconn(driver.opener(), timeout=0)
    assert pool.stats()["timeouts"] == 2
    pool.putconn(holder)


def test_max_waiting_rejects_at_once() -> None:
    driver = FakeDriver()
    pool = make_pool(driver, max_size=1, max_waiting=1, timeout=30)
    holder = pool.getconn(driver.opener())
    queued = Worker(lambda: pool.getconn(driver.opener()))
    queued.start()
    wait_for_waiters(pool, 1)

    start = time.monotonic()
    with pytest.raises(PoolTimeout) as info:
        pool.getconn(driver.opener())
    elapsed = time.monotonic() - start
    assert elapsed < 5  # well under timeout=30: it did not wait
    msg = str(info.value)
    assert "max_waiting=1" in msg and "1 requests are already waiting" in msg
    assert "max_size=1" in msg and "'x'" in msg
    s = pool.stats()
    assert (s["rejected"], s["timeouts"], s["waiting"], s["waits"]) == (1, 0, 1, 1)

    pool.putconn(holder)
    assert queued.finish() is holder
    s = pool.stats()
    assert (s["checkouts"], s["requests"], s["waiting"]) == (2, 3, 0)


# -- retirement: lifetime, idleness, uses ----------------------------------------------


def test_max_lifetime_closes_on_return() -> None:
    driver = FakeDriver()
    pool = make_pool(driver, max_size=2, max_lifetime=0.05)
    slot = pool.getconn(driver.opener())
    assert slot.created + 0.045 - 1e-9 <= slot.expires <= slot.created + 0.05 + 1e-9
    wait_until(lambda: time.monotonic() >= slot.expires, timeout=2)
    pool.putconn(slot)
    assert slot.closed and slot.conn.closed and slot.conn.close_calls == 1
    s = pool.stats()
    assert s["closed_by_reason"] == {"lifetime": 1}
    assert (s["size"], s["idle"]) == (0, 0)
    # Returning it again (a caller bug) is a no-op.
    pool.putconn(slot)
    assert pool.stats()["size"] == 0 and slot.conn.close_calls == 1


def test_max_lifetime_checked_at_checkout() -> None:
    driver = FakeDriver()
    pool = make_pool(driver, max_size=1, max_lifetime=60)
    old = pool.getconn(driver.opener("old"))
    pool.putconn(old)
    old.expires = time.monotonic() - 1  # expired while idle
    new = pool.getconn(driver.opener("new"))
    assert new is not old and new.conn.tag == "new"
    assert old.conn.closed
    s = pool.stats()
    assert s["closed_by_reason"] == {"lifetime": 1}
    assert (s["size"], s["in_use"], s["connects"]) == (1, 1, 2)


def test_lifetime_jitter_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    pool = make_pool(max_size=1)
    lifetime = 100.0
    for _ in range(500):
        slot = Slot(object(), pool, 1000.0, lifetime)
        assert 1000.0 + 0.9 * lifetime <= slot.expires <= 1000.0 + lifetime
    # The extremes of random.random().
    monkeypatch.setattr(pool_module.random, "random", lambda: 0.0)
    assert Slot(object(), pool, 1000.0, lifetime).expires == 1000.0 + lifetime
    monkeypatch.setattr(pool_module.random, "random", lambda: 0.9999999999)
    assert Slot(object(), pool, 1000.0, lifetime).expires == pytest.approx(1000.0 + 0.9 * lifetime)
    assert Slot(object(), pool, 1000.0, None).expires == math.inf


def test_jitter_spreads_expiry() -> None:
    driver = FakeDriver()
    pool = make_pool(driver, max_size=20, max_lifetime=1000)
    slots = [pool.getconn(driver.opener()) for _ in range(20)]
    offsets = [s.expires - s.created for s in slots]
    assert all(900 <= o <= 1000 for o in offsets)
    assert len({round(o, 6) for o in offsets}) > 1  # not all the same


def test_idleness_alone_does_not_replace_a_connection_at_checkout() -> None:
    """By design: idle retirement trims the coldest connection on return (and, in a
    quiet process, the maintenance tick); a checkout reuses the warmest one, and
    pre_ping (not max_idle) is what guards against a server-side idle timeout."""
    driver = FakeDriver()
    pool = make_pool(driver, max_size=2, max_idle=0.5, pre_ping=0.1)
    a = pool.getconn(driver.opener("a"))
    pool.putconn(a)
    a.last_used = time.monotonic() - 1.0  # idle for longer than max_idle
    assert pool.getconn(driver.opener("b")) is a
    s = pool.stats()
    assert s["closed_by_reason"] == {}
    assert s["pings"] == 1  # idle past pre_ping: checked, found alive, reused


def test_max_idle_fresh_connection_is_reused() -> None:
    driver = FakeDriver()
    pool = make_pool(driver, max_size=2, max_idle=60)
    a = pool.getconn(driver.opener())
    pool.putconn(a)
    assert pool.getconn(driver.opener()) is a
    assert pool.stats()["closed"] == 0


def test_trim_on_return_keeps_min_size() -> None:
    driver = FakeDriver()
    pool = make_pool(driver, min_size=2, max_size=3, max_idle=0.5)
    a, b, c = (pool.getconn(driver.opener(t)) for t in "abc")
    pool.putconn(a)
    a.last_used = time.monotonic() - 1.0
    pool.putconn(b)  # size 3 > min_size 2: the coldest (a) is trimmed
    assert a.conn.closed and not b.conn.closed
    s = pool.stats()
    assert s["closed_by_reason"] == {"idle": 1}
    assert (s["size"], s["idle"], s["in_use"]) == (2, 1, 1)

    b.last_used = time.monotonic() - 1.0
    pool.putconn(c)  # size 2 == min_size: b is stale but kept
    assert not b.conn.closed
    s = pool.stats()
    assert s["closed_by_reason"] == {"idle": 1}
    assert (s["size"], s["idle"], s["in_use"]) == (2, 2, 0)


def test_max_uses() -> None:
    driver = FakeDriver()
    pool = make_pool(driver, max_size=1, max_uses=3)
    first = None
    for i in range(3):
        slot = pool.getconn(driver.opener("first"))
        first = first or slot
        assert slot is first and slot.uses == i + 1
        pool.putconn(slot)
    assert first.conn.closed
    s = pool.stats()
    assert s["closed_by_reason"] == {"uses": 1}
    assert (s["size"], s["idle"]) == (0, 0)
    nxt = pool.getconn(driver.opener("second"))
    assert nxt is not first and nxt.conn.tag == "second" and nxt.uses == 1


def test_max_uses_counts_handed_over_checkouts() -> None:
    driver = FakeDriver()
    pool = make_pool(driver, max_size=1, max_uses=2, timeout=DEADLINE)
    slot = pool.getconn(driver.opener())
    w = Worker(lambda: pool.getconn(driver.opener()))
    w.start()
    wait_for_waiters(pool, 1)
    pool.putconn(slot)
    got = w.finish()
    assert got is slot and got.uses == 2
    pool.putconn(got)
    assert slot.conn.closed
    assert pool.stats()["closed_by_reason"] == {"uses": 1}


# -- pre_ping --------------------------------------------------------------------------


def test_pre_ping_true_pings_every_reuse() -> None:
    driver = FakeDriver()
    pool = make_pool(driver, max_size=1, pre_ping=True)
    slot = pool.getconn(driver.opener())
    assert slot.conn.pings == 0  # a fresh connection is not pinged
    for _ in range(3):
        pool.putconn(slot)
        assert pool.getconn(driver.opener()) is slot
    assert slot.conn.pings == 3
    s = pool.stats()
    assert (s["pings"], s["ping_failures"], s["connects"]) == (3, 0, 1)


def test_pre_ping_false_never_pings() -> None:
    driver = FakeDriver()
    pool = make_pool(driver, max_size=1, pre_ping=False, max_idle=None)
    slot = pool.getconn(driver.opener())
    for _ in range(3):
        pool.putconn(slot)
        slot.last_used = time.monotonic() - 10_000
        assert pool.getconn(driver.opener()) is slot
    assert driver.pinged == []
    assert pool.stats()["pings"] == 0


def test_pre_ping_after_idleness() -> None:
    driver = FakeDriver()
    pool = make_pool(driver, max_size=1, pre_ping=0.5, max_idle=None)
    slot = pool.getconn(driver.opener())
    pool.putconn(slot)
    assert pool.getconn(driver.opener()) is slot  # just returned: no ping
    assert slot.conn.pings == 0
    pool.putconn(slot)
    slot.last_used = time.monotonic() - 1.0  # idle for longer than 0.5 s
    assert pool.getconn(driver.opener()) is slot
    assert slot.conn.pings == 1
    s = pool.stats()
    assert (s["pings"], s["ping_failures"]) == (1, 0)


def test_failed_ping_reconnects_transparently() -> None:
    driver = FakeDriver()
    pool = make_pool(driver, max_size=1, pre_ping=True)
    old = pool.getconn(driver.opener("old"))
    pool.putconn(old)
    driver.fail_ping = True
    new = pool.getconn(driver.opener("new"))
    assert new is not old and new.conn.tag == "new"
    assert old.conn.closed and old.conn.pings == 1
    s = pool.stats()
    assert (s["pings"], s["ping_failures"], s["connects"]) == (1, 1, 2)
    assert s["closed_by_reason"] == {"ping_failed": 1}
    assert (s["size"], s["in_use"], s["checkouts"]) == (1, 1, 2)


# -- connect errors and discards -------------------------------------------------------


def test_connect_error_releases_capacity() -> None:
    driver = FakeDriver()
    pool = make_pool(driver, max_size=1)
    driver.connect_error = ConnectionRefusedError("no server")
    with pytest.raises(ConnectionRefusedError, match="no server"):
        pool.getconn(driver.opener())
    s = pool.stats()
    assert s["size"] == 0 and s["connect_errors"] == 1
    assert s["connects"] == 0 and s["checkouts"] == 0
    driver.connect_error = None
    slot = connect_after_backoff(pool, driver)
    assert slot.conn is driver.created[0]
    assert pool.stats()["size"] == 1


def connect_after_backoff(pool: Pool, driver: FakeDriver, tag: str = "") -> Slot:
    """Check out once the back-off window has passed (polled, with a deadline)."""
    deadline = time.monotonic() + DEADLINE
    while True:
        try:
            return pool.getconn(driver.opener(tag))
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.005)


def no_backoff(pool: Pool) -> Pool:
    pool._backoff_initial = pool._backoff_max = 0.0
    return pool


def test_connect_error_hands_capacity_to_waiter_without_backoff() -> None:
    # With the back-off window at zero, the waiter handed the capacity of a
    # failed connect dials itself (the probe).
    driver = FakeDriver()
    pool = no_backoff(make_pool(driver, max_size=1, timeout=DEADLINE))
    started, go = threading.Event(), threading.Event()

    def failing_opener() -> FakeConnection:
        started.set()
        assert go.wait(DEADLINE)
        raise ConnectionResetError("handshake failed")

    first = Worker(lambda: pool.getconn(failing_opener))
    first.start()
    assert started.wait(DEADLINE)  # holds the only capacity while connecting
    second = Worker(lambda: pool.getconn(driver.opener("waiter's own")))
    second.start()
    wait_for_waiters(pool, 1)
    go.set()
    first.finish()
    got = second.finish()
    assert isinstance(first.error, ConnectionResetError)
    assert second.error is None
    assert got.conn.tag == "waiter's own"  # it connected itself
    s = pool.stats()
    consistent(s)
    assert (s["size"], s["in_use"], s["waiting"]) == (1, 1, 0)
    assert (s["connect_errors"], s["connects"], s["checkouts"]) == (1, 1, 1)


# -- fail fast and back off while the server is down ---------------------------------------


def test_waiters_are_woken_with_the_connect_error() -> None:
    # One thread dials and fails while three wait: each waiter is handed the
    # capacity in turn, is inside the back-off window, and fails at once with a
    # copy of the error; nobody dials again and nobody sleeps `timeout`.
    driver = FakeDriver()
    pool = make_pool(driver, max_size=1, timeout=60)
    pool._backoff_initial = pool._backoff_max = 60.0
    started, go = threading.Event(), threading.Event()
    original = ConnectionRefusedError("server down")

    def failing_opener() -> FakeConnection:
        started.set()
        assert go.wait(DEADLINE)
        raise original

    first = Worker(lambda: pool.getconn(failing_opener))
    first.start()
    assert started.wait(DEADLINE)
    waiters = [Worker(lambda: pool.getconn(driver.opener("never"))) for _ in range(3)]
    for w in waiters:
        w.start()
    wait_for_waiters(pool, 3)
    go.set()
    first.finish()
    for w in waiters:
        w.finish()
        assert isinstance(w.error, ConnectionRefusedError)
        assert w.error is not original and w.error.args == original.args
        assert w.error.__traceback__ is not None  # raised here, not the original's
        assert w.elapsed is not None and w.elapsed < DEADLINE
        assert "no connection attempt was made" in w.error.__notes__[0]
    assert first.error is original
    assert driver.created == []
    s = pool.stats()
    consistent(s)
    assert (s["size"], s["waiting"], s["connect_errors"], s["connect_backoffs"]) == (0, 0, 1, 3)
    assert (s["requests"], s["checkouts"]) == (4, 0)


def test_backoff_fails_new_connections_fast_but_idle_ones_serve() -> None:
    driver = FakeDriver()
    pool = make_pool(driver, max_size=3)
    pool._backoff_initial = pool._backoff_max = 60.0
    held = pool.getconn(driver.opener("healthy"))
    pool.putconn(held)
    busy = pool.getconn(driver.opener())  # takes the idle one
    driver.connect_error = OSError("down")
    with pytest.raises(OSError, match="down"):
        pool.getconn(driver.opener())
    for _ in range(20):
        with pytest.raises(OSError, match="down"):
            pool.getconn(driver.opener())
    s = pool.stats()
    assert (s["connect_errors"], s["connect_backoffs"]) == (1, 20)
    assert (s["size"], s["in_use"]) == (1, 1)
    # A connection that is idle still serves during the back-off.
    pool.putconn(busy)
    again = pool.getconn(driver.opener())
    assert again is busy
    consistent(pool.stats())


def test_backoff_grows_is_capped_and_jittered(monkeypatch: pytest.MonkeyPatch) -> None:
    driver = FakeDriver()
    pool = make_pool(driver, max_size=1)
    pool._backoff_initial, pool._backoff_max = 0.1, 0.8
    driver.connect_error = OSError("down")
    monkeypatch.setattr(pool_module.random, "random", lambda: 0.0)  # no jitter
    windows = []
    for _ in range(6):
        pool._backoff_until = 0.0  # let this attempt dial: the window is measured
        before = time.monotonic()
        with pytest.raises(OSError):
            pool.getconn(driver.opener())
        windows.append(pool._backoff_until - before)
    # 0.1, 0.2, 0.4, 0.8, then capped (each measured from just before the dial).
    for got, want in zip(windows, [0.1, 0.2, 0.4, 0.8, 0.8, 0.8], strict=False):
        assert want - 0.05 <= got <= want + 0.05, windows
    monkeypatch.setattr(pool_module.random, "random", lambda: 1.0)  # full jitter: half
    pool._backoff_until = 0.0
    before = time.monotonic()
    with pytest.raises(OSError):
        pool.getconn(driver.opener())
    assert 0.35 <= pool._backoff_until - before <= 0.45
    assert pool.stats()["connect_errors"] == 7


def test_one_success_ends_the_backoff() -> None:
    driver = FakeDriver()
    pool = make_pool(driver, max_size=4)
    pool._backoff_initial = pool._backoff_max = 0.05
    driver.connect_error = OSError("down")
    with pytest.raises(OSError):
        pool.getconn(driver.opener())
    driver.connect_error = None
    first = connect_after_backoff(pool, driver)
    # Back to normal at once: the next new connections dial without delay.
    more = [pool.getconn(driver.opener()) for _ in range(3)]
    assert len(driver.created) == 4
    s = pool.stats()
    assert (s["connect_errors"], s["connects"], s["size"]) == (1, 4, 4)
    for slot in [first, *more]:
        pool.putconn(slot)


def test_only_one_probe_dials_at_a_time() -> None:
    # Once the window has passed, one thread dials; the others fail at once with
    # the last error instead of piling onto a server that may be down.
    driver = FakeDriver()
    pool = no_backoff(make_pool(driver, max_size=4))
    driver.connect_error = OSError("down")
    with pytest.raises(OSError):
        pool.getconn(driver.opener())
    started, go = threading.Event(), threading.Event()

    def slow_probe() -> FakeConnection:
        started.set()
        assert go.wait(DEADLINE)
        return FakeConnection("probe")

    probe = Worker(lambda: pool.getconn(slow_probe))
    probe.start()
    assert started.wait(DEADLINE)
    for _ in range(5):
        with pytest.raises(OSError, match="down"):
            pool.getconn(driver.opener("refused"))
    go.set()
    probe.finish()
    assert probe.error is None and probe.result.conn.tag == "probe"
    s = pool.stats()
    assert (s["connect_backoffs"], s["connect_errors"], s["connects"]) == (5, 1, 1)
    assert driver.created == []  # the five never dialled
    driver.connect_error = None
    pool.getconn(driver.opener("after"))  # healthy again: dials at once
    assert [c.tag for c in driver.created] == ["after"]


def test_base_exception_in_opener_does_not_start_a_backoff() -> None:
    driver = FakeDriver()
    pool = make_pool(driver, max_size=1)
    driver.connect_error = KeyboardInterrupt()
    with pytest.raises(KeyboardInterrupt):
        pool.getconn(driver.opener())
    driver.connect_error = None
    assert pool.getconn(driver.opener()).conn is driver.created[0]


def test_maintenance_refill_respects_the_backoff() -> None:
    driver = FakeDriver()
    pool = make_pool(driver, max_size=4, min_size=3)
    pool._backoff_initial = pool._backoff_max = 60.0
    pool.background_opener = driver.opener("warm")
    driver.connect_error = OSError("down")
    pool.maintain()  # dials once, fails, gives all three reservations back
    pool.maintain()  # inside the window: does not dial
    s = pool.stats()
    assert (s["size"], s["connect_errors"], s["connect_backoffs"]) == (0, 1, 0)
    assert (s["requests"], s["checkouts"]) == (0, 0)
    driver.connect_error = None
    pool._backoff_until = 0.0  # the window passes
    pool.maintain()
    s = pool.stats()
    assert (s["size"], s["idle"], s["connects"]) == (3, 3, 3)


def test_ping_gets_the_pool_ping_timeout() -> None:
    driver = FakeDriver()
    for timeout, expected in [(30.0, 5.0), (2.5, 2.5), (0.0, 1.0), (0.2, 1.0)]:
        pool = make_pool(driver, max_size=1, pre_ping=True, timeout=timeout)
        pool.putconn(pool.getconn(driver.opener()))
        pool.getconn(driver.opener())
        assert driver.ping_timeouts[-1] == expected


def test_connect_error_after_stale_idle_releases_capacity() -> None:
    driver = FakeDriver()
    pool = make_pool(driver, max_size=1, pre_ping=True)
    slot = pool.getconn(driver.opener())
    pool.putconn(slot)
    driver.fail_ping = True
    driver.connect_error = OSError("down")
    with pytest.raises(OSError, match="down"):
        pool.getconn(driver.opener())
    s = pool.stats()
    assert (s["size"], s["idle"]) == (0, 0)
    assert (s["connect_errors"], s["ping_failures"]) == (1, 1)


def test_discard_with_reason() -> None:
    driver = FakeDriver()
    pool = make_pool(driver, max_size=2)
    slot = pool.getconn(driver.opener())
    pool.putconn(slot, discard="broken", reset=True)
    assert slot.closed and slot.conn.closed
    s = pool.stats()
    assert s["closed_by_reason"] == {"broken": 1}
    assert (s["size"], s["idle"], s["resets"]) == (0, 0, 1)


def test_discard_gives_capacity_to_waiter() -> None:
    driver = FakeDriver()
    pool = make_pool(driver, max_size=1, timeout=DEADLINE)
    slot = pool.getconn(driver.opener("broken one"))
    w = Worker(lambda: pool.getconn(driver.opener("waiter's own")))
    w.start()
    wait_for_waiters(pool, 1)
    pool.putconn(slot, discard="in_transaction")
    got = w.finish()
    assert w.error is None and got.conn.tag == "waiter's own"
    assert slot.conn.closed
    s = pool.stats()
    consistent(s)
    assert s["closed_by_reason"] == {"in_transaction": 1}
    assert (s["size"], s["in_use"], s["connects"], s["waiting"]) == (1, 1, 2, 0)


def test_reset_counted_on_return() -> None:
    driver = FakeDriver()
    pool = make_pool(driver, max_size=1)
    slot = pool.getconn(driver.opener())
    pool.putconn(slot, reset=True)
    pool.getconn(driver.opener())
    pool.putconn(slot)
    assert pool.stats()["resets"] == 1


# -- close, abandon, orphan ------------------------------------------------------------


def test_close_idle_now_in_use_on_return() -> None:
    driver = FakeDriver()
    pool = make_pool(driver, name="closing", max_size=3)
    busy = pool.getconn(driver.opener("busy"))
    idle = pool.getconn(driver.opener("idle"))
    pool.putconn(idle)
    pool.close()
    assert pool.closed
    assert idle.conn.closed and not busy.conn.closed
    s = pool.stats()
    assert s["closed_by_reason"] == {"pool_closed": 1}
    assert (s["size"], s["idle"], s["in_use"]) == (1, 0, 1)
    with pytest.raises(PoolClosed, match="'closing'"):
        pool.getconn(driver.opener())
    pool.putconn(busy)
    assert busy.conn.closed and busy.conn.close_calls == 1
    s = pool.stats()
    assert s["closed_by_reason"] == {"pool_closed": 2}
    assert s["size"] == 0
    pool.close()  # idempotent
    assert pool.stats()["size"] == 0
    assert len(driver.created) == 2


def test_close_wakes_waiters_with_pool_closed() -> None:
    driver = FakeDriver()
    pool = make_pool(driver, max_size=1, timeout=30)
    holder = pool.getconn(driver.opener())
    waiters = []
    for i in range(3):
        w = Worker(lambda: pool.getconn(driver.opener()))
        w.start()
        wait_for_waiters(pool, i + 1)
        waiters.append(w)
    pool.close()
    for w in waiters:
        w.finish()
        assert isinstance(w.error, PoolClosed)
        assert w.elapsed is not None and w.elapsed < 5  # woken, not timed out
    assert pool.stats()["waiting"] == 0
    pool.putconn(holder)
    s = pool.stats()
    assert holder.conn.closed
    assert (s["size"], s["connects"]) == (0, 1)


def test_close_everything() -> None:
    driver = FakeDriver()
    pool = make_pool(driver, max_size=3)
    a = pool.getconn(driver.opener("a"))
    b = pool.getconn(driver.opener("b"))
    c = pool.getconn(driver.opener("c"))
    pool.putconn(c)
    pool.close(everything=True)
    assert all(s.conn.closed and s.conn.close_calls == 1 for s in (a, b, c))
    assert all(s.closed for s in (a, b, c))
    s = pool.stats()
    assert s["closed_by_reason"] == {"pool_closed": 3}
    assert (s["size"], s["idle"], s["in_use"]) == (0, 0, 0)
    pool.putconn(a)  # no-op: already closed
    pool.putconn(b, discard="broken")  # no-op too
    assert a.conn.close_calls == 1 and b.conn.close_calls == 1
    s = pool.stats()
    assert s["size"] == 0
    assert s["closed_by_reason"] == {"pool_closed": 3}
    with pytest.raises(PoolClosed):
        pool.getconn(driver.opener())


def test_close_everything_while_connecting() -> None:
    # A checkout that reserved capacity and connects during close() is closed
    # when it comes back, and the size ends at zero.
    driver = FakeDriver()
    pool = make_pool(driver, max_size=2)
    started, go = threading.Event(), threading.Event()

    def slow_opener() -> FakeConnection:
        started.set()
        assert go.wait(DEADLINE)
        return driver.connect("late")

    w = Worker(lambda: pool.getconn(slow_opener))
    w.start()
    assert started.wait(DEADLINE)
    pool.close(everything=True)
    go.set()
    slot = w.finish()
    assert w.error is None and not slot.conn.closed
    assert pool.stats()["size"] == 1
    pool.putconn(slot)
    assert slot.conn.closed
    s = pool.stats()
    assert s["size"] == 0 and s["closed_by_reason"] == {"pool_closed": 1}


def test_abandon() -> None:
    driver = FakeDriver()
    pool = make_pool(driver, max_size=3)
    busy = pool.getconn(driver.opener("busy"))
    idle = pool.getconn(driver.opener("idle"))
    pool.putconn(idle)
    before = pool.stats()
    pool.abandon()
    assert pool.closed
    assert driver.closed == []  # not a byte through the driver's close
    assert {c.id for c in driver.abandoned} == {busy.conn.id, idle.conn.id}
    assert len(driver.abandoned) == 2
    assert busy.closed and idle.closed
    pool.putconn(busy)
    pool.putconn(busy, discard="broken")
    assert driver.closed == []
    pool.orphan(busy)
    with pytest.raises(PoolClosed):
        pool.getconn(driver.opener())
    assert driver.closed == []
    after = pool.stats()
    assert after["closed_by_reason"] == before["closed_by_reason"] == {}
    assert after["size"] == before["size"]


def test_orphan_reaped_at_next_checkout() -> None:
    driver = FakeDriver()
    pool = make_pool(driver, max_size=1)
    lost = pool.getconn(driver.opener("lost"))
    pool.orphan(lost)
    assert not lost.conn.closed  # nothing happens until the next checkout
    assert pool.stats()["size"] == 1
    new = pool.getconn(driver.opener("new"), timeout=1)
    assert new.conn.tag == "new"
    assert lost.closed and lost.conn.closed
    s = pool.stats()
    assert s["closed_by_reason"] == {"leaked": 1}
    assert (s["size"], s["in_use"], s["connects"]) == (1, 1, 2)
    # A late putconn of the leaked slot is a no-op.
    pool.putconn(lost)
    assert pool.stats()["size"] == 1 and lost.conn.close_calls == 1


def test_orphan_already_returned_is_skipped() -> None:
    driver = FakeDriver()
    pool = make_pool(driver, max_size=1)
    slot = pool.getconn(driver.opener())
    pool.putconn(slot, discard="broken")
    pool.orphan(slot)
    pool.getconn(driver.opener())
    s = pool.stats()
    assert s["closed_by_reason"] == {"broken": 1}
    assert s["size"] == 1


def test_orphan_capacity_goes_to_waiter() -> None:
    driver = FakeDriver()
    pool = make_pool(driver, max_size=1, timeout=DEADLINE)
    lost = pool.getconn(driver.opener("lost"))
    w = Worker(lambda: pool.getconn(driver.opener("waiter's own")))
    w.start()
    wait_for_waiters(pool, 1)
    pool.orphan(lost)
    # The next checkout reaps; the freed capacity goes to the older waiter.
    with pytest.raises(PoolTimeout):
        pool.getconn(driver.opener("late"), timeout=0.05)
    got = w.finish()
    assert w.error is None and got.conn.tag == "waiter's own"
    s = pool.stats()
    assert s["closed_by_reason"] == {"leaked": 1}
    assert (s["size"], s["in_use"], s["timeouts"]) == (1, 1, 1)


# -- stats -----------------------------------------------------------------------------


def test_stats_keys_and_consistency() -> None:
    driver = FakeDriver()
    pool = make_pool(driver, max_size=4)
    s = pool.stats()
    assert set(s) == {
        "size", "idle", "in_use", "waiting", "requests", "checkouts", "waits",
        "timeouts", "rejected", "connects", "connect_errors", "connect_backoffs", "closed",
        "closed_by_reason", "pings", "ping_failures", "resets", "leaks",
        "drains", "drain_pending", "wait_ms", "hold_ms", "connect_ms",
        "releases", "pins", "checkouts_per_request",
    }  # fmt: skip
    assert all(v == 0 for v in s.values() if not isinstance(v, dict))
    assert s["closed_by_reason"] == {}
    for timing in ("wait_ms", "hold_ms", "connect_ms"):
        assert s[timing] == {"count": 0, "mean": 0.0, "p50": 0.0, "p99": 0.0, "max": 0.0}

    slots = [pool.getconn(driver.opener()) for _ in range(3)]
    pool.putconn(slots[0])
    pool.putconn(slots[1], discard="broken")
    s = pool.stats()
    consistent(s)
    assert (s["size"], s["idle"], s["in_use"]) == (2, 1, 1)
    assert (s["requests"], s["checkouts"], s["connects"], s["closed"]) == (3, 3, 3, 1)
    pool.getconn(driver.opener())
    s = pool.stats()
    consistent(s)
    assert (s["requests"], s["checkouts"], s["connects"]) == (4, 4, 3)
    # stats() returns a copy, not live state.
    s["closed_by_reason"]["x"] = 1
    assert "x" not in pool.stats()["closed_by_reason"]


# -- regressions: bugs once found in the core ------------------------------------------------------------


def test_checkouts_excludes_waiters_failed_by_close() -> None:
    driver = FakeDriver()
    pool = make_pool(driver, max_size=1, timeout=30)
    holder = pool.getconn(driver.opener())
    w = Worker(lambda: pool.getconn(driver.opener()))
    w.start()
    wait_for_waiters(pool, 1)
    pool.close()
    w.finish()
    assert isinstance(w.error, PoolClosed)
    s = pool.stats()
    assert s["requests"] == 2
    assert s["checkouts"] == 1  # only `holder` was ever checked out
    pool.putconn(holder)


def test_close_everything_racing_discard() -> None:
    driver = FakeDriver()
    pool = make_pool(driver, max_size=2)
    slot = pool.getconn(driver.opener())
    driver.gate_conn = slot.conn  # its first driver.close() blocks
    returner = Worker(lambda: pool.putconn(slot, discard="broken"))
    returner.start()
    assert driver.close_entered.wait(DEADLINE)  # putconn is inside driver.close
    pool.close(everything=True)  # slot is still in _slots: forgotten again
    driver.close_gate.set()
    returner.finish()
    assert returner.error is None
    s = pool.stats()
    assert s["size"] == 0  # core: -1
    assert s["closed"] == 1  # core: 2 ("broken" and "pool_closed")
    assert slot.conn.close_calls == 1  # core: 2


# -- interrupted checkouts: nothing is lost, whatever interrupts ---------------------


class Interrupted(Exception):
    """What the signal handlers below raise (a stand-in for Celery's
    SoftTimeLimitExceeded, KeyboardInterrupt, gevent's Timeout)."""


def interrupt_main_thread_when(
    predicate: Callable[[], bool], before_raise: Callable[[], None] | None = None
) -> threading.Thread:
    """Install a SIGUSR1 handler that runs *before_raise* and raises Interrupted,
    and send SIGUSR1 to the main thread once *predicate* holds. Returns the thread
    that sends it; the caller restores the handler (see restore_sigusr1)."""
    import signal

    def handler(signum: int, frame: Any) -> None:
        if before_raise is not None:
            before_raise()
        raise Interrupted("interrupted by a signal")

    signal.signal(signal.SIGUSR1, handler)

    def send() -> None:
        wait_until(predicate)
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGUSR1)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    return sender


@pytest.fixture
def restore_sigusr1() -> Any:
    import signal

    assert threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGUSR1)
    yield
    signal.signal(signal.SIGUSR1, previous)


def figures(pool: Pool) -> tuple[int, int, int, int]:
    s = pool.stats()
    consistent(s)
    return s["size"], s["idle"], s["in_use"], s["waiting"]


def test_a_signal_interrupting_a_wait_takes_the_waiter_out_of_the_queue(
    restore_sigusr1: None,
) -> None:
    driver = FakeDriver()
    pool = make_pool(driver, max_size=1, timeout=DEADLINE)
    holder = pool.getconn(driver.opener())
    sender = interrupt_main_thread_when(lambda: pool.stats()["waiting"] == 1)
    with pytest.raises(Interrupted):
        pool.getconn(driver.opener())
    sender.join(DEADLINE)
    assert figures(pool) == (1, 0, 1, 0)
    # The returned connection is not handed to the interrupted waiter.
    pool.putconn(holder)
    assert figures(pool) == (1, 1, 0, 0)
    assert pool.getconn(driver.opener(), timeout=0) is holder
    s = pool.stats()
    assert (s["requests"], s["checkouts"], s["connects"]) == (3, 2, 1)


def test_a_connection_handed_to_an_interrupted_waiter_goes_back_to_the_idle_stack(
    restore_sigusr1: None,
) -> None:
    driver = FakeDriver()
    pool = make_pool(driver, max_size=1, timeout=DEADLINE)
    holder = pool.getconn(driver.opener())
    # The handler returns the connection (a hand-off to this very waiter) before
    # it raises: the exception arrives after the hand-off.
    sender = interrupt_main_thread_when(
        lambda: pool.stats()["waiting"] == 1, before_raise=lambda: pool.putconn(holder)
    )
    with pytest.raises(Interrupted):
        pool.getconn(driver.opener())
    sender.join(DEADLINE)
    assert figures(pool) == (1, 1, 0, 0)
    assert pool.getconn(driver.opener(), timeout=0) is holder
    assert holder.uses == 2  # the interrupted checkout did not count as a use
    assert pool.stats()["checkouts"] == 2


def test_a_connection_handed_to_an_interrupted_waiter_goes_to_the_next_waiter(
    restore_sigusr1: None,
) -> None:
    driver = FakeDriver()
    pool = make_pool(driver, max_size=1, timeout=DEADLINE)
    holder = pool.getconn(driver.opener())
    second = Worker(lambda: pool.getconn(driver.opener()))

    def queue_the_second() -> bool:
        # The main thread queues first; the worker queues behind it.
        if pool.stats()["waiting"] == 1 and not second.is_alive() and second.ident is None:
            second.start()
        return pool.stats()["waiting"] == 2

    sender = interrupt_main_thread_when(queue_the_second, before_raise=lambda: pool.putconn(holder))
    with pytest.raises(Interrupted):
        pool.getconn(driver.opener())
    sender.join(DEADLINE)
    assert second.finish() is holder and second.error is None
    assert figures(pool) == (1, 0, 1, 0)
    assert driver.created == [holder.conn]


def test_capacity_handed_to_an_interrupted_waiter_is_given_back(restore_sigusr1: None) -> None:
    driver = FakeDriver()
    pool = make_pool(driver, max_size=1, timeout=DEADLINE)
    holder = pool.getconn(driver.opener())
    # A discarded connection hands its capacity (not a connection) to the waiter.
    sender = interrupt_main_thread_when(
        lambda: pool.stats()["waiting"] == 1,
        before_raise=lambda: pool.putconn(holder, discard="broken"),
    )
    with pytest.raises(Interrupted):
        pool.getconn(driver.opener())
    sender.join(DEADLINE)
    assert figures(pool) == (0, 0, 0, 0)
    fresh = pool.getconn(driver.opener("fresh"), timeout=0)
    assert fresh.conn.tag == "fresh"
    assert figures(pool) == (1, 0, 1, 0)


def test_a_wait_that_raises_at_once_loses_nothing() -> None:
    # threading refuses a negative timeout with ValueError (and, before the
    # clamp, one above TIMEOUT_MAX with OverflowError): the same clean-up runs.
    driver = FakeDriver()
    pool = make_pool(driver, max_size=1, timeout=DEADLINE)
    holder = pool.getconn(driver.opener())
    with pytest.raises(ValueError):
        pool.getconn(driver.opener(), timeout=-2.0)
    assert figures(pool) == (1, 0, 1, 0)
    pool.putconn(holder)
    assert figures(pool) == (1, 1, 0, 0)


def test_a_timeout_above_threading_timeout_max_waits_instead_of_overflowing() -> None:
    driver = FakeDriver()
    pool = make_pool(driver, max_size=1, timeout=DEADLINE)
    holder = pool.getconn(driver.opener())
    patient = Worker(lambda: pool.getconn(driver.opener(), timeout=threading.TIMEOUT_MAX * 2))
    patient.start()
    wait_for_waiters(pool, 1)
    pool.putconn(holder)
    assert patient.finish() is holder and patient.error is None
    assert figures(pool) == (1, 0, 1, 0)


def test_an_opener_interrupted_with_handed_capacity_passes_it_on() -> None:
    driver = FakeDriver()
    pool = make_pool(driver, max_size=1, timeout=DEADLINE)
    holder = pool.getconn(driver.opener())

    def interrupted_opener() -> FakeConnection:
        raise KeyboardInterrupt

    first = Worker(lambda: pool.getconn(interrupted_opener))
    first.start()
    wait_for_waiters(pool, 1)
    second = Worker(lambda: pool.getconn(driver.opener("second")))
    second.start()
    wait_for_waiters(pool, 2)
    pool.putconn(holder, discard="broken")  # capacity to `first`, whose opener raises
    first.finish()
    assert isinstance(first.error, KeyboardInterrupt)
    assert second.finish().conn.tag == "second"
    assert figures(pool) == (1, 0, 1, 0)
    assert pool.stats()["connect_backoffs"] == 0  # a BaseException is no server failure


def test_an_interrupt_between_connect_and_bookkeeping_closes_the_connection() -> None:
    driver = FakeDriver()
    pool = make_pool(driver, max_size=1, leak_timeout=60)

    def interrupted(slot: Slot) -> None:
        raise KeyboardInterrupt

    pool._note_checkout = interrupted  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        pool.getconn(driver.opener("opened"))
    (opened,) = driver.created
    assert opened.closed
    assert figures(pool) == (0, 0, 0, 0)
    assert pool.stats()["checkouts"] == 0


def test_an_interrupted_ping_discards_the_connection_and_frees_its_capacity() -> None:
    driver = FakeDriver()
    pool = make_pool(driver, max_size=1, pre_ping=True)
    slot = pool.getconn(driver.opener())
    pool.putconn(slot)

    def interrupted_ping(conn: FakeConnection, timeout: float | None = None) -> None:
        raise KeyboardInterrupt

    driver.ping = interrupted_ping  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        pool.getconn(driver.opener())
    assert slot.conn.closed
    assert figures(pool) == (0, 0, 0, 0)
    assert pool.stats()["closed_by_reason"] == {"ping_failed": 1}


def test_an_interrupted_close_while_replacing_a_stale_connection_frees_its_capacity() -> None:
    driver = FakeDriver()
    pool = make_pool(driver, max_size=1, max_lifetime=0.05)
    slot = pool.getconn(driver.opener())
    pool.putconn(slot)
    wait_until(lambda: time.monotonic() >= slot.expires)
    real_close = driver.close

    def interrupted_close(conn: FakeConnection) -> None:
        real_close(conn)
        raise KeyboardInterrupt

    driver.close = interrupted_close  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        pool.getconn(driver.opener())
    driver.close = real_close  # type: ignore[method-assign]
    assert figures(pool) == (0, 0, 0, 0)
    assert pool.getconn(driver.opener("next"), timeout=0).conn.tag == "next"


# -- connections of threads that ended ---------------------------------------------


def checkout_in_a_thread_that_ends(pool: Pool, driver: FakeDriver, tag: str) -> Slot:
    """A thread checks a connection out, as the Django layer does (owner set), and
    ends without returning it."""
    got: list[Slot] = []

    def run() -> None:
        slot = pool.getconn(driver.opener(tag))
        slot.owner = pool_module.thread_token()
        got.append(slot)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(DEADLINE)
    assert not thread.is_alive()
    return got[0]


@pytest.fixture
def no_gc() -> Any:
    import gc

    was_enabled = gc.isenabled()
    gc.disable()
    yield
    if was_enabled:
        gc.enable()


def test_a_waiting_checkout_reclaims_the_connection_of_a_thread_that_ended(no_gc: None) -> None:
    driver = FakeDriver()
    pool = make_pool(driver, max_size=1, timeout=DEADLINE)
    lost = checkout_in_a_thread_that_ends(pool, driver, "lost")
    started = time.monotonic()
    slot = pool.getconn(driver.opener("new"))
    assert time.monotonic() - started < DEADLINE / 2
    assert slot.conn.tag == "new"
    assert lost.closed and lost.conn.closed
    s = pool.stats()
    assert s["closed_by_reason"] == {"leaked": 1}
    assert figures(pool) == (1, 0, 1, 0)
    assert s["timeouts"] == 0


def test_maintenance_reclaims_the_connection_of_a_thread_that_ended(no_gc: None) -> None:
    driver = FakeDriver()
    pool = make_pool(driver, max_size=2)
    lost = checkout_in_a_thread_that_ends(pool, driver, "lost")
    assert figures(pool) == (1, 0, 1, 0)
    pool.maintain()
    assert lost.conn.closed
    assert figures(pool) == (0, 0, 0, 0)
    assert pool.stats()["closed_by_reason"] == {"leaked": 1}


def test_reclaimed_capacity_goes_to_the_oldest_waiter(no_gc: None) -> None:
    driver = FakeDriver()
    pool = make_pool(driver, max_size=1, timeout=DEADLINE)
    release = threading.Event()
    got: list[Slot] = []

    def hold_then_end() -> None:
        got.append(pool.getconn(driver.opener("lost")))
        got[0].owner = pool_module.thread_token()
        release.wait(DEADLINE)

    holder = threading.Thread(target=hold_then_end)
    holder.start()
    wait_until(lambda: bool(got))
    # Queued while the owner is alive: nothing to reclaim yet.
    first = Worker(lambda: pool.getconn(driver.opener("first")))
    first.start()
    wait_for_waiters(pool, 1)
    release.set()
    holder.join(DEADLINE)
    pool.maintain()  # the tick that finds the owner gone
    assert first.finish().conn.tag == "first"
    assert figures(pool) == (1, 0, 1, 0)


def test_a_connection_without_an_owner_is_never_reclaimed(no_gc: None) -> None:
    driver = FakeDriver()
    pool = make_pool(driver, max_size=1)
    got: list[Slot] = []
    thread = threading.Thread(target=lambda: got.append(pool.getconn(driver.opener())))
    thread.start()
    thread.join(DEADLINE)
    pool.maintain()
    with pytest.raises(PoolTimeout):
        pool.getconn(driver.opener(), timeout=0.05)
    assert not got[0].closed and not got[0].conn.closed
    assert figures(pool) == (1, 0, 1, 0)


def test_a_live_owner_is_never_reclaimed() -> None:
    driver = FakeDriver()
    pool = make_pool(driver, max_size=1)
    slot = pool.getconn(driver.opener())
    slot.owner = pool_module.thread_token()
    pool.maintain()
    with pytest.raises(PoolTimeout):
        pool.getconn(driver.opener(), timeout=0.05)
    assert not slot.closed


def test_putconn_clears_the_owner(no_gc: None) -> None:
    # An idle connection keeps no owner, so a thread that ended after returning
    # its connection never makes the pool close it (or its next borrower's).
    driver = FakeDriver()
    pool = make_pool(driver, max_size=1)
    returned: list[Slot] = []

    def run() -> None:
        slot = pool.getconn(driver.opener())
        slot.owner = pool_module.thread_token()
        pool.putconn(slot)
        returned.append(slot)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(DEADLINE)
    assert returned[0].owner is None
    again = pool.getconn(driver.opener(), timeout=0)
    pool.maintain()
    assert again is returned[0] and not again.closed


def test_close_closes_the_connections_of_threads_that_ended(no_gc: None) -> None:
    driver = FakeDriver()
    pool = make_pool(driver, max_size=2)
    lost = checkout_in_a_thread_that_ends(pool, driver, "lost")
    busy = pool.getconn(driver.opener("busy"))
    busy.owner = pool_module.thread_token()
    pool.close()
    assert lost.conn.closed  # it would never have come back
    assert not busy.conn.closed  # closed when it comes back
    assert pool.stats()["closed_by_reason"] == {"leaked": 1}
    pool.putconn(busy)
    assert busy.conn.closed
    assert figures(pool) == (0, 0, 0, 0)


def test_the_thread_token_dies_with_its_thread_without_gc(no_gc: None) -> None:
    tokens: list[Any] = []
    thread = threading.Thread(target=lambda: tokens.extend([pool_module.thread_token()] * 2))
    thread.start()
    thread.join(DEADLINE)
    assert tokens[0] is tokens[1]
    assert tokens[0]() is None
    assert pool_module.thread_token() is pool_module.thread_token()
    assert pool_module.thread_token()() is not None


# -- the advice in a timeout message comes from the layer above ------------------------


def test_the_core_names_no_setting_and_adds_the_hint_it_is_given() -> None:
    from django_poolbackend.core import TooManyRequests

    driver = FakeDriver()
    plain = make_pool(driver, max_size=1)
    held = plain.getconn(driver.opener())
    with pytest.raises(PoolTimeout) as info:
        plain.getconn(driver.opener(), timeout=0)
    assert str(info.value) == (
        "couldn't get a connection to database 'x' after waiting 0.0 s: 1 connections "
        "are in use (max_size=1) and 0 other requests are waiting."
    )
    plain.putconn(held)
    hinted = Pool(
        PoolConfig.from_mapping({"max_size": 1, "max_waiting": 1}),
        driver,
        name="h",
        hint=lambda: "Do this.",
    )
    held = hinted.getconn(driver.opener())
    with pytest.raises(PoolTimeout) as info:
        hinted.getconn(driver.opener(), timeout=0)
    assert str(info.value).endswith("0 other requests are waiting. Do this.")
    queued = Worker(lambda: hinted.getconn(driver.opener()))
    queued.start()
    wait_for_waiters(hinted, 1)
    with pytest.raises(TooManyRequests) as rejected:
        hinted.getconn(driver.opener())
    assert isinstance(rejected.value, PoolTimeout)
    assert str(rejected.value) == (
        "couldn't get a connection to database 'h': 1 requests are already waiting "
        "(max_waiting=1) and all 1 connections (max_size=1) are in use. Do this."
    )
    hinted.putconn(held)
    queued.finish()


def test_core_source_mentions_no_django_setting() -> None:
    import inspect

    from django_poolbackend import core

    for module in (pool_module, core.errors):
        source = inspect.getsource(module)
        assert "POOL[" not in source and "CONN_MAX_AGE" not in source, module.__name__
