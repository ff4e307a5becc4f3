"""Fork safety in every process model: os.fork(), multiprocessing, Gunicorn --preload.

Whether a child closed its sessions politely (COM_QUIT, a Terminate message) is read
from the servers' per-database records of the test's own databases (conftest's
OwnDatabases), never from a server-wide counter that other work moves too.
"""

from __future__ import annotations

import atexit
import json
import multiprocessing
import os
import sys
import tempfile
import threading
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connections

from .conftest import ROOT, fork_from_one_thread, start_gunicorn, stop

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "mysql"])

BACKEND_SQL = {"postgresql": "SELECT pg_backend_pid()", "mysql": "SELECT CONNECTION_ID()"}


def backend_id(alias: str) -> int:
    connection = connections[alias]
    with connection.cursor() as cursor:
        cursor.execute(BACKEND_SQL[connection.vendor])
        return cursor.fetchone()[0]


def _fork_and_query(alias: str, exit_politely: bool) -> list[int]:
    """Fork; the child queries on its own and exits; returns the child's ids."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:
            os.close(read_end)
            ids = []
            for _ in range(3):
                ids.append(backend_id(alias))
                connections[alias].close()
            os.write(write_end, json.dumps(ids).encode())
            code = 0
        finally:
            if exit_politely:
                atexit._run_exitfuncs()  # what a normal interpreter exit runs
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end) as reader:
        data = reader.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return json.loads(data)


@pytest.mark.parametrize("exit_politely", [True, False], ids=["exit", "os._exit"])
def test_a_forked_child_never_touches_the_parents_connections(make_pooled, vendor, exit_politely):
    # In the parent: a Django connection checked out (the request in progress) and a
    # pooled one idle in the same pool.
    pooled = make_pooled(vendor)
    other = pooled.wrapper()
    parent_idle = pooled.backend_id(other)
    other.close()
    parent_busy = backend_id(vendor)
    observer = pooled.observer

    def alive(ids):
        if observer.vendor == "postgresql":
            rows = observer.query("SELECT pid FROM pg_stat_activity WHERE pid = ANY(%s)", (ids,))
        else:
            marks = ", ".join(str(int(i)) for i in ids)
            rows = observer.query(
                f"SELECT id FROM information_schema.processlist WHERE id IN ({marks})"
            )
        return {row[0] for row in rows}

    with fork_from_one_thread():
        child_ids = _fork_and_query(vendor, exit_politely)
    assert len(set(child_ids)) == 1  # the child reused its own connection
    assert not set(child_ids) & {parent_busy, parent_idle}
    # The parent's sessions were neither used nor closed by the child.
    assert alive([parent_busy, parent_idle]) == {parent_busy, parent_idle}
    assert backend_id(vendor) == parent_busy
    assert pooled.backend_id(other) == parent_idle
    other.close()


#: The pooled database the children of the multiprocessing test use, and the
#: barrier its first tasks meet at; set before the fork, so the children inherit them.
_CHILD_POOLED = None
_CHILD_BARRIER = None
CHILDREN = 3


def _task(number: int) -> tuple[int, int]:
    if number < CHILDREN:
        # The first tasks wait for each other: a child waiting here takes no other
        # task, so each of them runs in a child of its own, however fast one child
        # would have taken every task on a busy machine.
        _CHILD_BARRIER.wait(60)
    wrapper = _CHILD_POOLED.wrapper()
    ident = _CHILD_POOLED.backend_id(wrapper)
    wrapper.close()  # what Celery's and Django's task/request end does
    return os.getpid(), ident


def test_multiprocessing_children_have_pools_of_their_own(make_pooled, own_databases, vendor):
    global _CHILD_POOLED, _CHILD_BARRIER
    # A database only this test uses, so the server's record of how its sessions
    # ended is about this test's sessions only.
    pooled = make_pooled(vendor, database=own_databases.name)
    held = pooled.wrapper()
    parent = pooled.backend_id(held)  # the parent holds a connection when it forks...
    other = pooled.wrapper()
    parent_idle = pooled.backend_id(other)
    other.close()  # ... and has another idle in its pool
    context = multiprocessing.get_context("fork")
    _CHILD_POOLED, _CHILD_BARRIER = pooled, context.Barrier(CHILDREN)
    try:
        with fork_from_one_thread():
            with context.Pool(CHILDREN) as workers:
                results = workers.map(_task, range(30), chunksize=1)
                workers.close()
                workers.join()
    finally:
        _CHILD_POOLED = _CHILD_BARRIER = None
    by_pid: dict[int, set[int]] = defaultdict(set)
    for pid, ident in results:
        by_pid[pid].add(ident)
    assert len(by_pid) == CHILDREN
    for ids in by_pid.values():
        assert len(ids) == 1  # sequential tasks in one child reuse its connection
    all_ids = [ident for ids in by_pid.values() for ident in ids]
    assert len(all_ids) == len(set(all_ids))  # no connection shared by two children
    assert not {parent, parent_idle} & set(all_ids)
    # The parent's sessions still work: no child sent anything on them.
    assert pooled.backend_id(held) == parent
    other = pooled.wrapper()
    assert pooled.backend_id(other) == parent_idle
    other.close()
    held.close()
    pooled.close()  # the parent's own sessions end politely too
    # Children leave through os._exit(), yet close their connections politely.
    assert own_databases.impolite_endings()[pooled.vendor] == []


@pytest.mark.parametrize(
    "worker", [["--workers", "3"], ["--workers", "2", "--threads", "4"]], ids=["sync", "gthread"]
)
def test_gunicorn_preload_with_recycling_workers(own_databases, worker):
    with tempfile.TemporaryDirectory() as tmp:
        master_file = os.path.join(tmp, "master.json")
        server = start_gunicorn(
            "--preload",
            *worker,
            "--max-requests",
            "20",
            "-c",
            str(ROOT / "tests" / "preload_gunicorn.conf.py"),
            "tests.preload_wsgi:application",
            env={
                "DPB_MASTER_FILE": master_file,
                # Both aliases on databases only this test uses (see conftest's
                # OwnDatabases): the views here only ask for the session's id.
                "DPB_USE_TEST_DB": "0",
                "DPB_TEST_PG_URL": own_databases.url("postgresql"),
                "DPB_TEST_MYSQL_URL": own_databases.url("mysql"),
            },
        )
        try:
            with open(master_file) as f:
                master = json.load(f)
            paths = [f"/one/?alias={alias}" for alias in ("default", "mysql")] * 150
            with ThreadPoolExecutor(6) as clients:
                answers = list(clients.map(lambda p: (p, json.loads(server.get(p))), paths))
            served_by: dict[tuple[str, int], set[int]] = defaultdict(set)
            for path, answer in answers:
                served_by[(path, answer["backend"])].add(answer["pid"])
            assert len(answers) == 300  # every request answered (get() raises otherwise)
            assert all(len(pids) == 1 for pids in served_by.values())
            worker_pids = {answer["pid"] for _, answer in answers}
            assert master["pid"] not in worker_pids
            assert len(worker_pids) > 3  # --max-requests recycled workers
            for alias, ident in master["ids"].items():
                assert (f"/one/?alias={alias}", ident) not in served_by
        finally:
            stop(server)
        with open(master_file + ".exit") as f:
            at_exit = json.load(f)
    assert at_exit == {"ok": True, "ids": master["ids"]}
    # Every worker, recycled or stopped, and the master closed their sessions politely.
    assert own_databases.impolite_endings() == {"postgresql": [], "mysql": []}


def test_threads_and_fork_together(make_pooled):
    """A fork while other threads hold pooled connections: the child is unaffected.

    Here another thread does run at the fork, on purpose, so Python 3.12+ is right
    to warn that the fork may deadlock the child; the test asserts that warning
    (the child is fine all the same: it never touches the inherited pool)."""
    pooled = make_pooled("default", max_size=4)
    holding = threading.Event()
    release = threading.Event()

    def hold():
        wrapper = pooled.wrapper()
        pooled.backend_id(wrapper)
        holding.set()
        release.wait(30)
        wrapper.close()

    thread = threading.Thread(target=hold)
    thread.start()
    assert holding.wait(30)
    try:
        if sys.version_info >= (3, 12):
            with pytest.warns(DeprecationWarning, match="is multi-threaded, use of fork"):
                child_ids = _fork_and_query("default", exit_politely=True)
        else:
            child_ids = _fork_and_query("default", exit_politely=True)
        assert len(child_ids) == 3
    finally:
        release.set()
        thread.join()
    assert pooled.stats()["in_use"] == 0


def test_pytest_django_with_xdist_runs_on_the_pooled_engines():
    """pytest-django gives each xdist worker its own test databases (_gw0, _gw1);
    each worker process builds its own pools."""
    import subprocess

    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-n",
            "2",
            "-p",
            "no:cacheprovider",
            "tests/test_pool_real.py",
            "-k",
            "reuse or cap or clean or killed",
        ],
        cwd=ROOT,
        env={
            # Not this process's worker id, if it is one: the inner run has its own.
            **{k: v for k, v in os.environ.items() if k != "PYTEST_XDIST_WORKER"},
            "DPB_TEST_DB_SUFFIX": os.environ.get("DPB_TEST_DB_SUFFIX", "") + "_xdist",
        },
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "10 passed" in run.stdout and "failed" not in run.stdout
