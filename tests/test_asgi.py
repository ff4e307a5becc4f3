"""Under ASGI (uvicorn), async views give their connections back at the end of each
request: the serving process never holds more server sessions than POOL max_size,
and after the load only the pool's idle ones are left (Django ticket #33497 is the
leak this guards against)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import pytest
from django.db import connections

from testproject.shop.models import Item

from .conftest import ROOT, Observer, Server, free_port, server_env, stop, wait_for, wait_listening

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "mysql"])

REQUESTS = 500
CLIENTS = 16
VIEWS = ["/async/one/", "/async/orm/", "/async/slow/"]
LOAD_DEADLINE = 60.0  # seconds for the whole load; it takes a few


# -- who owns a MySQL session -----------------------------------------------------


def _process_tree(pid: int) -> list[int]:
    """*pid* and its descendants (Linux: /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parent = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, ()))
    return tree


def _tcp_ports(pid: int) -> set[int]:
    """Local ports of the TCP sockets of *pid* and its descendants (Linux: /proc)."""
    inodes = set()
    for member in _process_tree(pid):
        try:
            fds = os.listdir(f"/proc/{member}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{member}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    ports = set()
    for table in (f"/proc/{pid}/net/tcp", f"/proc/{pid}/net/tcp6"):
        try:
            with open(table) as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def _port(host: str) -> int | None:
    """processlist's host column is 'address:port' for a TCP client."""
    _, sep, port = host.rpartition(":")
    return int(port) if sep and port.isdigit() else None


class Sessions:
    """The uvicorn process's sessions on one vendor's test database, from the server.

    PostgreSQL: sessions with the process's unique application_name. MySQL has no
    such tag, so: the sessions on our test database (its name carries the run's
    suffix) whose client port is a socket of the uvicorn process (or a child).
    """

    def __init__(self, alias: str, application_name: str, pid: int) -> None:
        self.observer = Observer(connections[alias].settings_dict)
        self.vendor = self.observer.vendor
        self.application_name = application_name
        self.pid = pid

    def ids(self) -> set[int]:
        if self.vendor == "postgresql":
            rows = self.observer.query(
                "SELECT pid FROM pg_stat_activity WHERE application_name = %s AND datname = %s",
                (self.application_name, self.observer.database),
            )
            return {row[0] for row in rows}
        theirs = _tcp_ports(self.pid)
        rows = self.observer.query(
            "SELECT id, host FROM information_schema.processlist"
            " WHERE db = %s AND id <> CONNECTION_ID()",
            (self.observer.database,),
        )
        return {ident for ident, host in rows if _port(host) in theirs}

    def states(self) -> list[str]:
        """PostgreSQL's view of each session: 'idle', 'idle in transaction', …"""
        rows = self.observer.query(
            "SELECT state FROM pg_stat_activity WHERE application_name = %s AND datname = %s",
            (self.application_name, self.observer.database),
        )
        return [row[0] for row in rows]

    def close(self) -> None:
        self.observer.close()


class Sampler(threading.Thread):
    """Counts the sessions over and over until stopped (or its deadline passes)."""

    def __init__(
        self, alias: str, application_name: str, pid: int, deadline: float = 120.0
    ) -> None:
        super().__init__(daemon=True)
        self.alias = alias
        self.application_name = application_name
        self.pid = pid
        self.deadline = deadline
        self.stopped = threading.Event()
        self.started_sampling = threading.Event()
        self.peak = 0
        self.samples = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            # Its own observer: a driver connection is not shared between threads.
            sessions = Sessions(self.alias, self.application_name, self.pid)
            try:
                self.started_sampling.set()
                deadline = time.monotonic() + self.deadline
                while not self.stopped.wait(0.002) and time.monotonic() < deadline:
                    self.peak = max(self.peak, len(sessions.ids()))
                    self.samples += 1
            finally:
                sessions.close()
        except BaseException as exc:
            self.error = exc
            self.started_sampling.set()

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=30)
        assert not self.is_alive(), "the sampler did not stop"
        if self.error is not None:
            raise self.error


# -- the server -------------------------------------------------------------------


def start_uvicorn(application_name: str, log: Path) -> Server:
    port = free_port()
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "testproject.asgi:application",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "1",
                "--no-access-log",
            ],
            cwd=ROOT,
            env=server_env(DPB_APPLICATION_NAME=application_name),
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    server = Server(f"http://127.0.0.1:{port}", process)
    try:
        wait_listening(process, port, "uvicorn", log)
    except BaseException:
        stop(server)
        raise
    return server


