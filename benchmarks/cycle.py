"""Cycle cost: one checkout+return, and Django's request cycle, per configuration.

    python -m benchmarks.cycle [--rounds 5] [--n 20000]

Superseded by ``python -m benchmarks run --only micro,cycle`` (the whole suite:
``python -m benchmarks run``); kept because docs/observability.md quotes it.

A seed of the benchmark suite (issue 6): configurations run interleaved, A B A B,
each round in a fresh subprocess, and the report gives medians and ratios, not
single absolute figures. Needs PostgreSQL on 127.0.0.1:5432 (database dpb_demo,
created by ./dev demo).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

DB = {"NAME": "dpb_demo", "USER": "postgres", "HOST": "127.0.0.1", "PORT": "5432"}

CONFIGS = {
    "bare: django_poolbackend": "bare_ours",
    "bare: psycopg_pool": "bare_psycopg_pool",
    "django cycle: stock persistent": ("django.db.backends.postgresql", 600, None),
    "django cycle: django_poolbackend": ("django_poolbackend.postgresql", 0, None),
    "django cycle: Django's built-in pool": (
        "django.db.backends.postgresql",
        0,
        {"min_size": 1, "max_size": 4},
    ),
}


def _time(fn, n: int) -> float:
    for _ in range(200):
        fn()
    started = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - started) / n * 1e6


def bare_ours(n: int) -> float:
    import psycopg

    from django_poolbackend.core import Pool, PoolConfig
    from django_poolbackend.drivers import PsycopgDriver

    pool = Pool(PoolConfig(max_size=4), PsycopgDriver(), name="bench")

    def opener() -> psycopg.Connection:
        return psycopg.connect(host=DB["HOST"], user=DB["USER"], dbname=DB["NAME"], autocommit=True)

    getconn, putconn = pool.getconn, pool.putconn

    def cycle() -> None:
        putconn(getconn(opener))

    return _time(cycle, n)


def bare_psycopg_pool(n: int) -> float:
    import psycopg_pool

    pool = psycopg_pool.ConnectionPool(
        f"host={DB['HOST']} user={DB['USER']} dbname={DB['NAME']}",
        min_size=4,
        max_size=4,
        open=True,
    )
    pool.wait()
    getconn, putconn = pool.getconn, pool.putconn

    def cycle() -> None:
        putconn(getconn())

    try:
        return _time(cycle, n)
    finally:
        pool.close()


def django_cycle(engine: str, max_age: int, pool: dict | None, n: int) -> float:
    import django
    from django.conf import settings

    options = {"pool": pool} if pool else {}
    settings.configure(
        USE_TZ=True,
        DATABASES={
            "default": {"ENGINE": engine, **DB, "CONN_MAX_AGE": max_age, "OPTIONS": options}
        },
    )
    django.setup()
    from django.db import close_old_connections, connections

    connection = connections["default"]

    def cycle() -> None:
        close_old_connections()
        connection.ensure_connection()
        close_old_connections()

    return _time(cycle, n)


def child(name: str, n: int) -> None:
    spec = CONFIGS[name]
    value = globals()[spec](n) if isinstance(spec, str) else django_cycle(*spec, n)
    print(json.dumps(value))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.n)
        return
    results: dict[str, list[float]] = {name: [] for name in CONFIGS}
    for _ in range(args.rounds):
        for name in CONFIGS:  # interleaved: every configuration once per round
            out = subprocess.run(
                [sys.executable, "-m", "benchmarks.cycle", "--child", name, "--n", str(args.n)],
                capture_output=True,
                text=True,
                check=True,
            )
            results[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
    medians = {name: statistics.median(values) for name, values in results.items()}
    print(f"{'configuration':40} {'median µs':>10}  rounds")
    for name, value in medians.items():
        print(f"{name:40} {value:10.2f}  {', '.join(f'{v:.2f}' for v in results[name])}")
    ours, theirs = medians["bare: django_poolbackend"], medians["bare: psycopg_pool"]
    print(f"\nbare checkout+return: ours / psycopg_pool = {ours / theirs:.2f}")
    cycle = medians["django cycle: django_poolbackend"]
    persistent = medians["django cycle: stock persistent"]
    builtin = medians["django cycle: Django's built-in pool"]
    print(
        f"django cycle: ours - persistent = {cycle - persistent:+.2f} µs; "
        f"ours / built-in pool = {cycle / builtin:.2f}"
    )


if __name__ == "__main__":
    main()
