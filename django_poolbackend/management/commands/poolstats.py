"""``manage.py poolstats``: the pools of every process on this host that serves
these settings (all Gunicorn workers, Celery children, …), read from the snapshots
each process publishes (``django_poolbackend.publish``).

This module holds the command's arguments and its rendering only. The document it
prints is built by :mod:`django_poolbackend.snapshots` (which ``pooldrain`` reads
too), and the server's own view by :mod:`django_poolbackend.introspect` (which the
system checks use too, so both name the same connection limit)."""

from __future__ import annotations

import copy
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connections

from ... import introspect
from ...mixin import application_name
from ...snapshots import ELSEWHERE, collect, select_aliases

#: (header, width, row key) of the table; 79 columns with the separators.
COLUMNS = (
    ("PID", 7, "pid"),
    ("ALIAS", 8, "alias"),
    ("SIZE", 4, "size"),
    ("IDLE", 4, "idle"),
    ("USE", 3, "in_use"),
    ("WAIT", 4, "waiting"),
    ("MAX", 3, "max_size"),
    ("CHECKOUTS", 9, "checkouts"),
    ("TMOUT", 5, "timeouts"),
    ("WAIT50", 6, "wait_p50"),
    ("WAIT99", 6, "wait_p99"),
    ("CERR", 4, "connect_errors"),
    ("AGE", 4, "age"),
)
LEGEND = (
    "USE in use, WAIT requests waiting, WAIT50/WAIT99 checkout wait p50/p99 (ms),\n"
    "TMOUT pool timeouts, CERR connect errors, AGE seconds since the snapshot."
)
def _fit(value: Any, width: int) -> str:
    """*value* right-aligned in *width*, shortened (k, M, G) rather than overflowing."""
    if isinstance(value, float):
        text = f"{value:.1f}" if value < 1000 else f"{value:.0f}"
        if len(text) > width:
            value = int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        text = str(value)
        for suffix, div in (("k", 1e3), ("M", 1e6), ("G", 1e9), ("T", 1e12)):
            if len(text) <= width:
                break
            text = f"{value / div:.0f}{suffix}"
    elif not isinstance(value, float):
        text = str(value)
        if len(text) > width:
            text = text[: width - 1] + "~"
    return text.rjust(width)


def _age(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.1f}"
    if seconds < 600:
        return f"{seconds:.0f}"
    return f"{seconds / 60:.0f}m"


def _table_row(values: dict[str, Any]) -> str:
    cells = []
    for header, width, key in COLUMNS:
        value = values.get(key, "")
        cell = _fit(value, width)
        cells.append(cell.ljust(width) if header == "ALIAS" else cell)
    return " ".join(cells).rstrip()


def render_table(document: dict[str, Any]) -> str:
    rows = document["pools"]
    header = " ".join(
        (h.ljust(w) if h == "ALIAS" else h.rjust(w)) for h, w, _ in COLUMNS
    ).rstrip()
    # The directory first: a command run with another environment than the
    # workers reads another directory, and this line is how to notice it.
    lines = [f"Snapshots in {document['stats_dir']}", header]
    if not rows:
        lines.append("(no live pools: processes publish within a second of using one)")
        lines.append("(workers with another environment publish elsewhere: see --help)")
    for row in rows:
        lines.append(
            _table_row(
                {
                    **row,
                    "alias": str(row.get("alias", ""))[:8],
                    "wait_p50": row.get("wait_ms", {}).get("p50", 0.0),
                    "wait_p99": row.get("wait_ms", {}).get("p99", 0.0),
                    "age": _age(row.get("snapshot_age", 0.0)),
                }
            )
        )
    totals = document["totals"]
    lines.append("-" * len(header))
    lines.append(
        _table_row(
            {
                **totals,
                "pid": "total",
                "alias": f"{totals['processes']} proc",
                "wait_p50": totals["wait_ms"]["p50"],
                "wait_p99": totals["wait_ms"]["p99"],
                "age": "",
            }
        )
    )
    lines.append(LEGEND)
    lines.extend(_release_lines(rows))
    for alias, drain in document["drains"].items():
        if drain["generation"]:
            lines.append(
                f"Drain {drain['generation']} of {alias!r}: {drain['processes_applied']} of "
                f"{drain['processes']} processes applied it; "
                f"{drain['connections_pending']} older connections still checked out."
            )
    return "\n".join(lines)