@pytest.fixture
def uvicorn_server(django_db_setup: Any, tmp_path: Path) -> Iterator[tuple[Server, str, Path]]:
    application_name = f"dpb-asgi-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    log = tmp_path / "uvicorn.log"
    server = start_uvicorn(application_name, log)
    try:
        yield server, application_name, log
    finally:
        stop(server)


def _get(server: Server, path: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(server.url + path, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()[:500]
    except Exception as exc:  # a refused or dropped connection: report it, don't hang
        return 0, repr(exc)


def _pool(server: Server, alias: str) -> dict:
    status, stats = _get(server, "/pool/")
    assert status == 200, stats
    return stats[alias]


# -- the test ---------------------------------------------------------------------


def test_async_views_return_connections_to_the_pool(vendor, uvicorn_server):
    server, application_name, log = uvicorn_server
    alias = vendor
    max_size = connections[alias].settings_dict["POOL"]["max_size"]
    for n in range(3):
        Item.objects.using(alias).create(name=f"item{n}", stock=n)
    connections[alias].close()  # back to this (pytest) process's own pool

    sessions = Sessions(alias, application_name, server.process.pid)
    sampler = Sampler(alias, application_name, server.process.pid)
    try:
        assert sessions.ids() == set()  # the server has not touched the database yet
        sampler.start()
        assert sampler.started_sampling.wait(30)

        paths = [f"{VIEWS[n % len(VIEWS)]}?alias={alias}" for n in range(REQUESTS)]
        with ThreadPoolExecutor(CLIENTS) as clients:
            futures = [clients.submit(_get, server, path) for path in paths]
            done, not_done = wait(futures, timeout=LOAD_DEADLINE)
            for future in not_done:
                future.cancel()
        assert not not_done, f"{len(not_done)} requests unanswered after {LOAD_DEADLINE} s"
        answers = [future.result() for future in futures]
        sampler.stop()

        statuses = Counter(status for status, _ in answers)
        failures = [
            (path, body)
            for path, (status, body) in zip(paths, answers, strict=True)
            if status != 200
        ]
        assert statuses == {200: REQUESTS}, (statuses, failures[:3], log.read_text()[-3000:])

        # Only the pool's sessions ever served, all from the one uvicorn process.
        assert {body["pid"] for _, body in answers} == {server.process.pid}
        backends = {body["backend"] for _, body in answers if "backend" in body}
        assert 1 <= len(backends) <= max_size
        assert all(body["count"] == 3 for _, body in answers if "count" in body)

        # The server never saw more sessions from this process than max_size.
        assert sampler.samples >= 10, sampler.samples
        assert 1 <= sampler.peak <= max_size, sampler.peak

        # After the load: every connection is back in the pool (the last ones are
        # given back by request_finished, just after the response went out) ...
        stats = wait_for(
            lambda: (s := _pool(server, alias))["in_use"] == 0 and s,
            what="every connection back in the pool",
        )
        # ... and the only sessions left are the pool's idle ones.
        left = sessions.ids()
        assert len(left) <= max_size
        assert stats["size"] == stats["idle"] == len(left)
        assert backends <= left  # the sessions that served are the idle ones
        if sessions.vendor == "postgresql":
            assert sessions.states() == ["idle"] * len(left)
        # One checkout per request, no connection opened beyond the pool's, none
        # dropped without being given back (that would be closed as an orphan).
        assert stats["checkouts"] == REQUESTS
        assert stats["connects"] == stats["size"]
        assert stats["closed"] == 0, stats["closed_by_reason"]
        assert stats["timeouts"] == stats["connect_errors"] == 0
        assert stats["waits"] > 0  # the load did outgrow the pool: requests queued
        figures = {
            k: stats[k] for k in ("size", "idle", "in_use", "checkouts", "waits", "connects")
        }
        print(
            f"\n{alias}: {REQUESTS} requests from {CLIENTS} clients; peak {sampler.peak} "
            f"server sessions in {sampler.samples} samples (max_size {max_size}); "
            f"{len(left)} left; pool {json.dumps(figures)}"
        )

        # A polite shutdown closes the idle ones too.
        stop(server)
        wait_for(lambda: not sessions.ids(), what="the sessions to close at exit")
    finally:
        if sampler.is_alive():
            sampler.stopped.set()
            sampler.join(timeout=30)
        sessions.close()
