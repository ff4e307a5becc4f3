"""What every benchmark shares: the databases, fresh-subprocess runs, interleaving.

Each measurement runs in a fresh interpreter (``python -m benchmarks child ...``) so
that no configuration inherits another's imports, pools, caches or heap; the
parent runs the configurations of a group in turn, A B C A B C ..., so that the
machine's drift (other jobs on a shared 2-core box) spreads over all of them
instead of landing on one, and reports the median of the rounds.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

#: Our own databases (never another helper's): created by ``prepare()``.
DB_NAME = os.environ.get("DPB_BENCH_DB", "dpb_bench")
PG = {"HOST": "127.0.0.1", "PORT": "5432", "USER": "postgres", "PASSWORD": "", "NAME": DB_NAME}
MY = {"HOST": "127.0.0.1", "PORT": "3306", "USER": "root", "PASSWORD": "", "NAME": DB_NAME}
SERVERS = {"postgresql": PG, "mysql": MY}
URLS = {
    "postgresql": f"postgres://postgres@127.0.0.1:5432/{DB_NAME}",
    "mysql": f"mysql://root@127.0.0.1:3306/{DB_NAME}",
}

#: Every pool in every comparison has this many connections.
POOL_SIZE = 4

#: An application_name / connection attribute that marks our sessions, so that
#: sampling and clean-up only ever look at (or kill) what the benchmark opened.
APP_NAME = "dpb_bench"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_child(spec: dict, timeout: float) -> dict:
    """Run ``benchmarks.children:<fn>(**kwargs)`` in a fresh interpreter."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONHASHSEED": "0"}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "child", json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=env,
    )
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        return {"error": f"exit {proc.returncode}: {tail}"}
    return json.loads(lines[-1])


def interleaved(
    configs: dict[str, dict], rounds: int, timeout: float, label: str
) -> dict[str, list[dict]]:
    """Run every configuration once per round, in the same order each round."""
    results: dict[str, list[dict]] = {name: [] for name in configs}
    for number in range(rounds):
        for name, spec in configs.items():
            started = time.monotonic()
            try:
                value = run_child(spec, timeout)
            except subprocess.TimeoutExpired:
                value = {"error": f"timed out after {timeout:.0f} s"}
            results[name].append(value)
            status = value.get("error", "ok").splitlines()[-1][:160]
            took = time.monotonic() - started
            log(f"  [{label} {number + 1}/{rounds}] {name}: {status} ({took:.1f} s)")
    return results


def medians(runs: list[dict]) -> dict[str, Any]:
    """The median of each numeric metric over the rounds that succeeded."""
    good = [run for run in runs if "error" not in run]
    out: dict[str, Any] = {"rounds_ok": len(good), "rounds": len(runs)}
    if not good:
        out["error"] = runs[-1].get("error") if runs else "not run"
        return out
    for key in good[0]:
        values = [run[key] for run in good if isinstance(run.get(key), (int, float))]
        if values and len(values) == len(good):
            out[key] = statistics.median(values)
        elif key not in out:
            out[key] = good[-1][key]
    return out


def timed_loop(fn: Callable[[], None], budget: float, batch: int = 50) -> tuple[float, int]:
    """µs per call of *fn*, over about *budget* seconds (after a short warm-up)."""
    deadline = time.perf_counter() + min(0.2, budget / 4)
    while time.perf_counter() < deadline:
        for _ in range(batch):
            fn()
    count = 0
    started = time.perf_counter()
    deadline = started + budget
    now = started
    while now < deadline:
        for _ in range(batch):
            fn()
        count += batch
        now = time.perf_counter()
    return (now - started) / count * 1e6, count


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
