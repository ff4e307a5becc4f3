"""Pool.maintain() and the maintenance thread, with the fake driver (no server)."""

from __future__ import annotations

import logging
import threading
import time

from django_poolbackend.core.maintenance import Maintainer

from .test_core_pool import FakeDriver, make_pool


def test_a_quiet_pool_retires_idle_connections_above_min_size():
    driver = FakeDriver()
    pool = make_pool(driver, max_size=3, min_size=1, max_idle=0.5)
    slots = [pool.getconn(driver.opener()) for _ in range(3)]
    for slot in slots:
        pool.putconn(slot)
        slot.last_used = time.monotonic() - 1.0
    pool.maintain()
    stats = pool.stats()
    assert (stats["size"], stats["idle"]) == (1, 1)
    assert stats["closed_by_reason"] == {"idle": 2}
    assert [conn.closed for conn in (s.conn for s in slots)] == [True, True, False]


def test_a_quiet_pool_retires_aged_connections():
    driver = FakeDriver()
    pool = make_pool(driver, max_size=2)
    slot = pool.getconn(driver.opener())
    pool.putconn(slot)
    slot.expires = time.monotonic() - 1
    pool.maintain()
    assert slot.conn.closed
    assert pool.stats()["closed_by_reason"] == {"lifetime": 1}


def test_maintenance_keeps_min_size_warm():
    driver = FakeDriver()
    pool = make_pool(driver, max_size=4, min_size=2)
    pool.background_opener = driver.opener("warm")
    pool.maintain()
    stats = pool.stats()
    assert (stats["size"], stats["idle"], stats["connects"], stats["checkouts"]) == (2, 2, 2, 0)
    pool.maintain()  # already warm: nothing more
    assert pool.stats()["connects"] == 2


def test_a_failing_background_connect_gives_its_capacity_back(caplog):
    driver = FakeDriver()
    pool = make_pool(driver, max_size=4, min_size=2)
    pool.background_opener = driver.opener()
    driver.connect_error = OSError("server down")
    with caplog.at_level(logging.WARNING, logger="django_poolbackend"):
        pool.maintain()
    stats = pool.stats()
    # One dial, then the back-off: the second reservation goes back undialled.
    assert (stats["size"], stats["connect_errors"]) == (0, 1)
    assert (stats["requests"], stats["checkouts"]) == (0, 0)  # no request failed
    assert "could not open a connection to keep min_size: OSError" in caplog.text


def test_a_leak_is_reported_once_with_the_checkout_stack(caplog):
    driver = FakeDriver()
    pool = make_pool(driver, max_size=1, leak_timeout=0.05)
    slot = pool.getconn(driver.opener())  # LEAK-MARK
    slot.checked_out_at -= 1.0
    with caplog.at_level(logging.WARNING, logger="django_poolbackend"):
        pool.maintain()
        pool.maintain()
        warnings = [r.getMessage() for r in caplog.records]
        assert len(warnings) == 1
        assert "checked out for more than 0.05 s (leak_timeout)" in warnings[0]
        assert "test_core_maintenance.py" in warnings[0]
        assert "LEAK-MARK" in warnings[0]
        pool.putconn(slot)
    assert "came back after" in caplog.records[-1].getMessage()
    assert pool.stats()["leaks"] == 1


def test_no_stack_is_captured_without_leak_timeout():
    driver = FakeDriver()
    pool = make_pool(driver, max_size=1)
    slot = pool.getconn(driver.opener())
    assert slot.stack is None


class _FlakyPool:
    """A pool whose maintenance fails once, then counts its runs."""

    name = "flaky"

    def __init__(self) -> None:
        self.runs = 0
        self.ran_twice = threading.Event()

    def maintain(self) -> None:
        self.runs += 1
        if self.runs == 1:
            raise RuntimeError("first run fails")
        self.ran_twice.set()


def test_the_maintenance_thread_survives_a_failing_pool(caplog):
    maintainer = Maintainer(period=0.02)
    pool = _FlakyPool()
    with caplog.at_level(logging.ERROR, logger="django_poolbackend"):
        maintainer.add(pool)
        try:
            assert pool.ran_twice.wait(10)
        finally:
            maintainer.stop()
    assert "Pool 'flaky': maintenance failed; will retry." in caplog.text