def _release_lines(rows: list[dict[str, Any]]) -> list[str]:
    """One line per alias whose pools give connections back per transaction:
    the mode, and how often its requests pinned (POOL['release'])."""
    lines = []
    aliases: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if row.get("release") == "transaction":
            aliases.setdefault(str(row.get("alias", "")), []).append(row)
    for alias, of_alias in aliases.items():
        releases = sum(r.get("releases", 0) for r in of_alias if isinstance(r.get("releases"), int))
        pins: dict[str, int] = {}
        for row in of_alias:
            for reason, count in (row.get("pins") or {}).items():
                pins[reason] = pins.get(reason, 0) + count
        pinned = ", ".join(f"{reason} {count}" for reason, count in sorted(pins.items()))
        lines.append(
            f"Release of {alias!r}: per transaction; {releases} returns between "
            f"transactions; pins: {pinned or 'none'}."
        )
    return lines


# -- the server's own view ---------------------------------------------------------


def server_view(alias: str) -> dict[str, Any]:
    """This application's sessions by state, and the server's limits, asked over a
    connection of its own (outside any pool, so this command publishes nothing).

    It is opened with the parameters a pooled connection of *alias* gets, the
    ``connect_params`` hook included: where the credentials come only from the
    hook (a short-lived token), Django's parameters alone would be refused.
    """
    base = connections[alias]
    if base.vendor not in ("postgresql", "mysql"):
        raise CommandError(f"--server does not know {base.vendor!r} servers.")
    # Built for the alias (the hook is called with it); building does no I/O, and
    # this wrapper never checks a connection out: it only dials one, directly.
    probe: Any = type(base)(copy.deepcopy(base.settings_dict), alias)
    params = probe.pool_connect_params()
    if params.get("application_name") == application_name(alias, os.getpid()):
        # Not one of the pool's sessions: don't name it like one.
        params["application_name"] = "dpb:poolstats"
    with introspect.dialled(probe, params) as conn:
        # The same facts the W002 check reads, so that both name the same limit.
        facts = introspect.server_limits(conn, base.vendor)
        return {
            "max_connections": facts["max_connections"],
            "superuser_reserved_connections": facts.get("superuser_reserved_connections"),
            "reserved_connections": facts.get("reserved_connections"),
            "max_user_connections": facts.get(
                "role_connection_limit", facts.get("max_user_connections")
            ),
            # The server's limit for an ordinary role, both reserves taken off:
            # the count the W002 check compares a pool's worst case with.
            "connection_limit": facts["connection_limit"],
            **introspect.sessions(conn, base.vendor),
        }


def render_server(alias: str, view: dict[str, Any]) -> str:
    limits = f"max_connections {view['max_connections']}"
    if view.get("superuser_reserved_connections") is not None:
        reserved = f"{view['superuser_reserved_connections']} for superusers"
        if view.get("reserved_connections"):
            reserved += f", {view['reserved_connections']} reserved"
        limits += f" ({reserved})"
    if view.get("max_user_connections") is not None:
        limits += f", max_user_connections {view['max_user_connections']}"
    lines = [f"Server view of {alias!r}:", f"  {limits}."]
    if view.get("connection_limit") is not None:
        lines.append(
            f"  {view['connection_limit']} usable by this application: the limit W002 checks."
        )
    if view.get("server_sessions") is not None:
        lines.append(f"  {view['server_sessions']} sessions open on the server in all.")
    lines.append(f"{'SESSIONS (application / user)':36} {'PID':>7} {'IDLE':>5} "
                 f"{'ACTIVE':>6} {'IN-TRX':>6} {'OTHER':>5}")
    for group in [*view["sessions"], {"name": "total", "pid": None, **view["totals"]}]:
        pid = "" if group.get("pid") is None else group["pid"]
        lines.append(
            f"{_fit(group['name'], 36).strip().ljust(36)} {_fit(pid, 7)} {group['idle']:>5} "
            f"{group['active']:>6} {group['idle_in_transaction']:>6} {group['other']:>5}"
        )
    return "\n".join(lines)


