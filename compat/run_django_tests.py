#!/usr/bin/env python
"""Run Django's own test suite on the stock and the pooled engines and compare.

    .venv/bin/python compat/run_django_tests.py                  # both vendors, all modules
    .venv/bin/python compat/run_django_tests.py --vendor postgresql --modules basic backends
    .venv/bin/python compat/run_django_tests.py --report-only   # RESULTS.md from cached runs
    ./dev compat                                                # both Django lines, as CI

The runs go to private PostgreSQL and MariaDB instances that the script starts on free
ports and removes at the end (``private_servers.py``): Django's ``schema`` tests once
crashed the machine's shared MariaDB. ``--no-private-servers`` uses the servers on
127.0.0.1 instead (``DPB_COMPAT_PG_PORT`` / ``DPB_COMPAT_MYSQL_PORT`` move them).

The Django under test is the one installed in the running interpreter; its sdist (which
carries ``tests/``) is fetched once into ``compat/.cache``. Each configuration (see
``settings_compat.CONFIGS``) runs ``tests/runtests.py --parallel N`` on all modules at
once; every test's outcome is recorded (``compat_runner.py``). A pooled run fails the
comparison when a test fails or errors there but not on the stock engine of the same
vendor, unless ``expected_differences.txt`` lists it with a reason. Exit status 1 then.

The pooled variants run first, on every module. The stock engine then runs only the
tests that failed or errored on one of them (``--stock failures``, the default): the
comparison only ever asks for the stock outcome of such a test, so the verdict is the
same as with a full stock run, at a fraction of its time. ``--stock full`` runs the
stock engine on every module as well (the per-module table then has a full stock
column). The two vendors run at the same time, each on its own private server
(``--vendors-at-once``, the default): most of a run's time is spent waiting for the
server or for a pool timeout, not on the CPU.
The interpreter needs tblib (Django's parallel runner sends tracebacks with it);
``./dev compat`` installs it.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import fnmatch
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tarfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import private_servers

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CACHE = HERE / ".cache"

COMMON_MODULES = [
    "backends",
    "transactions",
    "transaction_hooks",
    "basic",
    "queries",
    "select_for_update",
    "migrations",
    "schema",
    "test_utils",
    "db_functions",
    "model_fields",
    "expressions",
    "aggregation",
    "custom_lookups",
    "get_or_create",
    "delete",
    "update",
    "bulk_create",
    "fixtures",
    "serializers",
    "timezones",
    "inspectdb",
    "introspection",
    "dbshell",
]
VENDOR_MODULES = {"postgresql": ["postgres_tests"], "mysql": []}
VARIANTS = ["stock", "pooled", "pooled-max1"]
BAD = {"failure", "error", "unexpected_success"}
# A failure message from another thread must not cut a line of this one's in half.
_PRINT_LOCK = threading.Lock()


# The runtests.py processes under way, one per vendor at most.
_RUNNING: set[subprocess.Popen] = set()


def say(text: str) -> None:
    with _PRINT_LOCK:
        print(text, flush=True)


def stop_runs() -> None:
    """End every runtests.py still running, with its workers. The runs happen in
    threads, and an interrupt (Ctrl-C, a CI timeout's SIGTERM) only reaches the main
    thread: without this, leaving would wait for each run to finish."""
    with _PRINT_LOCK:
        running = list(_RUNNING)
    for proc in running:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def django_version() -> str:
    import django

    return django.__version__


def require_tblib() -> None:
    """With --parallel, a worker sends each failure's traceback to the parent by pickle;
    without tblib the first failing test aborts the whole run (Django's tests/requirements
    list it, our dev extra doesn't)."""
    try:
        import tblib  # noqa: F401
    except ImportError:
        sys.exit(
            f"tblib is not installed in {sys.prefix}: Django's parallel test runner needs it "
            f"to report failures. Install it with: {sys.executable} -m pip install tblib"
        )


def fetch_sdist(version: str) -> Path:
    """The unpacked sdist of exactly the installed Django (its tests match its code)."""
    root = CACHE / f"django-{version}"
    if (root / "tests" / "runtests.py").exists():
        return root
    CACHE.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-binary",
            ":all:",
            "--no-deps",
            f"django=={version}",
            "-d",
            str(CACHE),
        ],
        check=True,
    )
    archives = [p for p in CACHE.glob("*.tar.gz") if p.name.lower() == f"django-{version}.tar.gz"]
    if not archives:
        sys.exit(f"pip download produced no sdist for django=={version} in {CACHE}")
    with tarfile.open(archives[0]) as tar:
        tar.extractall(CACHE, filter="data") if hasattr(tarfile, "data_filter") else tar.extractall(
            CACHE
        )
    if not (root / "tests" / "runtests.py").exists():
        sys.exit(f"{archives[0]} has no tests/runtests.py")
    return root


