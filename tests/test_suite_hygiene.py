"""The suite's own rules, checked: a missing tool fails under CI instead of hiding
lost coverage, the programs the tests start get the default meaning of signals
whatever their caller ignored, and no test reads a server-wide counter."""

from __future__ import annotations

import ast
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import ROOT, require_file, require_module, require_tool


@pytest.fixture
def off_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("DPB_EXPECTED_SKIPS", raising=False)


@pytest.fixture
def on_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    monkeypatch.delenv("DPB_EXPECTED_SKIPS", raising=False)


def test_a_present_tool_neither_skips_nor_fails(on_ci: None) -> None:
    require_tool("pgbouncer", True, "Debian package pgbouncer")
    require_file(sys.executable, "python", "the interpreter running this")
    assert require_module("json", "json", "the standard library").dumps(1) == "1"


def test_a_missing_tool_skips_outside_ci(off_ci: None) -> None:
    with pytest.raises(pytest.skip.Exception, match="chromium is missing: Debian package"):
        require_tool("chromium", False, "Debian package chromium")


def test_a_missing_tool_fails_under_ci(on_ci: None) -> None:
    with pytest.raises(pytest.fail.Exception, match="CI=true") as caught:
        require_file("/nonexistent/dpb-tool", "pgbouncer", "Debian package pgbouncer")
    assert "pgbouncer is missing: /nonexistent/dpb-tool does not exist" in str(caught.value)
    assert "DPB_EXPECTED_SKIPS" in str(caught.value)
    with pytest.raises(pytest.fail.Exception, match="dpb-no-such-distribution is missing"):
        require_module("dpb_no_such_module", "dpb-no-such-distribution", "pip install it")


