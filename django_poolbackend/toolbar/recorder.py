"""Per-request pool events, for the debug-toolbar panel.

The checkout path pays for this only with one module attribute read: ``active``
stays 0 unless a panel is recording somewhere in the process. When it is not 0,
``connect()`` and ``_close()`` hand over to :func:`checkout` and :func:`checkin`,
which find the current request's :class:`Recorder` in a context variable (set by
the panel around the view, and copied by asgiref into ``sync_to_async`` threads).

Django returns a request's connections after the response has left the
middleware (``request_finished``), so a checkout remembers its recorder on the
wrapper, and the return is added to the stored panel data when it happens.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextvars import ContextVar
from time import monotonic
from typing import Any

#: How many recorders are live in this process; read on every checkout and return.
active = 0
_active_lock = threading.Lock()
_current: ContextVar[Recorder | None] = ContextVar("django_poolbackend_recorder", default=None)

#: Per alias, the checkouts kept in detail; the totals count every one.
MAX_EVENTS = 50


def _retain() -> None:
    global active
    with _active_lock:
        active += 1


def _release() -> None:
    global active
    with _active_lock:
        active -= 1


def server_id(conn: Any) -> int | None:
    """The server's id of the session, from the driver's own state (no round trip):
    the backend pid libpq got at startup, or mysqlclient's thread id."""
    info = getattr(conn, "info", None)
    pid = getattr(info, "backend_pid", None)
    if pid is not None:
        return int(pid)
    thread_id = getattr(conn, "thread_id", None)
    if thread_id is not None:
        try:
            return int(thread_id())
        except Exception:
            return None
    return None


def _new_alias() -> dict[str, Any]:
    return {
        "checkouts": 0,
        "failed_checkouts": 0,
        "wait_ms": 0.0,
        "new_connections": 0,
        "connect_ms": 0.0,
        "pings": 0,
        "ping_failures": 0,
        "returns": 0,
        "resets": 0,
        "discarded": 0,
        "hold_ms": 0.0,
        "server_ids": [],
        "events": [],
        "events_dropped": 0,
        # Transaction-scoped release: returns between transactions, and the pin
        # (why, and the statement that caused it) if the request was pinned.
        "releases": 0,
        "pins": [],
    }


