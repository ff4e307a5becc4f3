"""python -m benchmarks run [--quick] [--only micro,cycle,http,scaling,memory]

Writes ``results.json`` and the plots into ``--out`` (default docs/benchmarks/) and
the Markdown report into ``--report`` (default docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

from . import plots, report
from .children import DJANGO_CONFIGS
from .common import ROOT, URLS, interleaved, log, medians

SECTIONS = ("micro", "cycle", "http", "scaling", "memory")
BARE = ("ours", "psycopg_pool", "queuepool")


def spec(fn: str, **kwargs: object) -> dict:
    return {"fn": f"benchmarks.children:{fn}", "kwargs": kwargs}


def prepare() -> None:
    """Our benchmark database on both servers, migrated and seeded (idempotent)."""
    for vendor, url in URLS.items():
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "DJANGO_SETTINGS_MODULE": "testproject.settings",
            "DATABASE_URL": url,
        }
        for command in (
            [sys.executable, "-m", "testproject.demo", "createdb"],
            [sys.executable, "testproject/manage.py", "migrate", "--verbosity", "0"],
            [sys.executable, "-m", "testproject.demo", "seed"],
        ):
            done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(f"preparing the {vendor} database failed: {done.stderr[-500:]}")


def missing_tools(only: list[str]) -> list[str]:
    """What the chosen sections need and this machine lacks, as install hints.

    Checked before anything runs: a section that found its tool missing half-way
    through used to leave a report without its figures.
    """
    missing = []
    modules = {
        "psycopg_pool": "psycopg_pool",
        "sqlalchemy": "SQLAlchemy",
        "dj_db_conn_pool": "django-db-connection-pool",
        "matplotlib": "matplotlib",
        "gunicorn": "gunicorn",
    }
    for module, package in modules.items():
        if importlib.util.find_spec(module) is None:
            missing.append(f"{package} (pip install -e '.[bench]')")
    if "http" in only:
        if shutil.which("wrk") is None:
            missing.append("wrk (apt-get install wrk)")
        if not os.access("/usr/sbin/pgbouncer", os.X_OK):
            missing.append("pgbouncer (apt-get install pgbouncer)")
    return missing


def machine() -> dict:
    def run(*command: str) -> str:
        try:
            out = subprocess.run(command, capture_output=True, text=True, timeout=20)
            return (out.stdout or out.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "?"

    cpu = "?"
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next(line.split(":", 1)[1].strip() for line in handle if "model name" in line)
    except (OSError, StopIteration):
        pass
    versions = {}
    for name in (
        "Django",
        "psycopg",
        "psycopg-pool",
        "mysqlclient",
        "SQLAlchemy",
        "django-db-connection-pool",
        "gunicorn",
        "matplotlib",
    ):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "packages": versions,
        "postgresql": run(
            "psql", "-h", "127.0.0.1", "-U", "postgres", "-Atc", "SHOW server_version"
        ),
        "mariadb": run("mariadb", "-uroot", "-h127.0.0.1", "-Nse", "SELECT VERSION()"),
        "pgbouncer": run("/usr/sbin/pgbouncer", "--version"),
        "wrk": run("wrk", "--version"),
        "commit": run("git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"),
        "work_tree_dirty": bool(
            subprocess.run(
                ["git", "-C", str(ROOT), "status", "--porcelain"], capture_output=True, text=True
            ).stdout.strip()
        ),
        "load_at_start": os.getloadavg(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run_parser = sub.add_parser("run", help="run the benchmarks, write JSON, plots and the report")
    run_parser.add_argument(
        "--quick", action="store_true", help="short windows and fewer rounds (a few minutes)"
    )
    run_parser.add_argument(
        "--only",
        default=",".join(SECTIONS),
        help=f"comma-separated sections of {', '.join(SECTIONS)}",
    )
    run_parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="rounds per configuration (default: 3 quick, 5 full)",
    )
    run_parser.add_argument(
        "--out", default="docs/benchmarks", help="directory for results.json and the PNGs"
    )
    run_parser.add_argument(
        "--report", default="docs/benchmarks.md", help="the Markdown report to write"
    )
    run_parser.add_argument(
        "--merge",
        action="store_true",
        help="keep the other sections of an existing results.json in --out (each "
        "section records the command, mode and machine load of its own run)",
    )
    report_parser = sub.add_parser(
        "report", help="write the Markdown report again from an existing results.json"
    )
    report_parser.add_argument("--out", default="docs/benchmarks")
    report_parser.add_argument("--report", default="docs/benchmarks.md")
    args = parser.parse_args()
    if args.command == "report":
        out, report_path = _path(args.out), _path(args.report)
        results = json.loads((out / "results.json").read_text())
        report_path.write_text(report.render(results, out, report_path))
        log(f"wrote {report_path}")
        return
    only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(only) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds must be at least 1")
    missing = missing_tools(only)
    if missing:
        parser.error(
            "missing for these sections: " + "; ".join(missing) + " (./dev bench installs them)"
        )
    quick = args.quick
    rounds = args.rounds or (3 if quick else 5)
    budget = 0.3 if quick else 1.0
    out = _path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report_path = _path(args.report)

    started = time.monotonic()
    log("preparing the benchmark databases")
    prepare()
    command = "python -m benchmarks " + " ".join(sys.argv[1:])
    results: dict = {
        "command": command,
        "quick": quick,
        "rounds": rounds,
        "budget_s": budget,
        "machine": machine(),
        "sections": {},
    }
    previous = out / "results.json"
    if args.merge and previous.exists():
        old = json.loads(previous.read_text())
        old_run = {
            "command": old["command"],
            "quick": old["quick"],
            "rounds": old["rounds"],
            "budget_s": old["budget_s"],
            "load_at_start": old["machine"]["load_at_start"],
            "load_at_end": old["machine"].get("load_at_end", old["machine"]["load_at_start"]),
        }
        for name, entry in old.get("sections", {}).items():
            if name not in only:
                entry.setdefault("run", old_run)
                results["sections"][name] = entry
    sections = results["sections"]
    run_info = {
        "command": command,
        "quick": quick,
        "rounds": rounds,
        "budget_s": budget,
        "load_at_start": results["machine"]["load_at_start"],
    }

    if "micro" in only:
        log("micro: bare pools and the physical floor")
        configs = {
            f"bare, uncontended | {impl}": spec("bare", impl=impl, budget=budget) for impl in BARE
        }
        configs.update(
            {
                f"bare, 8 threads on 4 | {impl}": spec("bare", impl=impl, threads=8, budget=budget)
                for impl in BARE
            }
        )
        configs.update(
            {
                f"floor | {vendor}": spec("floor", vendor=vendor, budget=budget)
                for vendor in ("postgresql", "mysql")
            }
        )
        runs = interleaved(configs, rounds, 120, "micro")
        sections["micro"] = {"runs": runs, "medians": {k: medians(v) for k, v in runs.items()}}

    if "cycle" in only:
        log("cycle: Django's request cycle and round trips, per configuration")
        configs = {}
        for vendor in ("postgresql", "mysql"):
            for config in DJANGO_CONFIGS:
                if vendor == "mysql" and config == "Django's pool":
                    continue  # PostgreSQL only
                configs[f"{vendor} | {config}"] = spec(
                    "django_cycle", vendor=vendor, config=config, budget=budget
                )
        runs = interleaved(configs, rounds, 180, "cycle")
        sections["cycle"] = {"runs": runs, "medians": {k: medians(v) for k, v in runs.items()}}

    if "scaling" in only:
        log("scaling: threads on a pool of 4")
        threads = (1, 4, 16, 64) if quick else (1, 2, 4, 8, 16, 32, 64)
        configs = {
            f"{impl} | {n}": spec("bare", impl=impl, threads=n, budget=budget, threaded=True)
            for n in threads
            for impl in BARE
        }
        scale_rounds = 2 if quick else 3
        runs = interleaved(configs, scale_rounds, 120, "scaling")
        summary: dict[str, dict[int, dict]] = {}
        for name, values in runs.items():
            impl, n = name.split(" | ")
            summary.setdefault(impl, {})[int(n)] = medians(values)
        png = plots.scaling(summary, out)
        sections["scaling"] = {
            "runs": runs,
            "summary": summary,
            "rounds": scale_rounds,
            "plot": os.path.relpath(png, ROOT),
        }

    if "memory" in only:
        log("memory: 1,000,000 checkouts of the bare pool")
        runs = interleaved({"ours": spec("memory", checkouts=1_000_000)}, 1, 600, "memory")
        value = runs["ours"][0]
        entry: dict = {"result": value}
        if "samples" in value:
            entry["plot"] = os.path.relpath(plots.memory(value["samples"], out), ROOT)
        sections["memory"] = entry

    if "http" in only:
        from . import http

        log("http: Gunicorn + wrk")
        http_rounds = 2 if quick else 3
        raw = http.run(quick, http_rounds)
        summary = {}
        for key, runs in raw.items():
            if isinstance(runs, dict):
                summary[key] = {config: medians(values) for config, values in runs.items()}
        sections["http"] = {
            "runs": raw,
            "medians": summary,
            "rounds": http_rounds,
            "workers": http.WORKERS,
            "pool_size": 4,
        }

    results["machine"]["load_at_end"] = os.getloadavg()
    for name in only:
        if name in sections:
            sections[name]["run"] = {**run_info, "load_at_end": os.getloadavg()}
    results["seconds"] = round(time.monotonic() - started, 1)
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    report_path.write_text(report.render(results, out, report_path))
    log(f"done in {results['seconds']} s: {out / 'results.json'}, {report_path}")


def _path(value: str) -> Path:
    return Path(value) if os.path.isabs(value) else ROOT / value
