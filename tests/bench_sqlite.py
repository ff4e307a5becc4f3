"""What pooling saves on SQLite: one request (connect, one query, close) on the stock
engine with CONN_MAX_AGE=0 and on django_poolbackend.sqlite3, same file.

    .venv/bin/python tests/bench_sqlite.py     (docs/engines.md quotes its output)
"""

import os
import shutil
import statistics
import tempfile
import time

import django
from django.conf import settings

ROUNDS, REQUESTS = 5, 3000


def main() -> None:
    directory = tempfile.mkdtemp(prefix="dpb_bench_")
    name = os.path.join(directory, "bench.sqlite3")
    settings.configure(
        DATABASES={
            "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": name},
            "stock": {"ENGINE": "django.db.backends.sqlite3", "NAME": name},
            "pooled": {
                "ENGINE": "django_poolbackend.sqlite3",
                "NAME": name,
                "POOL": {"max_size": 1},
            },
        },
        USE_TZ=True,
    )
    django.setup()
    from django.db import connections

    with connections["stock"].cursor() as cursor:
        cursor.execute("CREATE TABLE IF NOT EXISTS t (x integer)")
    connections["stock"].close()
    results: dict[str, list[float]] = {"stock": [], "pooled": []}
    # Alternate the engines, round after round, so drift on a busy machine hits both.
    for _ in range(ROUNDS):
        for alias, times in results.items():
            connection = connections[alias]
            start = time.perf_counter()
            for _ in range(REQUESTS):
                with connection.cursor() as cursor:
                    cursor.execute("SELECT count(*) FROM t")
                    cursor.fetchone()
                connection.close()
            times.append((time.perf_counter() - start) / REQUESTS * 1e6)
    for connection in connections.all():
        connection.close()
        getattr(connection, "close_pool", lambda: None)()
    shutil.rmtree(directory)
    for alias, times in results.items():
        rounds = ", ".join(f"{t:.1f}" for t in times)
        print(f"{alias:>6}: median {statistics.median(times):6.1f} µs per request ({rounds})")


if __name__ == "__main__":
    main()
