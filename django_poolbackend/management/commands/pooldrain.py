"""``manage.py pooldrain``: every process serving these settings retires its
current connections, idle ones at once and checked-out ones when they come back,
within about a second and without failing a request (after a failover, a
credential rotation, a server parameter change)."""

from __future__ import annotations

import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from ... import publish
from .poolstats import check_alias, collect


class Command(BaseCommand):
    help = (
        "Make every process on this host that serves these settings retire its pooled "
        "connections: idle ones at once, checked-out ones when they are returned. "
        "Requests keep being served on new connections. Processes notice within "
        "about a second."
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
        aliases = check_alias(options["database"])
        wait = options["wait"]
        if wait is not None and not wait >= 0:
            raise CommandError(f"--wait takes a number of seconds >= 0, not {wait!r}.")
        generations = {alias: publish.request_drain(alias) for alias in aliases}
        for alias, generation in generations.items():
            self.stdout.write(
                f"Drain {generation} of {alias!r} requested: processes retire their "
                "connections within about a second."
            )
        if wait is None:
            return
        deadline = time.monotonic() + wait
        while True:
            drains = collect(aliases)["drains"]
            pending = {
                alias: d
                for alias, d in drains.items()
                if d["processes_applied"] < d["processes"] or d["connections_pending"]
            }
            if not pending:
                self.stdout.write("Every process has retired its older connections.")
                return
            if time.monotonic() >= deadline:
                detail = "; ".join(
                    f"{alias!r}: {d['processes_applied']} of {d['processes']} processes "
                    f"applied it, {d['connections_pending']} connections still out"
                    for alias, d in pending.items()
                )
                raise CommandError(f"The drain is not complete after {wait:g} s: {detail}.")
            time.sleep(0.1)
