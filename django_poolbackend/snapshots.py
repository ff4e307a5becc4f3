"""The document the management commands read: every process's pools, summed up.

Each process with a pool writes its own snapshot file (:mod:`django_poolbackend.publish`
writes them, reads them back and validates them). This module turns what those files
say into the one document ``manage.py poolstats`` prints and ``manage.py pooldrain``
watches: a row per process and alias, totals over the processes, and how far each
alias's drain has got. It also chooses the aliases a command shows and explains,
when no process is found, why the command may be looking in another directory than
the workers, so that both commands say it in the same words.
"""

from __future__ import annotations

import os
import time
from typing import Any

from django.conf import settings
from django.core.management.base import CommandError
from django.db import connections

from . import publish
from .aliases import pooled_aliases
from .core.stats import Histogram, merged

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
