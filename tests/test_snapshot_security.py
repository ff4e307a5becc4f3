"""The statistics directory against another local user, and its readers against
crafted files.

The attacks are real: the test creates a second local account, runs the attacker's
steps as that account (``subprocess`` with ``user=``/``group=``, through the
system's Python, which any user can run), and then runs the victim's steps as
this user (root here): a process with a pool, ``manage.py poolstats`` and
``manage.py pooldrain``, each in a process of its own with the environment of a
real deployment. Everything happens under a base directory of the test's own
(``TMPDIR``), made like ``/tmp`` (root's, ``1777``), so nothing else on the
machine is touched; the account is removed afterwards.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.test import override_settings

from django_poolbackend import publish, snapshots

from .conftest import ROOT, server_env

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "mysql"])

needs_root = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0,
    reason="creating a second local account needs root",
)
#: The attacker's interpreter: the suite's own lives under /root, which the
#: attacker can't enter.
SYSTEM_PYTHON = shutil.which("python3", path="/usr/bin:/bin") or "/usr/bin/python3"


def account_tool(*args: str) -> subprocess.CompletedProcess:
    """Run useradd/userdel/groupdel, again while another run holds the lock on
    /etc/passwd (other suites create accounts at the same time), up to a deadline."""
    deadline = time.monotonic() + 60
    while True:
        result = subprocess.run(args, capture_output=True, text=True, timeout=60)
        if result.returncode == 0 or "lock" not in result.stderr or time.monotonic() > deadline:
            return result
        time.sleep(0.2)


@pytest.fixture(scope="module")
def attacker() -> Iterator[pwd.struct_passwd]:
    """A second local account, made for these tests and removed after them (its
    group too), whatever the tests did."""
    name = f"dpb_atk{os.getpid() % 1_000_000}"
    made = account_tool(
        "useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name
    )
    assert made.returncode == 0, made.stderr
    try:
        yield pwd.getpwnam(name)
    finally:
        removed = account_tool("userdel", name)
        if removed.returncode == 0:
            try:
                grp.getgrnam(name)
            except KeyError:
                pass
            else:
                account_tool("groupdel", name)
        assert removed.returncode == 0, removed.stderr


def as_attacker(account: pwd.struct_passwd, code: str) -> None:
    """Run *code* (Python) as the attacker's account."""
    result = subprocess.run(
        [SYSTEM_PYTHON, "-c", code],
        user=account.pw_uid,
        group=account.pw_gid,
        extra_groups=[],
        cwd="/",
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


@pytest.fixture
def scene(tmp_path: Path) -> Iterator[dict[str, Path]]:
    """A private base directory like /tmp, a victim directory like /tmp (root's,
    1777, holding a root-only file named like a dead process's snapshot), and a
    precious root-only file elsewhere."""
    base = Path(tempfile.mkdtemp(prefix="dpb_sec_base_", dir="/tmp"))
    victim = Path(tempfile.mkdtemp(prefix="dpb_sec_victim_", dir="/tmp"))
    secret_dir = Path(tempfile.mkdtemp(prefix="dpb_sec_secret_", dir="/tmp"))
    try:
        os.chmod(base, 0o1777)
        os.chmod(victim, 0o1777)
        root_only = victim / "999999999.json"
        root_only.write_text("root's own file")
        os.chmod(root_only, 0o600)
        precious = secret_dir / "precious"
        precious.write_text("keep me")
        os.chmod(precious, 0o644)
        yield {"base": base, "victim": victim, "precious": precious, "root_only": root_only}
    finally:
        for path in (base, victim, secret_dir):
            shutil.rmtree(path, ignore_errors=True)


def deployment_env(base: Path, **extra: str) -> dict[str, str]:
    """The environment of a service whose statistics go to the default place:
    under TMPDIR, with no XDG_RUNTIME_DIR and no explicit directory."""
    env = server_env(TMPDIR=str(base), **extra)
    for key in ("XDG_RUNTIME_DIR", "DJANGO_POOLBACKEND_STATS_DIR"):
        if key not in extra:
            env.pop(key, None)
    return env


def run(env: dict[str, str], *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


def project_dir(env: dict[str, str]) -> Path:
    out = run(
        env,
        "-c",
        "import django; django.setup(); from django_poolbackend import publish; "
        "print(publish.stats_dir())",
    )
    assert out.returncode == 0, out.stderr
    return Path(out.stdout.strip().splitlines()[-1])


#: A process with a pool: it checks a connection out and back, says "ready", waits
#: for a line (the attacker acts meanwhile), ticks three times (what a return or
#: the maintenance thread does each second), and reports whether its connection
#: survived and what it published.
WORKER = """
import json, sys, time
import django
django.setup()
from django.db import connections
from django_poolbackend import process as pool_process, publish

def backend():
    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        value = cursor.fetchone()[0]
    connections["default"].close()
    return value

before = backend()
pool = pool_process.pools["default"]
print("ready", flush=True)
sys.stdin.readline()
for _ in range(3):
    pool._tick(time.monotonic())
try:
    published, error = publish.publish(force=True), None
except Exception as exc:
    published, error = False, str(exc)
print(json.dumps({
    "before": before,
    "after": backend(),
    "drains": pool.stats()["drains"],
    "published": published,
    "error": error,
}))
"""


def run_worker(env: dict[str, str], between: Any) -> tuple[dict[str, Any], str]:
    """Run WORKER; call *between()* once it is ready."""
    process = subprocess.Popen(
        [sys.executable, "-c", WORKER],
        cwd=ROOT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None and process.stdin is not None
        line = process.stdout.readline()
        assert line.strip() == "ready", (line, process.stderr.read() if process.stderr else "")
        between()
        out, err = process.communicate("go\n", timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1]), err


def listing(directory: Path) -> dict[str, tuple[int, bytes]]:
    out = {}
    for entry in sorted(os.listdir(directory)):
        path = directory / entry
        st = os.lstat(path)
        content = os.readlink(path).encode() if stat.S_ISLNK(st.st_mode) else path.read_bytes()
        out[entry] = (st.st_mode, content)
    return out


@needs_root
def test_a_per_user_directory_planted_by_another_user_is_refused(
    attacker: pwd.struct_passwd, scene: dict[str, Path]
) -> None:
    """The attack of the issue: another user makes ``<tmp>/django_poolbackend-<uid>``
    first (0777), points ``<hash>`` at a directory of root's that is writable like
    /tmp, plants a drain file whose generation rises and a ``.drain.lock`` symlink
    to a root file. Root's worker, poolstats and pooldrain must each refuse,
    naming the directory, and leave every target as it was."""
    base, victim, precious = scene["base"], scene["victim"], scene["precious"]
    env = deployment_env(base)
    project = project_dir(env)
    per_user = project.parent
    assert per_user == base / f"django_poolbackend-{os.getuid()}"
    as_attacker(
        attacker,
        f"""
import json, os
os.mkdir({str(per_user)!r}); os.chmod({str(per_user)!r}, 0o777)
os.symlink({str(victim)!r}, {str(project)!r})
os.symlink({str(precious)!r}, os.path.join({str(victim)!r}, ".drain.lock"))
with open(os.path.join({str(victim)!r}, "drain-default.json"), "w") as f:
    json.dump({{"alias": "default", "generation": 1}}, f)
""",
    )
    before = listing(victim)
    precious_before = (precious.read_bytes(), stat.S_IMODE(precious.stat().st_mode))

    def raise_generation() -> None:
        as_attacker(
            attacker,
            f"""
import json, os, time
path = os.path.join({str(victim)!r}, "drain-default.json")
tmp = path + ".new"
with open(tmp, "w") as f:
    json.dump({{"alias": "default", "generation": 6}}, f)
os.utime(tmp, (time.time() + 5, time.time() + 5))
os.replace(tmp, path)
""",
        )

    result, log = run_worker(env, raise_generation)
    assert result["after"] == result["before"] and result["drains"] == 0, result
    assert result["published"] is False
    assert "Pool statistics are not published" in log
    assert f"The pool statistics directory {per_user} belongs to another user" in log
    assert "Statistics stay off in this process" in log
    # One error for the process, however often it ticked and tried to publish.
    assert log.count("Pool statistics are not published") == 1, log

    stats = run(env, "-m", "django", "poolstats")
    assert stats.returncode != 0
    assert f"{per_user} belongs to another user (uid {attacker.pw_uid}" in stats.stderr
    assert "Nothing was read from it." in stats.stderr and "Traceback" not in stats.stderr

    drain = run(env, "-m", "django", "pooldrain", "--database", "default")
    assert drain.returncode != 0
    assert f"{per_user} belongs to another user" in drain.stderr
    assert "No drain was requested." in drain.stderr

    # Every target as it was: no file written into the victim directory, the
    # root-only "snapshot" not deleted, the precious file not truncated.
    after = listing(victim)
    del before["drain-default.json"], after["drain-default.json"]  # the attacker's own
    assert after == before
    assert scene["root_only"].read_text() == "root's own file"
    assert (precious.read_bytes(), stat.S_IMODE(precious.stat().st_mode)) == precious_before


@needs_root
def test_a_planted_drain_file_in_a_directory_of_another_user_is_never_read(
    attacker: pwd.struct_passwd, scene: dict[str, Path]
) -> None:
    """Another user's real directories (``0777``) in place of the per-user and
    project directories, with a drain file whose generation rises: the worker
    must not drain, and pooldrain must not follow the ``.drain.lock`` symlink."""
    base, precious = scene["base"], scene["precious"]
    env = deployment_env(base)
    project = project_dir(env)
    as_attacker(
        attacker,
        f"""
import json, os
for path in ({str(project.parent)!r}, {str(project)!r}):
    os.mkdir(path); os.chmod(path, 0o777)
os.symlink({str(precious)!r}, os.path.join({str(project)!r}, ".drain.lock"))
with open(os.path.join({str(project)!r}, "drain-default.json"), "w") as f:
    json.dump({{"alias": "default", "generation": 1}}, f)
""",
    )

    def raise_generation() -> None:
        as_attacker(
            attacker,
            f"""
import json, os, time
path = os.path.join({str(project)!r}, "drain-default.json")
with open(path + ".new", "w") as f:
    json.dump({{"alias": "default", "generation": 6}}, f)
os.utime(path + ".new", (time.time() + 5, time.time() + 5))
os.replace(path + ".new", path)
""",
        )

    result, log = run_worker(env, raise_generation)
    assert result["after"] == result["before"] and result["drains"] == 0, result
    assert f"The pool statistics directory {project.parent} belongs to another user" in log
    assert sorted(os.listdir(project)) == [".drain.lock", "drain-default.json"]

    drain = run(env, "-m", "django", "pooldrain", "--database", "default")
    assert drain.returncode != 0 and "belongs to another user" in drain.stderr
    assert precious.read_text() == "keep me"
    assert stat.S_IMODE(precious.stat().st_mode) == 0o644


@needs_root
def test_an_explicit_directory_swapped_for_a_symlink_is_refused(
    attacker: pwd.struct_passwd, scene: dict[str, Path]
) -> None:
    """DJANGO_POOLBACKEND_STATS_DIR in a sticky, world-writable directory, where
    another user put a symlink to root's directory first: refused as a symlink
    (the directory above, like /tmp, is fine), and poolstats deletes nothing."""
    base, victim = scene["base"], scene["victim"]
    configured = base / "stats"
    as_attacker(attacker, f"import os; os.symlink({str(victim)!r}, {str(configured)!r})")
    env = deployment_env(base, DJANGO_POOLBACKEND_STATS_DIR=str(configured))
    before = listing(victim)
    result, log = run_worker(env, lambda: None)
    assert result["published"] is False
    assert f"The pool statistics directory {configured} is a symlink" in log
    stats = run(env, "-m", "django", "poolstats", "--json")
    assert stats.returncode != 0 and f"{configured} is a symlink" in stats.stderr
    assert listing(victim) == before


@needs_root
def test_a_group_or_world_writable_directory_of_ones_own_is_refused(
    scene: dict[str, Path],
) -> None:
    """Even this user's own per-user directory is refused while others may write
    to it: they could have planted files in it before its mode was looked at."""
    base = scene["base"]
    env = deployment_env(base)
    project = project_dir(env)
    project.parent.mkdir(mode=0o700)
    os.chmod(project.parent, 0o777)
    result, log = run_worker(env, lambda: None)
    assert result["published"] is False
    assert (
        f"The pool statistics directory {project.parent} is writable by its group "
        "and other users (mode 0777)"
    ) in log
    assert not project.exists()
    # Once it is fixed, statistics are published again, by the same kind of process.
    os.chmod(project.parent, 0o700)
    result, log = run_worker(env, lambda: None)
    assert result["published"] is True and "not published" not in log
    assert stat.S_IMODE(os.stat(project).st_mode) == 0o700


@needs_root
def test_the_directories_the_package_makes_are_private_to_this_user(
    attacker: pwd.struct_passwd, scene: dict[str, Path], tmp_path: Path
) -> None:
    """Both directories the package makes, the per-user one and the project's,
    belong to this user and are 0700, under TMPDIR and under XDG_RUNTIME_DIR.
    XDG_RUNTIME_DIR keeps its own check: one that is not a real directory of this
    user (another user's, or a symlink) is not used at all."""
    base = scene["base"]
    runtime = tmp_path / "run-user"
    runtime.mkdir(mode=0o700)
    for extra, parent in (
        ({}, base / f"django_poolbackend-{os.getuid()}"),
        ({"XDG_RUNTIME_DIR": str(runtime)}, runtime / "django_poolbackend"),
    ):
        env = deployment_env(base, **extra)
        project = project_dir(env)
        assert project.parent == parent
        result, log = run_worker(env, lambda: None)
        assert result["published"] is True and "not published" not in log, log
        for directory in (parent, project):
            st = os.lstat(directory)
            assert stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid()
            assert stat.S_IMODE(st.st_mode) == 0o700, directory

    # Another user's XDG_RUNTIME_DIR, and a symlink to this user's: not used.
    theirs = tmp_path / "run-theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, attacker.pw_uid, attacker.pw_gid)
    link = tmp_path / "run-link"
    link.symlink_to(runtime)
    for runtime_dir in (theirs, link):
        project = project_dir(deployment_env(base, XDG_RUNTIME_DIR=str(runtime_dir)))
        assert project.parent == base / f"django_poolbackend-{os.getuid()}", runtime_dir


@needs_root
def test_a_directory_above_that_another_user_controls_is_refused(
    attacker: pwd.struct_passwd, tmp_path: Path
) -> None:
    """An explicit directory under another user's directory, or under one that
    anybody may write to without the sticky bit: refused, naming that directory."""
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    os.chown(theirs, attacker.pw_uid, attacker.pw_gid)
    with pytest.raises(publish.UntrustedDirectory) as info:
        publish.ensure_dir(theirs / "stats")
    assert str(info.value).startswith(
        f"The pool statistics directory {theirs / 'stats'} is under {theirs}, which "
        f"belongs to another user (uid {attacker.pw_uid})"
    )
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    with pytest.raises(publish.UntrustedDirectory) as info:
        publish.ensure_dir(shared / "stats")
    assert (
        f"is under {shared}, which is writable by its group and other users (mode 0777) "
        "without the sticky bit"
    ) in str(info.value)
    assert not (theirs / "stats").exists() and not (shared / "stats").exists()


def test_statistics_stay_off_in_a_process_whose_directory_was_refused(
    make_pooled: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """One error naming the directory and what is wrong; then nothing is written
    there (nor anywhere else), and no drain is noticed, even once it is fixed."""
    directory = tmp_path / "stats"
    directory.mkdir()
    os.chmod(directory, 0o777)
    caplog.set_level("WARNING", logger="django_poolbackend")
    try:
        with override_settings(DJANGO_POOLBACKEND_STATS_DIR=str(directory)):
            pooled = make_pooled("default", max_size=2)
            wrapper = pooled.wrapper()
            before = pooled.backend_id(wrapper)
            wrapper.close()
            for _ in range(3):
                pooled.pool._tick(0.0)  # what a return or the maintenance tick does
            assert publish.publish(force=True) is False
            assert os.listdir(directory) == []
            os.chmod(directory, 0o700)
            # Fixed now, and a drain requested: this process still publishes nothing
            # and applies nothing (it says so in the one error it logged).
            assert publish.request_drain(pooled.alias, directory) == 1
            pooled.pool._tick(0.0)
            assert publish.publish(force=True) is False
            assert sorted(os.listdir(directory)) == [".drain.lock", f"drain-{pooled.alias}.json"]
            assert pooled.stats()["drains"] == 0
            assert pooled.backend_id(wrapper) == before
            wrapper.close()
    finally:
        publish._refused.discard(str(directory))
    errors = [r for r in caplog.records if r.name == "django_poolbackend" and r.levelname == "ERROR"]
    assert len(errors) == 1, [r.getMessage() for r in caplog.records]
    message = errors[0].getMessage()
    assert f"The pool statistics directory {directory} is writable by its group and other users (mode 0777)" in message
    assert "Statistics stay off in this process" in message
    assert not [r for r in caplog.records if "Pool statistics" in r.getMessage() and r is not errors[0]]


def test_pooldrain_never_follows_or_blocks_on_a_planted_drain_lock(tmp_path: Path) -> None:
    """The lock file is opened without following a symlink and without blocking
    on a FIFO, and must be a regular file of this user: the target is untouched."""
    directory = tmp_path / "stats"
    publish.ensure_dir(directory)
    precious = tmp_path / "precious"
    precious.write_text("keep me")
    os.chmod(precious, 0o644)
    (directory / ".drain.lock").symlink_to(precious)
    with pytest.raises(publish.UntrustedDirectory, match=r"\.drain\.lock is a symlink"):
        publish.request_drain("default", directory)
    assert precious.read_text() == "keep me" and stat.S_IMODE(precious.stat().st_mode) == 0o644
    (directory / ".drain.lock").unlink()
    os.mkfifo(directory / ".drain.lock")
    with pytest.raises(publish.UntrustedDirectory, match="is not a regular file of this user"):
        publish.request_drain("default", directory)
    assert sorted(os.listdir(directory)) == [".drain.lock"]


# -- crafted files -------------------------------------------------------------------


def _doc(pid: int, **pools: Any) -> dict[str, Any]:
    return {"format": 1, "pid": pid, "written": 1.0, "pools": pools}


def _figures(pid: int, **changes: Any) -> dict[str, Any]:
    return {"alias": "default", "pid": pid, "size": 1, "idle": 1, "in_use": 0, **changes}


#: name -> how to make the crafted file at *path* for a live process *pid*.
CRAFTED: dict[str, Any] = {
    "pools_a_list": lambda path, pid: path.write_text(json.dumps({**_doc(pid), "pools": [1, 2]})),
    "pid_a_string": lambda path, pid: path.write_text(json.dumps({**_doc(pid), "pid": str(pid)})),
    "size_many": lambda path, pid: path.write_text(
        json.dumps(_doc(pid, default=_figures(pid, size="many")))
    ),
    "size_infinity": lambda path, pid: path.write_text(
        json.dumps(_doc(pid, default=_figures(pid, size=0))).replace('"size": 0', '"size": Infinity')
    ),
    "size_null": lambda path, pid: path.write_text(
        json.dumps(_doc(pid, default=_figures(pid, size=None)))
    ),
    "histogram_wrong_types": lambda path, pid: path.write_text(
        json.dumps(
            _doc(pid, default=_figures(pid, wait_histogram={"buckets": [["x", 1]], "sum_ms": "y"}))
        )
    ),
    "timing_wrong_types": lambda path, pid: path.write_text(
        json.dumps(_doc(pid, default=_figures(pid, wait_ms=[1, 2], hold_ms={"max": "long"})))
    ),
    "size_true": lambda path, pid: path.write_text(
        json.dumps(_doc(pid, default=_figures(pid, size=True)))
    ),
    "size_1e999": lambda path, pid: path.write_text(
        json.dumps(_doc(pid, default=_figures(pid, size=0))).replace('"size": 0', '"size": 1e999')
    ),
    "wait_ms_nan": lambda path, pid: path.write_text(
        json.dumps(_doc(pid, default=_figures(pid, wait_ms={"p50": 0}))).replace(
            '"p50": 0', '"p50": NaN'
        )
    ),
    "closed_by_reason_a_list": lambda path, pid: path.write_text(
        json.dumps(_doc(pid, default=_figures(pid, closed_by_reason=["broken"])))
    ),
    "histogram_bucket_out_of_range": lambda path, pid: path.write_text(
        json.dumps(_doc(pid, default=_figures(pid, wait_histogram={"buckets": [[10**6, 1]]})))
    ),
    "alias_of_another_row": lambda path, pid: path.write_text(
        json.dumps(_doc(pid, default=_figures(pid, alias="mysql")))
    ),
    "nested_200000_levels": lambda path, pid: path.write_text("[" * 200_000 + "]" * 200_000),
    "nested_inside_a_figure": lambda path, pid: path.write_text(
        json.dumps(_doc(pid, default=_figures(pid))).replace(
            '"size": 1', '"extra": ' + "[" * 50 + "]" * 50 + ', "size": 1'
        )
    ),
    "fifo": lambda path, pid: os.mkfifo(path),
    "symlink_to_dev_zero": lambda path, pid: os.symlink("/dev/zero", path),
    "sparse_300_mb": lambda path, pid: _sparse(path, 300 << 20),
    "directory": lambda path, pid: path.mkdir(),
    "not_json": lambda path, pid: path.write_bytes(b"\xff\xfe{"),
    "device": lambda path, pid: _device(path),
}


def _device(path: Path) -> None:
    """A character device (/dev/null's numbers) under a snapshot's name: never
    opened. Making one needs root, as planting one would."""
    if os.geteuid() != 0:
        pytest.skip("mknod needs root")
    os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(1, 3))


def _sparse(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        f.write(b"{")
        f.truncate(size)


@pytest.fixture
def sleepers() -> Iterator[list[int]]:
    """Two live processes whose pids the crafted and the valid snapshot use."""
    processes = [subprocess.Popen(["sleep", "600"]) for _ in range(2)]
    yield [p.pid for p in processes]
    for process in processes:
        process.send_signal(signal.SIGKILL)
        process.wait()


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_a_crafted_snapshot_is_skipped_and_every_other_row_still_shows(
    case: str, sleepers: list[int], make_pooled: Any, tmp_path: Path
) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from django_poolbackend.contrib.prometheus import PoolCollector

    bad_pid, good_pid = sleepers
    directory = tmp_path / "stats"
    with override_settings(DJANGO_POOLBACKEND_STATS_DIR=str(directory)):
        # A real snapshot of a real pool, given to the second live process as the
        # "default" pool of the project, beside the crafted one.
        pooled = make_pooled("default", max_size=2)
        wrapper = pooled.wrapper()
        pooled.backend_id(wrapper)
        wrapper.close()
        assert publish.publish(force=True)
        mine = json.loads((directory / f"{os.getpid()}.json").read_text())
        publish.withdraw()
    figures = mine["pools"][pooled.alias]
    figures.update(alias="default", pid=good_pid)
    valid = {**mine, "pid": good_pid, "start_time": None, "pools": {"default": figures}}
    (directory / f"{good_pid}.json").write_text(json.dumps(valid))
    bad = directory / f"{bad_pid}.json"
    CRAFTED[case](bad, bad_pid)

    env = server_env(DJANGO_POOLBACKEND_STATS_DIR=str(directory))
    for args in (["poolstats"], ["poolstats", "--json"]):
        out = run(env, "-m", "django", *args)
        assert out.returncode == 0, out.stderr
        assert "Traceback" not in out.stderr
        assert out.stderr.count(f"skipping unreadable snapshot {bad} (") == 1, out.stderr
        if "--json" in args:
            rows = json.loads(out.stdout)["pools"]
            assert [(r["pid"], r["alias"]) for r in rows] == [(good_pid, "default")]
        else:
            assert any(line.split()[:2] == [str(good_pid), "default"] for line in out.stdout.splitlines())
            assert not any(line.split()[:1] == [str(bad_pid)] for line in out.stdout.splitlines())

    registry = CollectorRegistry()
    registry.register(PoolCollector(directory))
    metrics = generate_latest(registry).decode()
    assert f'pid="{good_pid}"' in metrics and f'pid="{bad_pid}"' not in metrics
    # A bad file is not removed: only a dead process's snapshot is.
    assert os.path.lexists(bad)


def test_the_reasons_name_the_field_and_what_is_allowed(tmp_path: Path, sleepers: list[int]) -> None:
    directory = tmp_path / "stats"
    publish.ensure_dir(directory)
    pid = sleepers[0]
    reasons = {}
    for case in ("size_many", "size_infinity", "pools_a_list", "sparse_300_mb", "fifo"):
        path = directory / f"{pid}.json"
        if os.path.lexists(path):
            path.unlink()
        CRAFTED[case](path, pid)
        with pytest.raises(publish.BadFile) as info:
            with publish.opened(directory, create=False) as dirfd:
                document, _ = publish.read_json(dirfd, path.name)
                snapshots._check_snapshot(document, pid)
        reasons[case] = str(info.value)
    assert reasons == {
        "size_many": "pools['default']['size'] is 'many', not a whole number >= 0",
        "size_infinity": "it is not valid JSON (Infinity is not a number a snapshot can hold)",
        "pools_a_list": "pools is a list, not an object",
        "sparse_300_mb": f"it is {300 << 20} bytes, more than the {1 << 20} allowed",
        "fifo": "it is not a regular file",
    }
