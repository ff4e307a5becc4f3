"""The maintenance thread against the real servers: min_size, quiet retirement, leaks."""

from __future__ import annotations

import logging
import threading

import pytest

from .conftest import wait_for

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "mysql"])


def test_min_size_is_kept_warm(make_pooled, vendor):
    pooled = make_pooled(vendor, min_size=2, max_size=4)
    wrapper = pooled.wrapper()
    first = pooled.backend_id(wrapper)  # the first checkout makes the pool
    wrapper.close()
    # The server sees the session before its set-up is done and it joins the pool.
    wait_for(
        lambda: len(pooled.server_sessions()) == 2 and pooled.stats()["idle"] == 2,
        what="a second connection opened in the background",
    )
    sessions = pooled.server_sessions()
    assert first in sessions
    stats = pooled.stats()
    assert (stats["size"], stats["idle"], stats["connects"]) == (2, 2, 2)
    # The background connection was set up like any other: it serves as usual.
    wrappers = [pooled.wrapper() for _ in range(2)]
    assert {pooled.backend_id(w) for w in wrappers} == sessions
    for w in wrappers:
        assert w.get_autocommit() is True
        w.close()


def test_a_quiet_process_retires_idle_connections(make_pooled, vendor):
    pooled = make_pooled(vendor, max_idle=0.2, min_size=0)
    wrapper = pooled.wrapper()
    ident = pooled.backend_id(wrapper)
    wrapper.close()
    # No further checkout or return: only the maintenance thread can do this.
    wait_for(lambda: ident not in pooled.server_sessions(), what="the idle connection to go")
    assert pooled.stats()["closed_by_reason"] == {"idle": 1}


def test_a_leak_is_reported_once_naming_the_checkout_line(make_pooled, vendor, caplog):
    pooled = make_pooled(vendor, leak_timeout=0.2)
    holding = threading.Event()
    release = threading.Event()

    def leaky_view():
        wrapper = pooled.wrapper()
        wrapper.ensure_connection()  # LEAKY-CHECKOUT
        holding.set()
        release.wait(30)
        wrapper.close()

    with caplog.at_level(logging.WARNING, logger="django_poolbackend"):
        thread = threading.Thread(target=leaky_view)
        thread.start()
        try:
            assert holding.wait(30)
            wait_for(lambda: pooled.stats()["leaks"] == 1, what="the leak warning")
        finally:
            release.set()
            thread.join()
    leak_lines = [r.getMessage() for r in caplog.records if "leak_timeout" in r.getMessage()]
    assert len(leak_lines) == 1
    assert "test_maintenance_real.py" in leak_lines[0]
    assert "LEAKY-CHECKOUT" in leak_lines[0]
    assert any("came back after" in r.getMessage() for r in caplog.records)
    assert pooled.stats()["leaks"] == 1
