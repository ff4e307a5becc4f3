"""The Markdown report (docs/benchmarks.md) from one run's results."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .common import ROOT

#: HTTP: workers x max_size bounds the server connections of a pooled config.
PEAK_LIMIT = 2 * 4


def _f(value: Any, digits: int = 1) -> str:
    if isinstance(value, bool) or value is None:
        return "–"
    if isinstance(value, (int, float)):
        return f"{value:,.{digits}f}"
    return str(value)


def _ratio(a: Any, b: Any) -> float | None:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b:
        return a / b
    return None


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _rounds(m: dict) -> str:
    text = f"{m.get('rounds_ok', 0)}/{m.get('rounds', 0)}"
    if m.get("error"):
        text += " — " + str(m["error"]).splitlines()[-1][:120]
    return text


def render(results: dict, out: Path, report_path: Path) -> str:
    s = results["sections"]
    m = results["machine"]
    here = report_path.parent

    def link(path: str) -> str:
        """A path stored relative to the repository, as the report must link it."""
        return os.path.relpath(ROOT / path, here)

    rel = os.path.relpath(out, here)
    dirty = " (work tree with uncommitted changes)" if m["work_tree_dirty"] else ""
    parts = [
        "# Benchmarks",
        "",
        "Produced by `" + results["command"] + "` "
        f"({'quick' if results['quick'] else 'full'} mode, {results['rounds']} rounds, "
        f"{results['budget_s']} s measuring window per micro measurement, "
        f"{results['seconds']} s in all). Raw figures: [`{rel}/results.json`]({rel}/results.json).",
        "",
        *_section_runs(s, results["command"]),
        "Every configuration runs in a fresh Python process; the configurations of a "
        "table run in turn, A B C A B C …, and each figure is the **median over the "
        "rounds**. The machine is a small shared box, so read the ratios, not the "
        "absolute numbers.",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['os']}; Python {m['python']}; "
        + ", ".join(f"{k} {v}" for k, v in m["packages"].items())
        + f"; PostgreSQL {m['postgresql']}; MariaDB {m['mariadb']}; {m['pgbouncer']}; "
        f"{m['wrk']}. Commit {m['commit']}{dirty}. Load average at start "
        f"{_f(m['load_at_start'][0], 2)}, at end {_f(m.get('load_at_end', [0])[0], 2)}.",
        "",
    ]
    insert_at = len(parts)  # the targets table goes right after the header
    targets: list[list[str]] = []

    if "micro" in s:
        med = s["micro"]["medians"]
        rows = []
        base = med.get("bare, uncontended | psycopg_pool", {}).get("us_per_cycle")
        for impl in ("ours", "psycopg_pool", "queuepool"):
            x = med.get(f"bare, uncontended | {impl}", {})
            rows.append(
                [
                    impl,
                    _f(x.get("us_per_cycle"), 2),
                    _f(_ratio(x.get("us_per_cycle"), base), 2),
                    _rounds(x),
                ]
            )
        parts += [
            "## Bare pool: one checkout + return",
            "",
            "`ours` is `django_poolbackend.core.Pool` with the psycopg driver; "
            "`psycopg_pool` is `ConnectionPool.getconn/putconn`; `queuepool` is "
            "SQLAlchemy's `QueuePool.connect()/close()`. Pools of 4, filled first.",
            "",
            _table(["pool", "µs per cycle", "÷ psycopg_pool", "rounds ok"], rows),
            "",
        ]
        rows = []
        cb = med.get("bare, 8 threads on 4 | psycopg_pool", {})
        for impl in ("ours", "psycopg_pool", "queuepool"):
            x = med.get(f"bare, 8 threads on 4 | {impl}", {})
            rows.append(
                [
                    impl,
                    _f(x.get("ops_per_s"), 0),
                    _f(_ratio(x.get("ops_per_s"), cb.get("ops_per_s")), 2),
                    _f(x.get("p50_wait_us"), 1),
                    _f(x.get("p99_wait_us"), 1),
                    _rounds(x),
                ]
            )
        parts += [
            "8 threads on a pool of 4 (each holder yields the GIL once while holding, "
            "`time.sleep(0)`, so that the others really find the pool empty):",
            "",
            _table(
                ["pool", "cycles/s", "÷ psycopg_pool", "p50 wait µs", "p99 wait µs", "rounds ok"],
                rows,
            ),
            "",
        ]
        ours = med.get("bare, uncontended | ours", {}).get("us_per_cycle")
        r = _ratio(ours, base)
        targets.append(
            [
                "bare checkout+return ≤ 0.5 × psycopg_pool (uncontended)",
                _f(r, 2) + " ×",
                _met(r is not None and r <= 0.5),
            ]
        )
        co = med.get("bare, 8 threads on 4 | ours", {})
        r = _ratio(co.get("ops_per_s"), cb.get("ops_per_s"))
        lower = (
            isinstance(co.get("p99_wait_us"), float)
            and isinstance(cb.get("p99_wait_us"), float)
            and co["p99_wait_us"] < cb["p99_wait_us"]
        )
        targets.append(
            [
                "contended throughput ≥ 1.5 × psycopg_pool, with a lower p99",
                f"{_f(r, 2)} ×; p99 {_f(co.get('p99_wait_us'))} vs {_f(cb.get('p99_wait_us'))} µs",
                _met(r is not None and r >= 1.5 and lower),
            ]
        )
        rows = []
        for vendor in ("postgresql", "mysql"):
            x = med.get(f"floor | {vendor}", {})
            rows.append(
                [vendor, _f(x.get("select1_us")), _f(x.get("connect_close_us")), _rounds(x)]
            )
        parts += [
            "Physical floor (the driver alone, no Django, no pool):",
            "",
            _table(["server", "SELECT 1 round trip µs", "connect + close µs", "rounds ok"], rows),
            "",
        ]

    if "cycle" in s:
        med = s["cycle"]["medians"]
        parts += [
            "## Django's request cycle",
            "",
            "`close_old_connections()` → `ensure_connection()` → `close_old_connections()`, "
            "as a WSGI request runs them; then the same with one `SELECT 1` through a cursor. "
            "Round trips: 200 one-query requests in steady state, counted on the client "
            "side (libpq's protocol trace: every `Query` or `Sync` message; mysqlclient: "
            "a `Connection` subclass counting `query`, `ping`, `rollback`, `commit`, "
            "`autocommit`, …), and for MariaDB also the server's own `Questions` counter "
            "of the pooled session where one session served all requests (`Questions` "
            "does not count `COM_PING`).",
            "",
        ]
        for vendor in ("postgresql", "mysql"):
            rows = []
            persistent = med.get(f"{vendor} | stock, persistent", {})
            for name, x in med.items():
                if not name.startswith(vendor + " |"):
                    continue
                config = name.split(" | ", 1)[1]
                calls = x.get("calls")
                detail = (
                    ", ".join(f"{k} {v:g}" for k, v in calls.items())
                    if isinstance(calls, dict)
                    else "; ".join(x.get("statements", [])[:3])
                    if isinstance(x.get("statements"), list)
                    else ""
                )
                rows.append(
                    [
                        config,
                        _f(x.get("cycle_us")),
                        _f(x.get("query_cycle_us")),
                        _f(_ratio(x.get("query_cycle_us"), persistent.get("query_cycle_us")), 2),
                        _f(x.get("round_trips_per_request"), 2),
                        _f(x.get("server_questions_per_request"), 2),
                        detail[:110],
                        _rounds(x),
                    ]
                )
            parts += [
                f"### {vendor}",
                "",
                _table(
                    [
                        "configuration",
                        "cycle µs",
                        "cycle + SELECT 1 µs",
                        "÷ persistent (with query)",
                        "round trips / request",
                        "server Questions / request",
                        "what is sent (per request / first ones)",
                        "rounds ok",
                    ],
                    rows,
                ),
                "",
            ]
        pg = lambda c: med.get(f"postgresql | {c}", {})  # noqa: E731
        my = lambda c: med.get(f"mysql | {c}", {})  # noqa: E731
        r = _ratio(pg("django_poolbackend").get("cycle_us"), pg("Django's pool").get("cycle_us"))
        targets.append(
            [
                "Django cycle (no query) ≤ 0.4 × Django's built-in pool (PostgreSQL)",
                _f(r, 2) + " ×",
                _met(r is not None and r <= 0.4),
            ]
        )
        for vendor, get in (("PostgreSQL", pg), ("MariaDB", my)):
            a, b = (
                get("django_poolbackend").get("cycle_us"),
                get("stock, persistent").get("cycle_us"),
            )
            d = a - b if isinstance(a, float) and isinstance(b, float) else None
            targets.append(
                [
                    f"Django cycle (no query) within 3 µs of stock persistent ({vendor})",
                    f"{_f(d, 1)} µs",
                    _met(d is not None and d <= 3.0),
                ]
            )
        r = _ratio(
            my("django_poolbackend").get("query_cycle_us"),
            my("stock, persistent").get("query_cycle_us"),
        )
        r2 = _ratio(
            my("django-db-connection-pool").get("query_cycle_us"),
            my("stock, persistent").get("query_cycle_us"),
        )
        targets.append(
            [
                "one-query cycle on MariaDB ≤ 1.1 × stock persistent",
                f"{_f(r, 2)} × (django-db-connection-pool {_f(r2, 2)} ×)",
                _met(r is not None and r <= 1.1),
            ]
        )
        for vendor, get in (("PostgreSQL", pg), ("MariaDB", my)):
            x = get("django_poolbackend")
            rt = x.get("round_trips_per_request")
            q = x.get("server_questions_per_request")
            ok = rt == 1.0 and (q is None or q == 1.0)
            targets.append(
                [
                    f"exactly one statement per one-query request ({vendor})",
                    f"{_f(rt, 2)} round trips"
                    + (f", server Questions {_f(q, 2)}" if q is not None else ""),
                    _met(ok),
                ]
            )

    if "http" in s and s["http"].get("medians"):
        h = s["http"]
        parts += [
            "## HTTP: Gunicorn + wrk",
            "",
            f"Gunicorn with {h['workers']} workers (sync, or gthread with 8 threads), "
            f"the testproject's views `/one/` (one query) and `/items/` (a small ORM query), "
            f"`wrk -t2 -c{h['runs'].get('wrk_connections', 16)} "
            f"-d{h['runs'].get('duration_s')}s --latency` "
            f"on loopback after a 1 s warm-up, {h['rounds']} rounds. Pools of 4 per worker; "
            "PgBouncer (transaction mode, `default_pool_size` 8 = workers × 4) in front of "
            "the stock engine with `CONN_MAX_AGE=0`. Peak server connections: sessions "
            "on the benchmark database in `pg_stat_activity` / `processlist`, sampled every 50 ms.",
            "",
        ]
        for key, by_config in h["medians"].items():
            rows = []
            persistent = by_config.get("stock, persistent", {}).get("req_per_s")
            for config, x in by_config.items():
                rows.append(
                    [
                        config,
                        _f(x.get("req_per_s"), 0),
                        _f(_ratio(x.get("req_per_s"), persistent), 2),
                        _f(x.get("p50_ms"), 2),
                        _f(x.get("p99_ms"), 2),
                        _f(x.get("errors"), 0),
                        _f(x.get("peak_server_connections"), 0),
                        _rounds(x),
                    ]
                )
            parts += [
                f"### {key}",
                "",
                _table(
                    [
                        "configuration",
                        "req/s",
                        "÷ persistent",
                        "p50 ms",
                        "p99 ms",
                        "errors",
                        "peak server conns",
                        "rounds ok",
                    ],
                    rows,
                ),
                "",
            ]
        pg = h["medians"].get("postgresql | sync 2 | one-query", {})
        my = h["medians"].get("mysql | sync 2 | one-query", {})
        ours = pg.get("django_poolbackend", {}).get("req_per_s")
        r = _ratio(ours, pg.get("stock, persistent", {}).get("req_per_s"))
        r2 = _ratio(ours, pg.get("Django's pool", {}).get("req_per_s"))
        targets.append(
            [
                "HTTP req/s ≥ 0.97 × persistent and ≥ Django's pool (PostgreSQL, sync, one query)",
                f"{_f(r, 3)} × persistent, {_f(r2, 3)} × Django's pool",
                _met(r is not None and r >= 0.97 and r2 is not None and r2 >= 1.0),
            ]
        )
        r = _ratio(
            my.get("django_poolbackend", {}).get("req_per_s"),
            my.get("django-db-connection-pool", {}).get("req_per_s"),
        )
        targets.append(
            [
                "HTTP req/s ≥ 1.2 × django-db-connection-pool (MariaDB, sync, one query)",
                f"{_f(r, 2)} ×",
                _met(r is not None and r >= 1.2),
            ]
        )
        peaks = [
            by.get("django_poolbackend", {}).get("peak_server_connections")
            for by in h["medians"].values()
        ]
        peaks = [p for p in peaks if isinstance(p, (int, float))]
        targets.append(
            [
                f"peak server connections ≤ workers × max_size = {PEAK_LIMIT} "
                "(ours, every scenario)",
                f"max {_f(max(peaks) if peaks else None, 0)}",
                _met(bool(peaks) and max(peaks) <= PEAK_LIMIT),
            ]
        )

    if "scaling" in s:
        sc = s["scaling"]
        rows = []
        for impl, by in sc["summary"].items():
            for n, x in sorted(by.items(), key=lambda item: int(item[0])):
                rows.append(
                    [
                        impl,
                        str(n),
                        _f(x.get("ops_per_s"), 0),
                        _f(x.get("p99_wait_us"), 1),
                        _rounds(x),
                    ]
                )
        parts += [
            "## Scaling: threads on a pool of 4",
            "",
            f"![throughput and p99 wait by threads]({link(sc['plot'])})",
            "",
            f"Medians of {sc['rounds']} rounds.",
            "",
            _table(["pool", "threads", "cycles/s", "p99 wait µs", "rounds ok"], rows),
            "",
        ]

    if "memory" in s:
        x = s["memory"]["result"]
        if "error" in x:
            parts += ["## Memory", "", "Failed: " + x["error"], ""]
        else:
            flat = (
                x["tracemalloc_growth_bytes"] <= 16 * 1024
                and x["rss_growth_kb"] <= 512
                and x.get("package_growth_bytes", 0) <= 1024
            )
            parts += ["## Memory", ""]
            if "plot" in s["memory"]:
                parts += [f"![memory over checkouts]({link(s['memory']['plot'])})", ""]
            parts += [
                f"{x['checkouts']:,} checkouts + returns of the bare pool (ours, psycopg driver, "
                f"pool of 4) in {x['seconds']:.1f} s with tracemalloc on: RSS grew "
                f"{x['rss_growth_kb']} KiB, tracemalloc's traced memory grew "
                f"{x['tracemalloc_growth_bytes']} bytes in all (after a 10,000-checkout "
                "warm-up), of which memory allocated by the package's own code (tracemalloc "
                "snapshots filtered on `django_poolbackend`, compared between the first "
                f"sample and the last, {x.get('package_growth_over', 0):,} checkouts apart): "
                f"{x.get('package_growth_bytes', '?')} bytes. The rest is the interpreter's "
                "and the measurement's own bookkeeping. Flat means: at most 1 KiB in the "
                "package, 16 KiB traced in all and 512 KiB RSS over the whole run.",
                "",
            ]
            targets.append(
                [
                    "memory flat over 1,000,000 checkouts",
                    f"RSS +{x['rss_growth_kb']} KiB, traced +{x['tracemalloc_growth_bytes']} B "
                    f"(package +{x.get('package_growth_bytes', '?')} B)",
                    _met(flat),
                ]
            )

    notes = ROOT / "benchmarks" / "notes.md"
    if notes.exists():
        parts += [notes.read_text().rstrip(), ""]
    parts[insert_at:insert_at] = [
        "## Targets (issue 6)",
        "",
        _table(["target", "measured", "met?"], targets) if targets else "(no section run)",
        "",
    ]
    return "\n".join(parts) + "\n"


def _section_runs(sections: dict, command: str) -> list[str]:
    """Which run each section comes from, when they are not all from the last one."""
    runs = {name: entry["run"] for name, entry in sections.items() if "run" in entry}
    if all(run["command"] == command for run in runs.values()):
        return []
    lines = [
        "Where each section comes from (`--merge` keeps the sections a run does not redo):",
        "",
    ]
    for name, run in runs.items():
        mode = "quick" if run["quick"] else "full"
        rounds = sections[name].get("rounds", run["rounds"])  # http, scaling: their own
        lines.append(
            f"- {name}: `{run['command']}` ({mode} mode, {rounds} rounds; load "
            f"{_f(run['load_at_start'][0], 2)} → {_f(run['load_at_end'][0], 2)})"
        )
    return [*lines, ""]


def _met(ok: bool) -> str:
    return "yes" if ok else "**no**"
