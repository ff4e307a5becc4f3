"""``manage.py pooldrain``: every process serving these settings retires its
current connections, idle ones at once and checked-out ones when they come back,
within about a second and without failing a request (after a failover, a
credential rotation, a server parameter change).

The command holds its arguments and messages only: it asks for the drain through
:mod:`django_poolbackend.publish` and watches it arrive in the document
:mod:`django_poolbackend.snapshots` builds, the one ``poolstats`` prints."""

from __future__ import annotations

import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from ... import publish
from ...snapshots import ELSEWHERE, collect, environment, select_aliases


class Command(BaseCommand):
    help = (
        "Make every process on this host that serves these settings retire its pooled "
        "connections: idle ones at once, checked-out ones when they are returned. "
        "Requests keep being served on new connections. Processes notice within "
        "about a second. Prints the statistics directory used and how many processes "
        "the drain reached; fails when it reached none."
    )
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--database",
            metavar="ALIAS",
            help="Drain only this database alias (default: every alias with a pooled ENGINE).",
        )
        parser.add_argument(
            "--wait",
            type=float,
            metavar="SECONDS",
            help="Wait up to SECONDS until every live process has applied the drain and "
            "returned its older connections; fail if they have not.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        aliases = select_aliases(options["database"])
        wait = options["wait"]
        if wait is not None and not wait >= 0:
            raise CommandError(f"--wait takes a number of seconds >= 0, not {wait!r}.")
        directory = publish.stats_dir()
        try:
            generations = {alias: publish.request_drain(alias, directory) for alias in aliases}
        except publish.UntrustedDirectory as exc:
            raise CommandError(f"{exc} No drain was requested.") from None
        for alias, generation in generations.items():
            self.stdout.write(
                f"Drain {generation} of {alias!r} requested: processes retire their "
                "connections within about a second."
            )
        self.stdout.write(f"Statistics directory: {directory}")
        if wait is None:
            drains = collect(aliases)["drains"]
            self._reached(directory, drains, "each applies it within about a second")
            return
        deadline = time.monotonic() + wait
        while True:
            drains = collect(aliases)["drains"]
            pending = {
                alias: d
                for alias, d in drains.items()
                if d["processes_applied"] < d["processes"] or d["connections_pending"]
            }
            # No process at all is not success: keep looking until the deadline
            # (a worker may publish meanwhile), then say why none was seen.
            if not pending and any(d["processes"] for d in drains.values()):
                self.stdout.write("Every process has retired its older connections.")
                self._reached(directory, drains, "each applied it")
                return
            if time.monotonic() >= deadline:
                if not pending:
                    self._reached(directory, drains, "each applied it")
                detail = "; ".join(
                    f"{alias!r}: {d['processes_applied']} of {d['processes']} processes "
                    f"applied it, {d['connections_pending']} connections still out"
                    for alias, d in pending.items()
                )
                raise CommandError(f"The drain is not complete after {wait:g} s: {detail}.")
            time.sleep(0.1)

    def _reached(self, directory: object, drains: dict[str, dict[str, int]], verb: str) -> None:
        """Say how many processes the drain reached; fail if none (the likeliest
        cause is a command that looks in another directory than the workers)."""
        total = sum(d["processes"] for d in drains.values())
        if not total:
            raise CommandError(
                f"The drain reached no process: no process publishes a pool of "
                f"{', '.join(repr(a) for a in drains)} in {directory}. If the workers "
                f"are running, they publish elsewhere: {ELSEWHERE} ({environment()}). "
                "The drain request stays recorded for processes that use this directory."
            )
        detail = ", ".join(f"{alias!r}: {d['processes']}" for alias, d in drains.items())
        self.stdout.write(f"Processes reached: {total} ({detail}); {verb}.")