def test_an_expected_skip_is_a_skip_even_under_ci(
    on_ci: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DPB_EXPECTED_SKIPS", "gdal, django-prometheus")
    with pytest.raises(pytest.skip.Exception, match="django-prometheus is missing"):
        require_module("dpb_no_such_module", "django-prometheus", "no release for this Django")
    # Only the tools named: another one still fails.
    with pytest.raises(pytest.fail.Exception):
        require_tool("chromium", False, "Debian package chromium")


_DISPOSITIONS = (
    "import signal; print(*[signal.getsignal(s) == signal.SIG_DFL "
    "for s in (signal.SIGHUP, signal.SIGQUIT, signal.SIGTERM)], "
    "signal.getsignal(signal.SIGINT) is signal.default_int_handler)"
)


def test_a_started_program_gets_the_default_signals() -> None:
    # What a test's server or command sees: Python's own SIGINT handler (which it
    # installs only where SIGINT is not ignored) and default dispositions.
    out = subprocess.run(
        [sys.executable, "-c", _DISPOSITIONS], capture_output=True, text=True, timeout=60
    )
    assert out.stdout.split() == ["True"] * 4, out.stdout + out.stderr


def test_the_suite_does_not_depend_on_signals_its_caller_ignored() -> None:
    """A run started by nohup, or in the background by a script, begins with SIGHUP,
    SIGINT or SIGQUIT ignored, and an ignored signal stays ignored across exec():
    the test above, run in such a run, still sees the defaults."""
    ignored = (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGTERM)
    launcher = (
        "import os, signal, sys\n"
        f"for s in {[int(s) for s in ignored]}: signal.signal(s, signal.SIG_IGN)\n"
        "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])\n"
    )
    node = f"{Path(__file__).relative_to(ROOT)}::test_a_started_program_gets_the_default_signals"
    out = subprocess.run(
        [sys.executable, "-c", launcher, "-m", "pytest", "-q", "-p", "no:cacheprovider", node],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "1 passed" in out.stdout


#: Counters of the whole server, which every other client of it moves too: MariaDB's
#: global status variables and PostgreSQL's cluster-wide statistics views.
_SERVER_WIDE = re.compile(
    r"Aborted_(clients|connects)|Threads_(connected|running|created|cached)"
    r"|Max_used_connections|Connection_errors_|numbackends"
    r"|SHOW\s+GLOBAL\s+STATUS|global_status|pg_stat_bgwriter|pg_stat_checkpointer"
    r"|pg_stat_wal\b|SHOW\s+(FULL\s+)?PROCESSLIST",
    re.IGNORECASE,
)

#: Views of every session or database on the server: a query of one may only count
#: what it filters to its own (a database, a user, an application_name, an id).
_NEEDS_A_FILTER = {
    "pg_stat_database": re.compile(r"\bdatname\s*(=|IN\b|=\s*ANY)", re.IGNORECASE),
    "pg_stat_activity": re.compile(r"\bWHERE\b", re.IGNORECASE),
    "processlist": re.compile(r"\bWHERE\b", re.IGNORECASE),
}

#: What the checker looks at: the suite and the programs it runs (the testproject,
#: the benchmarks' children). compat/ reads server-wide figures on purpose, of the
#: private servers it starts for itself.
_SCANNED = ("tests", "testproject", "benchmarks")


def _strings(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """Each string literal of a module (f-strings with their fixed parts only), with
    its line: adjacent literals are one string, as Python joins them."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.lineno, node.value
        elif isinstance(node, ast.JoinedStr):
            parts = [v.value for v in node.values if isinstance(v, ast.Constant)]
            yield node.lineno, "{}".join(str(part) for part in parts)


def server_wide_reads(source: str, name: str) -> list[str]:
    """Where *source* (Python) reads a server-wide counter or an unfiltered view
    of every session: "name:line: what" for each."""
    found = []
    # Lines, for SQL put together at run time; string literals, for one split
    # over lines.
    pieces = [*enumerate(source.splitlines(), 1), *_strings(ast.parse(source, name))]
    for number, text in pieces:
        match = _SERVER_WIDE.search(text)
        what = f"{name}:{number}: {match.group(0) if match else ''} (a counter of the whole server)"
        if match and what not in found:
            found.append(what)
    for number, text in _strings(ast.parse(source, name)):
        for view, own_filter in _NEEDS_A_FILTER.items():
            if re.search(rf"\bFROM\s+(\w+\.)?{view}\b", text, re.IGNORECASE) and not (
                own_filter.search(text)
            ):
                found.append(f"{name}:{number}: {view} without a filter to the test's own")
    return found


@pytest.mark.parametrize(
    ("sql", "what"),
    [
        ("SHOW GLOBAL STATUS LIKE 'Aborted_clients'", "Aborted_clients"),
        ("SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS", "GLOBAL_STATUS"),
        ("SELECT sum(numbackends) FROM pg_stat_database", "numbackends"),
        ("SELECT sessions_abandoned FROM pg_stat_database", "pg_stat_database without"),
        ("SELECT count(*) FROM pg_stat_activity", "pg_stat_activity without"),
        ("SELECT count(*) FROM information_schema.processlist", "processlist without"),
        ("SHOW PROCESSLIST", "PROCESSLIST"),
    ],
)
def test_the_checker_finds_a_server_wide_read(sql: str, what: str) -> None:
    source = f"def count(cursor):\n    cursor.execute(\n        {sql[:12]!r}\n        {sql[12:]!r}\n    )\n"
    found = server_wide_reads(source, "t.py")
    assert found and what in found[0] and found[0].startswith("t.py:"), found


def test_the_checker_lets_a_read_of_the_tests_own_sessions_pass() -> None:
    source = (
        "a = 'SELECT sessions_abandoned FROM pg_stat_database WHERE datname = %s'\n"
        "b = 'SELECT pid FROM pg_stat_activity WHERE application_name = %s'\n"
        "c = f'SELECT id FROM information_schema.processlist WHERE db = {name!r}'\n"
        "d = \"SHOW SESSION STATUS LIKE 'Questions'\"\n"
    )
    assert server_wide_reads(source, "t.py") == []


def test_no_test_reads_a_server_wide_counter() -> None:
    offenders = []
    checked = 0
    for top in _SCANNED:
        for path in sorted((ROOT / top).rglob("*.py")):
            if path == Path(__file__) or ".venv" in path.parts:
                continue
            checked += 1
            name = str(path.relative_to(ROOT))
            offenders += server_wide_reads(path.read_text(), name)
    assert checked > 40  # the scan did find the suite
    assert offenders == []


#: Ways to skip for a missing tool that CI=true cannot turn into a failure, and
#: ways to hide the "is multi-threaded, use of fork()" warning instead of forking
#: from one thread (conftest's fork_from_one_thread) or asserting it.
_BYPASSES = re.compile(
    r"pytest\.importorskip\(|pytest\.skip\([^)]*(missing|install)"
    r"|ignore:This process .{0,10}is multi-threaded",
    re.IGNORECASE,
)

#: Files another change still has to bring in line, each with what it still does;
#: once a file is clean the test below says to drop it from here, so the list only
#: shrinks.
_BYPASSES_PENDING: dict[str, str] = {}


def test_tool_skips_and_fork_warnings_go_through_the_conftest_helpers() -> None:
    found: dict[str, list[str]] = {}
    for path in sorted((ROOT / "tests").rglob("*.py")):
        if path in (Path(__file__), ROOT / "tests" / "conftest.py"):
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if _BYPASSES.search(line):
                found.setdefault(path.name, []).append(f"{number}: {line.strip()}")
    unexpected = {name: lines for name, lines in found.items() if name not in _BYPASSES_PENDING}
    assert unexpected == {}, "use require_tool()/require_module() or fork_from_one_thread()"
    fixed = sorted(set(_BYPASSES_PENDING) - set(found))
    assert fixed == [], f"clean now: remove {fixed} from _BYPASSES_PENDING"
