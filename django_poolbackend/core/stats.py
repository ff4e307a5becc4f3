"""A fixed-memory timing histogram for the pool's wait, hold and connect times.

A pool lives as long as its process, so its timings can't be kept as a list: the
histogram counts values into log-spaced buckets instead and never grows. Ten
buckets a decade, on a 1-1.25-1.5-2-2.5-3-4-5-6-8 scale, give percentiles within
25 % of the true value from 1 µs to 100 s; the 1-2.5-5 steps are Prometheus's
usual bucket bounds, so the exporter needs no rebucketing.

Recording costs a ``bisect`` and three additions. The histogram takes no lock:
the pool records into it inside lock sections it holds anyway.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Sequence
from typing import Any

_STEPS = (1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0)

#: Upper bounds (inclusive), in milliseconds, from 0.001 ms to 100 s. A value
#: above the last bound counts in one overflow bucket at the end.
BOUNDS_MS: tuple[float, ...] = tuple(
    round(step * 10.0**exponent, 6) for exponent in range(-3, 5) for step in _STEPS
) + (100000.0,)

#: The bounds the Prometheus exporter reports (seconds): a subset of BOUNDS_MS.
PROMETHEUS_BOUNDS_S: tuple[float, ...] = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)

_NBUCKETS = len(BOUNDS_MS) + 1


class Histogram:
    """Counts of values (milliseconds) per log-spaced bucket, plus count, sum and max."""

    __slots__ = ("counts", "count", "total", "max")

    def __init__(self) -> None:
        self.counts = [0] * _NBUCKETS
        self.count = 0
        self.total = 0.0
        self.max = 0.0

    def add(self, ms: float) -> None:
        self.counts[bisect_left(BOUNDS_MS, ms)] += 1
        self.count += 1
        self.total += ms
        if ms > self.max:
            self.max = ms

    def copy(self) -> Histogram:
        other = Histogram()
        other.counts = self.counts.copy()
        other.count = self.count
        other.total = self.total
        other.max = self.max
        return other

    def merge(self, other: Histogram) -> None:
        counts = self.counts
        for index, value in enumerate(other.counts):
            counts[index] += value
        self.count += other.count
        self.total += other.total
        if other.max > self.max:
            self.max = other.max

    def summary(self, zeros: int = 0) -> dict[str, float | int]:
        """count, mean, p50, p99 and max in milliseconds (rounded to µs).

        *zeros* adds that many values of 0 without their having been recorded: the
        pool counts checkouts that did not wait instead of timing them.
        """
        count = self.count + zeros
        if count == 0:
            return {"count": 0, "mean": 0.0, "p50": 0.0, "p99": 0.0, "max": 0.0}
        return {
            "count": count,
            "mean": round(self.total / count, 3),
            "p50": self._quantile(0.50, zeros),
            "p99": self._quantile(0.99, zeros),
            "max": round(self.max, 3),
        }

    def _quantile(self, q: float, zeros: int) -> float:
        # The upper bound of the bucket holding the q-th value, never above the
        # largest value seen (so a single sample reads exactly).
        rank = q * (self.count + zeros)
        seen = float(zeros)
        if seen >= rank:
            return 0.0
        for index, value in enumerate(self.counts):
            seen += value
            if value and seen >= rank:
                bound = BOUNDS_MS[index] if index < len(BOUNDS_MS) else self.max
                return round(min(bound, self.max), 3)
        return round(self.max, 3)

    # -- the published form ------------------------------------------------------

    def to_json(self, zeros: int = 0) -> dict[str, Any]:
        """Sparse, JSON-safe: [bucket index, count] pairs, so snapshots stay small
        and another process can merge or rebucket them exactly."""
        return {
            "buckets": [[i, c] for i, c in enumerate(self.counts) if c],
            "zeros": zeros,
            "count": self.count + zeros,
            "sum_ms": round(self.total, 3),
            "max_ms": round(self.max, 3),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> tuple[Histogram, int]:
        """The histogram and its count of unrecorded zeros, from :meth:`to_json`."""
        hist = cls()
        for index, value in data.get("buckets", ()):
            index = int(index)
            if 0 <= index < _NBUCKETS:
                hist.counts[index] += int(value)
                hist.count += int(value)
        hist.total = float(data.get("sum_ms", 0.0))
        hist.max = float(data.get("max_ms", 0.0))
        return hist, int(data.get("zeros", 0))

    def cumulative(self, bounds_s: Sequence[float], zeros: int = 0) -> list[tuple[float, int]]:
        """(upper bound in seconds, values <= it) pairs, for a Prometheus histogram.

        Exact when every bound is one of BOUNDS_MS (PROMETHEUS_BOUNDS_S are)."""
        out = []
        for bound in bounds_s:
            index = bisect_left(BOUNDS_MS, bound * 1000.0 * (1 - 1e-9))
            out.append((bound, zeros + sum(self.counts[: index + 1])))
        return out


def merged(histograms: Iterable[tuple[Histogram, int]]) -> tuple[Histogram, int]:
    total = Histogram()
    zeros = 0
    for hist, extra in histograms:
        total.merge(hist)
        zeros += extra
    return total, zeros
