"""Reading every process's snapshot back, and the document the commands show.

Each process with a pool writes its own snapshot file (:mod:`django_poolbackend.publish`
writes them, and owns the directory they are in). This module reads them back for
``manage.py poolstats``, ``pooldrain`` and the Prometheus collector: it validates
every file field by field and skips a bad one with one warning naming it, drops
the files of processes that are gone, and reads the drain generations. It turns
what the files say into the one document ``poolstats`` prints and ``pooldrain``
watches: a row per process and alias, totals over the processes, and how far each
alias's drain has got. It also chooses the aliases a command shows and explains,
when no process is found, why the command may be looking in another directory than
the workers, so that both commands say it in the same words.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import re
import time
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import CommandError
from django.db import connections

from . import publish
from .aliases import pooled_aliases
from .core.stats import BOUNDS_MS, Histogram, merged
from .publish import (
    BadFile,
    checked_count,
    generation_of,
    opened,
    proc_stat,
    read_json,
    shown_briefly,
    start_time,
)

logger = logging.getLogger("django_poolbackend")

#: Temporary files older than this belong to a writer that died mid-write.
_TMP_MAX_AGE = 60.0
#: (name, inode, mtime, size) of the bad files a reader already warned about, so
#: poolstats --watch and each Prometheus scrape do not repeat the warning.
_bad_seen: set[tuple[str, int, int, int]] = set()


# -- the commands' document ------------------------------------------------------

#: The figures summed over every process into the document's totals.
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

#: Why a command and the workers may not meet in one directory.
ELSEWHERE = (
    "the directory depends on DJANGO_POOLBACKEND_STATS_DIR, XDG_RUNTIME_DIR, TMPDIR "
    "and the settings module (and the user), so workers started with another "
    "environment publish elsewhere; give both the same DJANGO_POOLBACKEND_STATS_DIR"
)


def select_aliases(alias: str | None) -> list[str]:
    """The aliases a command works on: *alias*, or every pooled one when it is None.

    Raises ``CommandError`` naming the pooled aliases when *alias* is not one of
    them, so that a typo is not taken for an alias without processes.
    """
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


def environment() -> str:
    """What decided this command's directory, to compare with the workers'
    environment (none of it is a secret: names of directories and modules)."""
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
        snapshots = read_snapshots(directory)
        generations = drain_generations(directory)
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


# -- reading one file ------------------------------------------------------------


def _warn_bad(
    directory: Path, name: str, st: os.stat_result | None, reason: str, what: str = "snapshot"
) -> None:
    """Warn once about the bad file *name*: again only when it changed."""
    key = (name, st.st_ino, st.st_mtime_ns, st.st_size) if st is not None else (name, 0, 0, 0)
    if key in _bad_seen:
        return
    if len(_bad_seen) > 1000:
        _bad_seen.clear()
    _bad_seen.add(key)
    logger.warning(
        "Pool statistics: skipping unreadable %s %s (%s).", what, directory / name, reason
    )


# -- what a reader accepts ---------------------------------------------------------

#: Figures that are non-negative integers (gauges, counters, settings).
_COUNTS = frozenset(
    {
        "size", "idle", "in_use", "waiting", "requests", "checkouts", "waits",
        "timeouts", "rejected", "connects", "connect_errors", "connect_backoffs",
        "closed", "pings", "ping_failures", "resets", "leaks", "drains",
        "drain_pending", "drain_generation", "min_size", "max_size", "releases",
    }
)  # fmt: skip
_STRINGS = frozenset({"alias", "vendor", "host", "port", "database", "user"})
_TIMINGS = frozenset({"wait_ms", "hold_ms", "connect_ms", "checkouts_per_request"})
_NBUCKETS = len(BOUNDS_MS) + 1


def _number(value: Any, what: str) -> float:
    if type(value) not in (int, float) or not math.isfinite(value) or value < 0:
        raise BadFile(f"{what} is {shown_briefly(value)}, not a finite number >= 0")
    return float(value)


def _plain(value: Any, depth: int = 3) -> bool:
    """A JSON value shallow enough to print again (a setting's value)."""
    if value is None or isinstance(value, bool | int | str):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if depth and isinstance(value, list):
        return all(_plain(v, depth - 1) for v in value)
    if depth and isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v, depth - 1) for k, v in value.items())
    return False


def _check_figures(alias: str, figures: Any, pid: int) -> None:
    where = f"pools[{alias!r}]"
    if not isinstance(figures, dict):
        raise BadFile(f"{where} is {shown_briefly(figures)}, not an object")
    if figures.get("alias", alias) != alias:
        raise BadFile(f"{where}['alias'] is {shown_briefly(figures['alias'])}, not {alias!r}")
    if figures.get("pid", pid) != pid or type(figures.get("pid", pid)) is not int:
        raise BadFile(f"{where}['pid'] is {shown_briefly(figures['pid'])}, not {pid}")
    for key, value in figures.items():
        what = f"{where}[{key!r}]"
        if key in _COUNTS:
            checked_count(value, what)
        elif key in _STRINGS:
            if not isinstance(value, str):
                raise BadFile(f"{what} is {shown_briefly(value)}, not a string")
        elif key in _TIMINGS:
            if not isinstance(value, dict):
                raise BadFile(f"{what} is {shown_briefly(value)}, not an object")
            for part, part_value in value.items():
                if part == "count":
                    checked_count(part_value, f"{what}['count']")
                else:
                    _number(part_value, f"{what}[{part!r}]")
        elif key in ("closed_by_reason", "pins"):
            if not isinstance(value, dict):
                raise BadFile(f"{what} is {shown_briefly(value)}, not an object")
            for reason, count in value.items():
                checked_count(count, f"{what}[{reason!r}]")
        elif key == "wait_histogram":
            _check_histogram(value, what)
        elif not _plain(value):
            raise BadFile(f"{what} is not a plain value")