class Command(BaseCommand):
    help = (
        "Show the connection pools of every process on this host that serves these "
        "settings (all Gunicorn workers, Celery children, ...): a row per process and "
        "database alias, with totals. Processes publish their figures at most about "
        "once a second; rows of processes that exited are dropped. The first line "
        "names the directory read: " + ELSEWHERE + "."
    )
    # A monitoring command: it must work while something else is misconfigured.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--database",
            metavar="ALIAS",
            help="Only this database alias (default: every alias with a pooled ENGINE).",
        )
        parser.add_argument(
            "--json",
            action="store_true",
            help="Print one JSON document instead of the table (with --watch: one "
            "document per line).",
        )
        parser.add_argument(
            "--watch",
            type=float,
            metavar="SECONDS",
            help="Refresh every SECONDS until interrupted (Ctrl-C or SIGTERM); redraws "
            "in place on a terminal.",
        )
        parser.add_argument(
            "--server",
            action="store_true",
            help="Also ask each database server: this application's sessions by state "
            "(idle, active, idle in transaction) and the connection limits.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        aliases = select_aliases(options["database"])
        watch = options["watch"]
        if watch is not None and not watch > 0:
            raise CommandError(f"--watch takes a number of seconds > 0, not {watch!r}.")
        as_json, with_server = options["json"], options["server"]
        if watch is None:
            self.stdout.write(self._render(aliases, as_json, with_server, indent=2))
            return
        tty = self.stdout.isatty()
        try:
            with _stop_on_sigterm():
                self._watch(aliases, as_json, with_server, watch, tty)
        except (KeyboardInterrupt, _Stopped):
            self.stdout.write("")

    def _watch(
        self, aliases: list[str], as_json: bool, with_server: bool, watch: float, tty: bool
    ) -> None:
        while True:
            text = self._render(aliases, as_json, with_server, indent=None)
            if as_json:
                self.stdout.write(text)
            elif tty:
                # Home, clear the screen, draw: a redraw in place.
                stamp = time.strftime("%H:%M:%S")
                self.stdout.write(f"\x1b[H\x1b[2Jpoolstats every {watch:g} s, {stamp}\n{text}")
            else:
                self.stdout.write(f"-- {time.strftime('%Y-%m-%d %H:%M:%S')}\n{text}\n")
            self.stdout.flush()
            time.sleep(watch)

    def _render(self, aliases: list[str], as_json: bool, with_server: bool,
                indent: int | None) -> str:
        document = collect(aliases)
        if with_server:
            document["server"] = {}
            for alias in aliases:
                try:
                    document["server"][alias] = server_view(alias)
                except CommandError:
                    raise
                except Exception as exc:
                    # The driver's message: it never carries the password.
                    document["server"][alias] = {"error": f"{type(exc).__name__}: {exc}"}
        if as_json:
            return json.dumps(document, indent=indent, sort_keys=False)
        parts = [render_table(document)]
        for alias, view in document.get("server", {}).items():
            if "error" in view:
                parts.append(f"Server view of {alias!r}: unavailable:\n  {view['error']}")
            else:
                parts.append(render_server(alias, view))
        return "\n\n".join(parts)


class _Stopped(Exception):
    """SIGTERM arrived during --watch."""


def _raise_stopped(signum: int, frame: Any) -> None:
    raise _Stopped


@contextmanager
def _stop_on_sigterm() -> Iterator[None]:
    """Make SIGTERM end --watch like Ctrl-C does: a clean exit, status 0.

    Only where SIGTERM still has its default action (which would kill the
    process mid-line) and only in the main thread, where Python runs handlers.
    Ctrl-C is left as inherited: a job started in the background with SIGINT
    ignored is meant to ignore it, and SIGTERM stops it.
    """
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    ):
        yield
        return
    signal.signal(signal.SIGTERM, _raise_stopped)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