class Recorder:
    """What one request did with the pools, as plain JSON-safe values."""

    def __init__(self, on_late_return: Callable[[Recorder], None] | None = None) -> None:
        self.aliases: dict[str, dict[str, Any]] = {}
        self.finished = False
        self._lock = threading.Lock()
        # Checkouts not yet returned: each keeps this recorder live.
        self._outstanding = 0
        self._on_late_return = on_late_return
        self._released = False

    def alias(self, name: str) -> dict[str, Any]:
        entry = self.aliases.get(name)
        if entry is None:
            entry = self.aliases[name] = _new_alias()
        return entry

    def _event(self, entry: dict[str, Any], event: dict[str, Any]) -> None:
        if len(entry["events"]) < MAX_EVENTS:
            entry["events"].append(event)
        else:
            entry["events_dropped"] += 1

    def snapshot(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {
                name: {**entry, "server_ids": list(entry["server_ids"]),
                       "events": [dict(e) for e in entry["events"]],
                       "pins": [dict(p) for p in entry["pins"]]}
                for name, entry in self.aliases.items()
            }  # fmt: skip

    def finish(self) -> None:
        """The request left the panel; returns still to come are recorded late."""
        with self._lock:
            self.finished = True
            done = self._done()
        if done:
            _release()

    def _done(self) -> bool:
        # Called with the lock held: True exactly once, when nothing is left to record.
        if self._released or not self.finished or self._outstanding:
            return False
        self._released = True
        return True


def start(on_late_return: Callable[[Recorder], None] | None = None) -> tuple[Recorder, Any]:
    """Begin recording in the current context; pass the token to :func:`deactivate`
    and then call ``Recorder.finish()``."""
    recorder = Recorder(on_late_return)
    _retain()
    return recorder, _current.set(recorder)


def deactivate(token: Any) -> None:
    """Stop recording in this context (the recorder stays live for late returns)."""
    try:
        _current.reset(token)
    except ValueError:  # reset from another context than the one that set it
        _current.set(None)


def checkout(wrapper: Any, pool: Any) -> Any:
    """``pool.getconn`` for a wrapper while some recorder is live."""
    mark = wrapper.pool_take_recording()
    if mark is not None:
        # The previous checkout went back without _close() (its one-time set-up
        # failed and connect() returned it): settle it, or its recorder stays live.
        _settle(wrapper, mark, "init_failed", False)
    recorder = _current.get()
    if recorder is None:
        return pool.getconn(wrapper.pool_open_connection)
    opened = [0.0, False]

    def opener() -> Any:
        started = monotonic()
        try:
            return wrapper.pool_open_connection()
        finally:
            opened[0] = monotonic() - started
            opened[1] = True

    # Pings happen inside getconn(); the pool's counters tell how many. Another
    # thread's ping in the same instant would be counted too (a development
    # server rarely has one).
    before = pool.stats()
    started = monotonic()
    try:
        slot = pool.getconn(opener)
    except BaseException:
        with recorder._lock:
            recorder.alias(wrapper.alias)["failed_checkouts"] += 1
        raise
    elapsed = monotonic() - started
    after = pool.stats()
    connect_s = opened[0] if opened[1] else 0.0
    sid = server_id(slot.conn)
    pings = max(0, after["pings"] - before["pings"])
    ping_failures = max(0, after["ping_failures"] - before["ping_failures"])
    with recorder._lock:
        entry = recorder.alias(wrapper.alias)
        entry["checkouts"] += 1
        wait_ms = max(0.0, elapsed - connect_s) * 1000.0
        entry["wait_ms"] += wait_ms
        entry["pings"] += pings
        entry["ping_failures"] += ping_failures
        if opened[1]:
            entry["new_connections"] += 1
            entry["connect_ms"] += connect_s * 1000.0
        if sid is not None and sid not in entry["server_ids"]:
            entry["server_ids"].append(sid)
        recorder._event(
            entry,
            {
                "new": opened[1],
                "wait_ms": round(wait_ms, 3),
                "connect_ms": round(connect_s * 1000.0, 3) if opened[1] else None,
                "pings": pings,
                "server_id": sid,
                "hold_ms": None,
                "reset": None,
                "discarded": None,
                "released": None,
            },
        )
        recorder._outstanding += 1
    wrapper.pool_note_recording((recorder, entry["checkouts"] - 1, monotonic()))
    return slot


def checkin(wrapper: Any, discard: str | None, reset: bool, released: bool = False) -> None:
    """Note a return by a wrapper whose checkout was recorded; *released* when it
    went back between two transactions of the request (transaction mode)."""
    mark = wrapper.pool_take_recording()
    if mark is not None:
        _settle(wrapper, mark, discard, reset, released)


def pinned(wrapper: Any, reason: str, statement: str | None) -> None:
    """Note that the current request pinned *wrapper*'s connection, and why.
    *statement* is already made safe to show (literals masked, cut short)."""
    mark = wrapper.pool_peek_recording()
    if mark is None:
        return
    recorder, index, _ = mark
    with recorder._lock:
        entry = recorder.alias(wrapper.alias)
        entry["pins"].append({"reason": reason, "statement": statement, "checkout": index + 1})


def _settle(
    wrapper: Any, mark: Any, discard: str | None, reset: bool, released: bool = False
) -> None:
    """Add a return to the event its checkout recorded (*mark* says where)."""
    recorder, index, checked_out_at = mark
    hold_ms = (monotonic() - checked_out_at) * 1000.0
    with recorder._lock:
        entry = recorder.alias(wrapper.alias)
        entry["returns"] += 1
        entry["hold_ms"] += hold_ms
        if reset:
            entry["resets"] += 1
        if discard is not None:
            entry["discarded"] += 1
        if released:
            entry["releases"] += 1
        if index < len(entry["events"]):
            event = entry["events"][index]
            event["hold_ms"] = round(hold_ms, 3)
            event["reset"] = reset
            event["discarded"] = discard
            event["released"] = released
        recorder._outstanding -= 1
        late = recorder.finished
        done = recorder._done()
    if late and recorder._on_late_return is not None:
        try:
            recorder._on_late_return(recorder)
        except Exception:  # the panel's store is no reason to fail a request
            pass
    if done:
        _release()
