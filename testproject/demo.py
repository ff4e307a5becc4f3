"""The README's demo: a short load on the testproject, then each worker's pool.

    python -m testproject.demo describe | createdb | seed | load URL SECONDS

Run through ``./dev demo``, which prepares the database and starts Gunicorn.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import urllib.error
import urllib.request

import django


def _settings() -> dict:
    from django.conf import settings

    return settings.DATABASES["default"]


def describe() -> None:
    db = _settings()
    # Never the password.
    print(f"{db['ENGINE']} on {db['HOST']}:{db['PORT']}, database {db['NAME']}")


def createdb() -> None:
    db = _settings()
    if "postgresql" in db["ENGINE"]:
        import psycopg

        with psycopg.connect(
            host=db["HOST"],
            port=db["PORT"],
            user=db["USER"] or None,
            password=db["PASSWORD"] or None,
            dbname="postgres",
            autocommit=True,
        ) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", [db["NAME"]]
            ).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{db["NAME"]}"')
    else:
        import MySQLdb

        conn = MySQLdb.connect(
            host=db["HOST"], port=int(db["PORT"]), user=db["USER"], password=db["PASSWORD"]
        )
        conn.cursor().execute(f"CREATE DATABASE IF NOT EXISTS `{db['NAME']}`")
        conn.close()


def seed() -> None:
    from testproject.shop.models import Item

    missing = 20 - Item.objects.count()
    if missing > 0:
        Item.objects.bulk_create(Item(name=f"item {n}", stock=100) for n in range(missing))


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read()


def load(base: str, seconds: float, threads: int = 8) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            _get(base + "/one/")
            break
        except (urllib.error.URLError, ConnectionError):
            if time.monotonic() > deadline:
                raise SystemExit("the demo server did not start") from None
            time.sleep(0.1)

    paths = ["/one/", "/items/", "/transfer/"]
    counts = {"ok": 0, "errors": 0}
    latencies: list[float] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def worker(offset: int) -> None:
        n = offset
        while time.monotonic() < stop_at:
            started = time.monotonic()
            try:
                _get(base + paths[n % len(paths)])
                ok = True
            except Exception:
                ok = False
            elapsed = time.monotonic() - started
            with lock:
                counts["ok" if ok else "errors"] += 1
                latencies.append(elapsed)
            n += 1

    print(f"\n==> {threads} clients for {seconds:g} s on {', '.join(paths)}")
    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    latencies.sort()
    total = counts["ok"] + counts["errors"]
    p50 = latencies[len(latencies) // 2] * 1000 if latencies else 0
    p99 = latencies[int(len(latencies) * 0.99)] * 1000 if latencies else 0
    print(
        f"{total} requests, {counts['errors']} errors, {total / seconds:.0f} req/s, "
        f"p50 {p50:.1f} ms, p99 {p99:.1f} ms"
    )


def main(argv: list[str]) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "testproject.settings")
    command = argv[0] if argv else ""
    if command == "load":
        load(argv[1], float(argv[2]))
        return
    django.setup()
    actions = {"describe": describe, "createdb": createdb, "seed": seed}
    if command not in actions:
        raise SystemExit(__doc__)
    actions[command]()


if __name__ == "__main__":
    main(sys.argv[1:])
