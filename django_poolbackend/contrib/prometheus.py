"""A ``prometheus_client`` collector for the pools of every process on this host.

It reads the snapshots each process publishes (``django_poolbackend.snapshots``), so
one ``/metrics`` endpoint, in any one process, reports every worker's pools,
labelled by ``alias`` and ``pid``::

    from prometheus_client import REGISTRY
    from django_poolbackend.contrib.prometheus import PoolCollector

    REGISTRY.register(PoolCollector())

Needs the optional extra: ``pip install django-poolbackend[prometheus]``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

try:
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
    )
    from prometheus_client.registry import Collector
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    from django.core.exceptions import ImproperlyConfigured

    raise ImproperlyConfigured(
        "django_poolbackend.contrib.prometheus needs prometheus_client: "
        "pip install django-poolbackend[prometheus]"
    ) from exc

from .. import publish
from ..core.stats import PROMETHEUS_BOUNDS_S, Histogram
from ..snapshots import read_snapshots

logger = logging.getLogger("django_poolbackend")

#: (metric name without _total, figures key, help) of the counters.
COUNTERS = (
    ("django_pool_checkouts", "checkouts", "Connections handed out."),
    ("django_pool_timeouts", "timeouts", "Checkouts that gave up waiting (PoolTimeout)."),
    ("django_pool_rejected", "rejected", "Checkouts refused at once (max_waiting)."),
    ("django_pool_connects", "connects", "Physical connections opened."),
    ("django_pool_connect_errors", "connect_errors", "Failed attempts to open a connection."),
    ("django_pool_pings", "pings", "Liveness checks at checkout."),
    ("django_pool_ping_failures", "ping_failures", "Liveness checks that failed."),
    ("django_pool_resets", "resets", "Returns that cost a round trip to clean up."),
    ("django_pool_leaks", "leaks", "Connections held longer than leak_timeout."),
    (
        "django_pool_releases",
        "releases",
        "Returns between two transactions of a request (release='transaction').",
    ),
)


class PoolCollector(Collector):
    """Collects from the snapshots in *stats_dir* (default: the project's, from
    settings) at each scrape; a process that exited drops out.

    A scrape never fails because of the directory: a bad snapshot is skipped (the
    reader warns once, naming it), and a directory refused as unsafe or unreadable
    is reported once in the log and reads as no process at all, so the rest of
    ``/metrics`` still works.
    """

    def __init__(self, stats_dir: str | Path | None = None) -> None:
        self.stats_dir = Path(stats_dir) if stats_dir is not None else None
        self._refused: str | None = None

    def _snapshots(self) -> list[dict[str, Any]]:
        try:
            snapshots = read_snapshots(self.stats_dir)
        except (publish.UntrustedDirectory, OSError) as exc:
            # Refused as unsafe, or unreadable (a permission, an I/O error): the
            # scrape goes on without the pools, and the reason is logged once
            # until it changes or goes away.
            reason = f"{type(exc).__name__}: {exc}"
            if reason != self._refused:
                self._refused = reason
                logger.error("Pool statistics: the Prometheus collector reads nothing: %s", reason)
            return []
        self._refused = None
        return snapshots

    def collect(self) -> Iterator[Metric]:
        labels = ["alias", "pid"]
        connections = GaugeMetricFamily(
            "django_pool_connections",
            "Open connections by state.",
            labels=[*labels, "state"],
        )
        waiting = GaugeMetricFamily(
            "django_pool_waiting", "Checkouts waiting for a connection.", labels=labels
        )
        max_size = GaugeMetricFamily(
            "django_pool_max_size", "The pool's max_size setting.", labels=labels
        )
        min_size = GaugeMetricFamily(
            "django_pool_min_size", "The pool's min_size setting.", labels=labels
        )
        pending = GaugeMetricFamily(
            "django_pool_drain_pending",
            "Connections older than the last drain, still checked out.",
            labels=labels,
        )
        age = GaugeMetricFamily(
            "django_pool_snapshot_age_seconds",
            "Seconds since the process published its figures.",
            labels=labels,
        )
        counters = {
            key: CounterMetricFamily(name, text, labels=labels) for name, key, text in COUNTERS
        }
        closed = CounterMetricFamily(
            "django_pool_closed", "Connections closed, by reason.", labels=[*labels, "reason"]
        )
        wait = HistogramMetricFamily(
            "django_pool_checkout_wait_seconds",
            "Time a checkout waited for a free connection.",
            labels=labels,
        )
        hold = GaugeMetricFamily(
            "django_pool_hold_seconds_max",
            "Longest time a connection was held (since start).",
            labels=labels,
        )
        for snapshot in self._snapshots():
            pid = str(snapshot["pid"])
            for alias, figures in snapshot.get("pools", {}).items():
                values = [str(alias), pid]
                connections.add_metric([*values, "idle"], _n(figures, "idle"))
                connections.add_metric([*values, "in_use"], _n(figures, "in_use"))
                waiting.add_metric(values, _n(figures, "waiting"))
                max_size.add_metric(values, _n(figures, "max_size"))
                min_size.add_metric(values, _n(figures, "min_size"))
                pending.add_metric(values, _n(figures, "drain_pending"))
                age.add_metric(values, float(snapshot.get("age", 0.0)))
                for key, family in counters.items():
                    family.add_metric(values, _n(figures, key))
                for reason, count in sorted(figures.get("closed_by_reason", {}).items()):
                    closed.add_metric([*values, str(reason)], float(count))
                hist, zeros = Histogram.from_json(figures.get("wait_histogram", {}))
                buckets = [
                    (_le(bound), float(count))
                    for bound, count in hist.cumulative(PROMETHEUS_BOUNDS_S, zeros)
                ]
                buckets.append(("+Inf", float(hist.count + zeros)))
                wait.add_metric(values, buckets, sum_value=hist.total / 1000.0)
                hold.add_metric(values, float(figures.get("hold_ms", {}).get("max", 0.0)) / 1000)
        yield connections
        yield waiting
        yield max_size
        yield min_size
        yield pending
        yield age
        yield from counters.values()
        yield closed
        yield wait
        yield hold


def _n(figures: dict[str, Any], key: str) -> float:
    value = figures.get(key, 0)
    return float(value) if isinstance(value, int | float) else 0.0


def _le(bound: float) -> str:
    return repr(float(bound))
