"""``manage.py poolstats``: the pools of every process on this host that serves
these settings (all Gunicorn workers, Celery children, …), read from the snapshots
each process publishes (``django_poolbackend.publish``)."""

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

from ... import publish
from ...aliases import pooled_aliases
from ...core.stats import Histogram, merged
from ...mixin import application_name

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
_SUMMED = (
    "size",
    "idle",
    "in_use",
    "waiting",
    "max_size",
    "checkouts",
    "timeouts",
    "connect_errors",
    "connects",
    "closed",
    "pings",
    "ping_failures",
    "resets",
    "leaks",
    "drain_pending",
)


def check_alias(alias: str | None) -> list[str]:
    """The aliases to show: *alias*, or every pooled one."""
    pooled = pooled_aliases()
    if alias is None:
        return pooled
    if alias not in pooled:
        known = alias in connections.settings
        raise CommandError(
            f"{alias!r} is not "
            + (
                "a pooled database (its DatabaseWrapper is not a "
                "PooledDatabaseWrapperMixin)" if known else "a database alias"
            )
            + f"; pooled aliases: {', '.join(pooled) or 'none'}."
        )
    return [alias]


#: Why a command and the workers may not meet in one directory.
ELSEWHERE = (
    "the directory depends on DJANGO_POOLBACKEND_STATS_DIR, XDG_RUNTIME_DIR, TMPDIR "
    "and the settings module (and the user), so workers started with another "
    "environment publish elsewhere; give both the same DJANGO_POOLBACKEND_STATS_DIR"
)


def environment() -> str:
    """What decided this command's directory, to compare with the workers'
    environment (none of it is a secret: names of directories and modules)."""
    from django.conf import settings

    configured = getattr(settings, publish.SETTING, None)
    shown = [f"settings.{publish.SETTING}={configured}"] if configured else []
    for name in (publish.SETTING, "XDG_RUNTIME_DIR", "TMPDIR", "DJANGO_SETTINGS_MODULE"):
        shown.append(f"{name}={os.environ.get(name) or '(unset)'}")
    return f"this command ran with {', '.join(shown)}, as uid {os.getuid()}"


def collect(aliases: list[str]) -> dict[str, Any]:
    """The JSON document: a row per process and alias, totals, drain progress.

    Raises ``CommandError`` when the statistics directory is refused (another
    user could control it)."""
    directory = publish.stats_dir()
    rows = []
    waits: dict[str, list[tuple[Histogram, int]]] = {}
    try:
        snapshots = publish.read_snapshots(directory)
        generations = publish.drain_generations(directory)
    except publish.UntrustedDirectory as exc:
        raise CommandError(f"{exc} Nothing was read from it.") from None
    for snapshot in snapshots:
        for alias, figures in snapshot.get("pools", {}).items():
            if alias not in aliases:
                continue
            # The alias and pid its file says (validated to agree with the row).
            row = {**figures, "alias": alias, "pid": snapshot["pid"]}
            waits.setdefault(alias, []).append(Histogram.from_json(row.pop("wait_histogram", {})))
            row["snapshot_age"] = round(snapshot["age"], 3)
            rows.append(row)
    rows.sort(key=lambda r: (r.get("alias", ""), r.get("pid", 0)))
    totals: dict[str, Any] = {key: sum(int(r.get(key, 0)) for r in rows) for key in _SUMMED}
    totals["processes"] = len({r.get("pid") for r in rows})
    hist, zeros = merged(h for hs in waits.values() for h in hs)
    totals["wait_ms"] = hist.summary(zeros)
    drains = {}
    for alias in aliases:
        generation = generations.get(alias, 0)
        mine = [r for r in rows if r.get("alias") == alias]
        drains[alias] = {
            "generation": generation,
            "processes_applied": sum(1 for r in mine if r.get("drain_generation", 0) >= generation),
            "processes": len(mine),
            "connections_pending": sum(int(r.get("drain_pending", 0)) for r in mine),
        }
    return {
        "stats_dir": str(directory),
        "generated_at": time.time(),
        "pools": rows,
        "totals": totals,
        "drains": drains,
    }


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
    for alias, drain in document["drains"].items():
        if drain["generation"]:
            lines.append(
                f"Drain {drain['generation']} of {alias!r}: {drain['processes_applied']} of "
                f"{drain['processes']} processes applied it; "
                f"{drain['connections_pending']} older connections still checked out."
            )
    return "\n".join(lines)


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
    params = probe._dpb_params()
    if params.get("application_name") == application_name(alias, os.getpid()):
        # Not one of the pool's sessions: don't name it like one.
        params["application_name"] = "dpb:poolstats"
    conn = probe.get_new_connection(params)
    try:
        cursor = conn.cursor()
        try:
            if base.vendor == "postgresql":
                return _pg_view(cursor)
            return _mysql_view(cursor)
        finally:
            cursor.close()
    finally:
        conn.close()