def results_dir(version: str) -> Path:
    path = CACHE / "results" / version
    path.mkdir(parents=True, exist_ok=True)
    return path


def run_config(
    config: str,
    modules: list[str],
    version: str,
    sdist: Path,
    parallel: int,
    server: dict,
    labels: list[str] | None = None,
) -> dict:
    """One configuration; *server* is the vendor's server (its ``port``, ``private``, and
    for a private one what ``private_servers.describe`` says). *labels*, when given, are
    the test labels to run instead of the whole *modules* (a stock reference run on the
    tests that failed on a pooled variant); the result still names *modules*, the set it
    is the reference for."""
    out = results_dir(version)
    result_file = out / f"{config}.json"
    log_file = out / f"{config}.log"
    result_file.unlink(missing_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in [str(HERE), str(REPO), env.get("PYTHONPATH", "")] if p
    )
    env["DPB_COMPAT_CONFIG"] = config
    env["DPB_COMPAT_TAG"] = "_" + version.split(".")[0] + env.get("DPB_TEST_DB_SUFFIX", "")
    env["DPB_COMPAT_RESULT"] = str(result_file)
    cmd = [
        sys.executable,
        "-u",
        "runtests.py",
        "--settings=settings_compat",
        f"--parallel={parallel}",
        "--noinput",
        *(modules if labels is None else labels),
    ]
    shown = " ".join(cmd) if labels is None else " ".join(cmd[: -len(labels)])
    if labels is not None:
        shown += f" <the {len(labels)} test(s) that failed on a pooled variant>"
    say(f"== {config}: {shown}  (log: {log_file.relative_to(REPO)})")
    started = time.monotonic()
    vendor = config.split("-")[0]
    peak = (
        private_servers.SessionPeak(vendor, server["port"])
        if server["private"]
        else contextlib.nullcontext()
    )
    with open(log_file, "w") as log, peak:
        # Its own process group, so that stop_runs() can end runtests.py together with
        # its --parallel workers when this script is interrupted.
        proc = subprocess.Popen(
            cmd,
            cwd=sdist / "tests",
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        with _PRINT_LOCK:
            _RUNNING.add(proc)
        try:
            proc.wait()
        finally:
            with _PRINT_LOCK:
                _RUNNING.discard(proc)
    wall = time.monotonic() - started
    if not result_file.exists():
        tail = log_file.read_text(errors="replace")[-3000:]
        sys.exit(
            f"{config}: runtests.py exited {proc.returncode} without results; end of log:\n{tail}"
        )
    data = json.loads(result_file.read_text())
    data.update(
        config=config,
        modules=modules,
        wall_s=round(wall, 1),
        exit=proc.returncode,
        parallel=parallel,
        django=version,
        python=platform.python_version(),
        date=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        server=server.get("server", f"shared, port {server['port']}"),
        max_connections=server.get("max_connections"),
        peak_sessions=getattr(peak, "peak", None),
        scope="all" if labels is None else "failures",
        labels=labels,
    )
    result_file.write_text(json.dumps(data, indent=0, sort_keys=True))
    sessions = f", peak {peak.peak} sessions" if server["private"] else ""
    say(
        f"   {config}: {len(data['outcomes'])} tests, exit {proc.returncode}, {wall:.0f} s"
        f"{sessions}"
    )
    return data


def label_of(test_id: str) -> str:
    """The runtests.py label that runs *test_id* again: a test method's id is its dotted
    path; a class-level error (``setUpClass (module.Class)``) reruns the class."""
    m = re.search(r"\(([^)]+)\)", test_id)
    return m.group(1) if m else test_id


def run_vendor(
    vendor: str,
    variants: list[str],
    modules: list[str],
    version: str,
    sdist: Path,
    parallel: int,
    server: dict,
    stock_scope: str,
) -> None:
    """Every chosen variant of one vendor, pooled ones first. With *stock_scope*
    ``failures`` the stock engine then runs only the tests that failed or errored on a
    pooled variant: a difference is "bad on pooled, not bad on stock", so the stock
    outcome of any other test never enters the verdict."""
    bad: set[str] = set()
    for variant in (v for v in variants if v != "stock"):
        data = run_config(f"{vendor}-{variant}", modules, version, sdist, parallel, server)
        bad |= {t for t, (outcome, _) in data["outcomes"].items() if outcome in BAD}
    if "stock" not in variants:
        return
    if stock_scope == "full" or len(variants) == 1:
        run_config(f"{vendor}-stock", modules, version, sdist, parallel, server)
        return
    labels = sorted({label_of(t) for t in bad})
    if labels:
        run_config(f"{vendor}-stock", modules, version, sdist, parallel, server, labels)
        return
    # Nothing failed on a pooled variant: there is nothing to compare, and an empty
    # reference run records that without starting runtests.py (which would run
    # every module when given no label).
    result_file = results_dir(version) / f"{vendor}-stock.json"
    result_file.write_text(
        json.dumps(
            {
                "testsRun": 0,
                "outcomes": {},
                "engines": {},
                "config": f"{vendor}-stock",
                "modules": modules,
                "wall_s": 0.0,
                "exit": 0,
                "parallel": parallel,
                "django": version,
                "python": platform.python_version(),
                "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
                "server": server.get("server", f"shared, port {server['port']}"),
                "max_connections": server.get("max_connections"),
                "peak_sessions": None,
                "scope": "failures",
                "labels": [],
            },
            indent=0,
            sort_keys=True,
        )
    )
    say(f"   {vendor}-stock: not run, no test failed on a pooled variant")


def module_of(test_id: str) -> str:
    m = re.search(r"\(([^)]+)\)", test_id)  # setUpClass (module.Class)
    return (m.group(1) if m else test_id).split(".")[0]


def load_expected(path: Path) -> list[tuple[str, str, str]]:
    """``<config glob> <test id glob>  # reason``; a reason is mandatory."""
    entries = []
    for n, line in enumerate(path.read_text().splitlines(), 1) if path.exists() else ():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        spec, _, reason = line.partition("#")
        parts = spec.split()
        if len(parts) != 2 or not reason.strip():
            sys.exit(f"{path}:{n}: expected '<config glob> <test id glob>  # reason', got {line!r}")
        entries.append((parts[0], parts[1], reason.strip()))
    return entries


def compare(stock: dict, ours: dict, expected: list, used: set) -> tuple[list, list]:
    """(unexplained, explained) differences: bad on ours, not bad on stock. The
    entries of *expected* that explain one are added to *used*."""
    unexplained, explained = [], []
    for test_id, (outcome, detail) in sorted(ours["outcomes"].items()):
        if outcome not in BAD:
            continue
        base = stock["outcomes"].get(test_id, ("absent", ""))[0]
        if base in BAD:
            continue
        entry = next(
            (
                e
                for e in expected
                if fnmatch.fnmatchcase(ours["config"], e[0]) and fnmatch.fnmatchcase(test_id, e[1])
            ),
            None,
        )
        reason = entry[2] if entry else None
        if entry:
            used.add(entry)
        row = (test_id, base, outcome, reason or detail.strip().splitlines()[-1:] or [""])
        (explained if reason else unexplained).append(row)
    return unexplained, explained


def counts(data: dict, module: str) -> tuple[int, int, int, int]:
    run = fail = err = skip = 0
    for test_id, (outcome, _) in data["outcomes"].items():
        if module_of(test_id) != module:
            continue
        run += 1
        fail += outcome in ("failure", "unexpected_success")
        err += outcome == "error"
        skip += outcome == "skipped"
    return run, fail, err, skip


def report(current: str, expected: list) -> tuple[str, int]:
    """The report covers every Django version with cached runs; the count of
    unexplained differences (the exit status) only the one under test."""
    lines = [
        "# Django's own test suite: stock engines vs django-poolbackend",
        "",
        "Generated by `compat/run_django_tests.py` (do not edit by hand).",
        "Each cell: run / failed / errors / skipped. A difference is a test that fails or errors",
        "on a pooled engine but not on the stock engine of the same vendor; listed ones are",
        "explained in `compat/expected_differences.txt`.",
        "",
        "Reproduce: `<venv>/bin/python compat/run_django_tests.py [--vendor postgresql|mysql]",
        "[--variants stock pooled pooled-max1] [--stock failures|full] [--modules ...]`, or",
        "`./dev compat` for both Django lines as CI runs them (`.ci/run`: every variant, both",
        "vendors, both lines; the job fails on any unexplained difference). The pooled",
        "variants run on every module; the stock engine, by default, only on the tests that",
        "failed or errored on a pooled variant (`--stock failures`), which is all the",
        "comparison reads from it. The runs use private PostgreSQL and",
        "MariaDB instances that the script starts, with max_connections="
        f"{private_servers.MAX_CONNECTIONS};",
        "the `sessions` column is the most client sessions the server had at once during the",
        "run (sampled every 0.1 s on PostgreSQL).",
        "`pooled` sets no `POOL` key at all (only ENGINE changes); `pooled-max1` sets",
        '`POOL = {"max_size": 1}`. Wall times depend on the machine\'s load.',
        "",
    ]
    found = {p.name for p in (CACHE / "results").iterdir() if any(p.glob("*.json"))}
    unexplained_current = 0
    used: set = set()
    for version in sorted(
        found | {current}, key=lambda v: [int(x) if x.isdigit() else x for x in v.split(".")]
    ):
        section, unexplained = _report_version(version, expected, used)
        lines += section
        if version == current:
            unexplained_current = unexplained
    unused = [e for e in expected if e not in used]
    if unused:
        lines += [
            "# Entries of expected_differences.txt that explain nothing above",
            "",
            "Candidates for removal, unless they cover a test that fails only sometimes (a",
            "timing assertion) or a variant or Django line not run here:",
            "",
            *(f"- `{config} {test}`" for config, test, _ in unused),
            "",
        ]
    return "\n".join(lines) + "\n", unexplained_current


def _report_version(version: str, expected: list, used: set) -> tuple[list, int]:
    out = results_dir(version)
    runs = {p.stem: json.loads(p.read_text()) for p in sorted(out.glob("*.json"))}
    # A run still in progress has written its outcomes but not yet its metadata.
    runs = {name: data for name, data in runs.items() if "date" in data}
    lines = [f"# Django {version}", ""]
    unexplained_total = 0
    for vendor in ("postgresql", "mysql"):
        configs = [f"{vendor}-{v}" for v in VARIANTS if f"{vendor}-{v}" in runs]
        if not configs:
            continue
        title = "PostgreSQL" if vendor == "postgresql" else "MariaDB (mysqlclient)"
        lines += [f"## {title} (Django {version})", ""]
        lines += [
            "| configuration | engine | date | Python | server | sessions | --parallel "
            "| wall time | tests | exit |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for c in configs:
            d = runs[c]
            engine = d.get("engines", {}).get("default", "(not run)").rsplit(".", 1)[0]
            peak = d.get("peak_sessions")
            sessions = "–" if peak is None else f"{peak} of {d.get('max_connections')}"
            lines.append(
                f"| {c} | `{engine}` | {d['date']} | {d['python']} | {d.get('server', '?')} "
                f"| {sessions} | {d['parallel']} | {d['wall_s']:.0f} s | {len(d['outcomes'])} "
                f"| {d['exit']} |"
            )
        lines.append("")
        stock = runs.get(f"{vendor}-stock")
        partial = stock is not None and stock.get("scope") == "failures"
        if partial:
            lines += [
                f"`{vendor}-stock` ran only the {len(stock['labels'])} test label(s) that "
                "failed or errored on a pooled variant (`--stock failures`): the comparison "
                "reads the stock outcome of those tests and of no other, so its column below "
                "counts just them.",
                "",
            ]
        modules = sorted({m for c in configs for m in runs[c]["modules"]})
        headers = [
            f"{c} (failures only)" if partial and c == f"{vendor}-stock" else c for c in configs
        ]
        lines += ["| module | " + " | ".join(headers) + " |", "| --- |" + " --- |" * len(configs)]
        for m in modules:
            cells = []
            for c in configs:
                cells.append(
                    "/".join(map(str, counts(runs[c], m))) if m in runs[c]["modules"] else "–"
                )
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        lines.append("")
        pooled = [c for c in configs if c != f"{vendor}-stock"]
        if stock is None and pooled:
            lines += [f"**{', '.join(pooled)}**: no {vendor}-stock run to compare with.", ""]
            unexplained_total += 1
            pooled = []
        for c in pooled:
            if set(runs[c]["modules"]) != set(stock["modules"]):
                lines += [f"**{c}**: ran other modules than {vendor}-stock; not compared.", ""]
                unexplained_total += 1
                continue
            unexplained, explained = compare(stock, runs[c], expected, used)
            unexplained_total += len(unexplained)
            lines.append(
                f"**{c} vs {vendor}-stock**: {len(unexplained)} unexplained, "
                f"{len(explained)} expected difference(s)."
            )
            lines.append("")
            for test_id, base, outcome, why in unexplained + explained:
                why = why if isinstance(why, str) else (why[0][:160] if why else "")
                lines.append(
                    f"- `{test_id}`: stock {base}, pooled {outcome} — {why.replace('|', '/')}"
                )
            if unexplained or explained:
                lines.append("")
            missing = set(stock["outcomes"]) - set(runs[c]["outcomes"])
            if missing and not partial:
                lines += [
                    f"- {len(missing)} test(s) ran on stock but not here, "
                    f"e.g. `{sorted(missing)[0]}`",
                    "",
                ]
    return lines, unexplained_total


def _server(vendor: str, private_ports: dict[str, int]) -> dict:
    """Where *vendor*'s runs go; settings_compat reads the port from the environment."""
    variable = {"postgresql": "DPB_COMPAT_PG_PORT", "mysql": "DPB_COMPAT_MYSQL_PORT"}[vendor]
    if vendor not in private_ports:
        default = {"postgresql": "5432", "mysql": "3306"}[vendor]
        return {"port": int(os.environ.get(variable, default)), "private": False}
    port = private_ports[vendor]
    os.environ[variable] = str(port)
    info = private_servers.describe(vendor, port)
    info["server"] += " (private)"
    return {"port": port, "private": True, **info}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vendor", choices=["postgresql", "mysql", "all"], default="all")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=VARIANTS)
    parser.add_argument("--modules", nargs="+", help="default: the issue's list")
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument(
        "--stock",
        choices=["failures", "full"],
        default="failures",
        help="run the stock engine only on the tests that failed or errored on a pooled "
        "variant (default; the verdict reads nothing else from it), or on every module",
    )
    parser.add_argument(
        "--vendors-at-once",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the PostgreSQL and the MariaDB configurations at the same time, each "
        "vendor on its own server (default); --no-vendors-at-once runs them one after "
        "the other",
    )
    parser.add_argument(
        "--report-only", action="store_true", help="only rebuild the report from cached runs"
    )
    parser.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    parser.add_argument(
        "--private-servers",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="start private PostgreSQL/MariaDB instances for the runs and remove them at the "
        "end (default); --no-private-servers uses the servers on 127.0.0.1 "
        "(DPB_COMPAT_PG_PORT / DPB_COMPAT_MYSQL_PORT)",
    )
    args = parser.parse_args()
    # A CI timeout or Ctrl-C: leave through the finally blocks that stop the servers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    version = django_version()
    expected = load_expected(HERE / "expected_differences.txt")
    if not args.report_only:
        require_tblib()
        sdist = fetch_sdist(version)
        vendors = ["postgresql", "mysql"] if args.vendor == "all" else [args.vendor]
        with (
            private_servers.private_servers(vendors, REPO)
            if args.private_servers
            else contextlib.nullcontext({})
        ) as ports:
            jobs = [
                (
                    vendor,
                    args.variants,
                    args.modules or COMMON_MODULES + VENDOR_MODULES[vendor],
                    version,
                    sdist,
                    args.parallel,
                    _server(vendor, ports),
                    args.stock,
                )
                for vendor in vendors
            ]
            workers = len(jobs) if args.vendors_at_once else 1
            with ThreadPoolExecutor(max_workers=workers) as pool:
                try:
                    # result() re-raises a vendor's failure (e.g. runtests.py without
                    # results) here; the other vendor's runs then finish first.
                    for future in [pool.submit(run_vendor, *job) for job in jobs]:
                        future.result()
                except BaseException:
                    # Interrupted (KeyboardInterrupt, SIGTERM's SystemExit): queued
                    # runs are dropped and running ones ended, so the private servers
                    # are removed at once.
                    pool.shutdown(wait=False, cancel_futures=True)
                    stop_runs()
                    raise
    text, unexplained = report(version, expected)
    args.results.write_text(text)
    print(text)
    print(f"{unexplained} unexplained difference(s); report: {args.results}")
    return 1 if unexplained else 0


if __name__ == "__main__":
    sys.exit(main())