def _check_histogram(value: Any, what: str) -> None:
    if not isinstance(value, dict):
        raise BadFile(f"{what} is {shown_briefly(value)}, not an object")
    buckets = value.get("buckets", [])
    if not isinstance(buckets, list) or len(buckets) > _NBUCKETS:
        raise BadFile(f"{what}['buckets'] is not a list of at most {_NBUCKETS} pairs")
    for pair in buckets:
        if (
            not isinstance(pair, list)
            or len(pair) != 2
            or type(pair[0]) is not int
            or not 0 <= pair[0] < _NBUCKETS
        ):
            raise BadFile(f"{what}['buckets'] holds {shown_briefly(pair)}, not [bucket, count]")
        checked_count(pair[1], f"{what}['buckets'] count")
    for key in ("zeros", "count"):
        if key in value:
            checked_count(value[key], f"{what}[{key!r}]")
    for key in ("sum_ms", "max_ms"):
        if key in value:
            _number(value[key], f"{what}[{key!r}]")


def _check_snapshot(document: Any, pid: int) -> bool:
    """Whether *document* is a snapshot of this format; :class:`BadFile` saying
    what is wrong if it claims to be one and is not."""
    if not isinstance(document, dict):
        raise BadFile(f"it is {shown_briefly(document)}, not an object")
    if document.get("format") != publish.FORMAT:
        return False  # another version's: not ours to judge
    if document.get("pid") != pid or type(document.get("pid")) is not int:
        raise BadFile(f"its pid is {shown_briefly(document.get('pid'))}, not the {pid} of its name")
    started = document.get("start_time")
    if started is not None:
        checked_count(started, "start_time")
    for key in ("written", "written_monotonic"):
        if key in document:
            _number(document[key], key)
    pools = document.get("pools")
    if not isinstance(pools, dict):
        raise BadFile(f"pools is {shown_briefly(pools)}, not an object")
    for alias, figures in pools.items():
        _check_figures(alias, figures, pid)
    return True


# -- drains ----------------------------------------------------------------------


def drain_generations(directory: Path | None = None) -> dict[str, int]:
    directory = directory or publish.stats_dir()
    out: dict[str, int] = {}
    try:
        with opened(directory, create=False) as dirfd:
            for name in os.listdir(dirfd):
                if not (name.startswith("drain-") and name.endswith(".json")):
                    continue
                st = None
                try:
                    data, st = read_json(dirfd, name)
                    alias, generation = generation_of(data, None)
                except FileNotFoundError:
                    continue
                except BadFile as exc:
                    _warn_bad(directory, name, exc.st or st, str(exc), "drain file")
                    continue
                out[alias] = generation
    except FileNotFoundError:
        pass
    return out


# -- reading (poolstats, the Prometheus collector) --------------------------------

_SNAPSHOT_NAME = re.compile(r"([0-9]{1,10})\.json")


def read_snapshots(directory: Path | None = None, *, clean: bool = True) -> list[dict[str, Any]]:
    """Every live process's snapshot, oldest pid first, each with ``age`` (seconds).

    Snapshots of processes that are gone (or whose pid now belongs to another
    process) are skipped and, with *clean*, deleted. A file that is not a valid
    snapshot is skipped with a warning naming it. Raises
    :class:`UntrustedDirectory` for a directory that fails the checks.
    """
    directory = directory or publish.stats_dir()
    try:
        with opened(directory, create=False) as dirfd:
            return _read_all(directory, dirfd, clean)
    except FileNotFoundError:
        return []


def _read_all(directory: Path, dirfd: int, clean: bool) -> list[dict[str, Any]]:
    now_wall, now_mono = time.time(), time.monotonic()
    out = []
    for name in os.listdir(dirfd):
        if name.startswith(".tmp-"):
            if clean:
                _remove_if_old(dirfd, name, now_wall)
            continue
        match = _SNAPSHOT_NAME.fullmatch(name)
        if match is None:
            continue
        pid = int(match.group(1))
        if not _alive(pid):
            if clean:
                _unlink(dirfd, name)
            continue
        st = None
        try:
            document, st = read_json(dirfd, name)
            if not _check_snapshot(document, pid):
                continue
        except FileNotFoundError:
            continue  # its process just exited
        except BadFile as exc:
            _warn_bad(directory, name, exc.st or st, str(exc))
            continue
        started = document.get("start_time")
        if started is not None and start_time(pid) not in (None, started):
            if clean:
                _unlink(dirfd, name)  # the pid was reused
            continue
        written = document.get("written_monotonic")
        if written is not None and written <= now_mono:
            document["age"] = now_mono - written
        else:
            document["age"] = max(0.0, now_wall - float(document.get("written", now_wall)))
        out.append(document)
    out.sort(key=lambda d: d["pid"])
    return out


def _alive(pid: int) -> bool:
    if not 0 < pid < 1 << 31:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError as exc:
        return exc.errno != errno.ESRCH
    # A zombie (exited, not yet reaped by its parent) no longer serves anything.
    # Where its state cannot be read, the signal's answer stands.
    fields = proc_stat(pid)
    return not fields or fields[0] != b"Z"


def _unlink(dirfd: int, name: str) -> None:
    try:
        os.unlink(name, dir_fd=dirfd)
    except OSError:
        pass


def _remove_if_old(dirfd: int, name: str, now: float) -> None:
    try:
        if now - os.stat(name, dir_fd=dirfd, follow_symlinks=False).st_mtime > _TMP_MAX_AGE:
            os.unlink(name, dir_fd=dirfd)
    except OSError:
        pass