def _pg_view(cursor: Any) -> dict[str, Any]:
    cursor.execute(
        "SELECT application_name, state, count(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND usename = current_user "
        "AND pid <> pg_backend_pid() AND backend_type = 'client backend' "
        "GROUP BY 1, 2 ORDER BY 1, 2"
    )
    groups: dict[str, dict[str, Any]] = {}
    for name, state, count in cursor.fetchall():
        group = groups.setdefault(name, _session_group(name))
        group[_STATES.get(state, "other")] += count
    cursor.execute(
        "SELECT current_setting('max_connections')::int, "
        "current_setting('superuser_reserved_connections')::int, "
        "(SELECT rolconnlimit FROM pg_roles WHERE rolname = current_user), "
        "(SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')"
    )
    max_connections, reserved, role_limit, total = cursor.fetchone()
    return _view(
        groups,
        max_connections=max_connections,
        superuser_reserved_connections=reserved,
        max_user_connections=None if role_limit < 0 else role_limit,
        server_sessions=total,
    )


_STATES = {"idle": "idle", "active": "active", "idle in transaction": "idle_in_transaction",
           "idle in transaction (aborted)": "idle_in_transaction"}


def _session_group(name: str) -> dict[str, Any]:
    # dpb:<alias>:<pid> is the name the pooled engine gives its sessions.
    pid = alias = None
    parts = name.split(":")
    if len(parts) >= 3 and parts[0] == "dpb" and parts[-1].isdigit():
        alias, pid = ":".join(parts[1:-1]), int(parts[-1])
    return {"name": name, "alias": alias, "pid": pid, "idle": 0, "active": 0,
            "idle_in_transaction": 0, "other": 0}


def _mysql_view(cursor: Any) -> dict[str, Any]:
    where = (
        "FROM information_schema.PROCESSLIST p WHERE p.USER = SUBSTRING_INDEX(USER(), '@', 1) "
        "AND p.DB = DATABASE() AND p.ID <> CONNECTION_ID()"
    )
    try:
        cursor.execute(
            "SELECT p.COMMAND, EXISTS(SELECT 1 FROM information_schema.INNODB_TRX t "
            "WHERE t.trx_mysql_thread_id = p.ID) " + where
        )
        rows = cursor.fetchall()
    except Exception:
        # Without the PROCESS privilege InnoDB's transaction list is hidden.
        cursor.execute("SELECT p.COMMAND, NULL " + where)
        rows = cursor.fetchall()
    cursor.execute("SELECT SUBSTRING_INDEX(USER(), '@', 1), DATABASE()")
    user, database = cursor.fetchone()
    group = _session_group(f"{user}@{database}")
    for command, in_trx in rows:
        if command == "Sleep":
            group["idle_in_transaction" if in_trx else "idle"] += 1
        else:
            group["active"] += 1
    cursor.execute(
        "SELECT @@GLOBAL.max_connections, @@max_user_connections, "
        "(SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS "
        "WHERE VARIABLE_NAME = 'THREADS_CONNECTED')"
    )
    max_connections, user_limit, connected = cursor.fetchone()
    return _view(
        {group["name"]: group} if rows else {},
        max_connections=int(max_connections),
        superuser_reserved_connections=None,
        max_user_connections=int(user_limit) or None,
        server_sessions=int(connected) if connected is not None else None,
    )


def _view(groups: dict[str, dict[str, Any]], **limits: Any) -> dict[str, Any]:
    sessions = list(groups.values())
    totals = {
        state: sum(g[state] for g in sessions)
        for state in ("idle", "active", "idle_in_transaction", "other")
    }
    return {**limits, "sessions": sessions, "totals": totals}


def render_server(alias: str, view: dict[str, Any]) -> str:
    limits = f"max_connections {view['max_connections']}"
    if view.get("superuser_reserved_connections") is not None:
        limits += f" ({view['superuser_reserved_connections']} for superusers)"
    if view.get("max_user_connections") is not None:
        limits += f", max_user_connections {view['max_user_connections']}"
    lines = [f"Server view of {alias!r}:", f"  {limits}."]
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
        aliases = check_alias(options["database"])
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
