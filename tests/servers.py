"""Private database servers for tests that stop, kill or restart a server.

The machine's shared servers are never stopped: each instance here lives in a
temporary directory, on a free port, and is removed at the end.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile

from .conftest import free_port


class _PrivateServer:
    port: int
    dir: str
    database: str
    user: str

    def settings(self, base: dict, **pool: object) -> dict:
        """A DATABASES entry for this instance, from a pooled one of the same vendor."""
        return {
            **base,
            "NAME": self.database,
            "USER": self.user,
            "PASSWORD": "",
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "OPTIONS": {"connect_timeout": 5},
            "POOL": pool,
            "TEST": {},
        }

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def restart(self) -> None:
        self.stop()
        self.start()

    def destroy(self) -> None:
        try:
            self.stop()
        except subprocess.CalledProcessError:
            pass  # already stopped
        shutil.rmtree(self.dir, ignore_errors=True)


class PrivatePostgres(_PrivateServer):
    """initdb + pg_ctl, as the postgres OS user (PostgreSQL refuses to run as root)."""

    database = user = "postgres"

    def __init__(self) -> None:
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
        if not bins:
            raise RuntimeError("no PostgreSQL server binaries under /usr/lib/postgresql")
        self.bin = bins[-1]
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="dpb_pg_")
        shutil.chown(self.dir, "postgres", "postgres")
        self.data = os.path.join(self.dir, "data")
        self._run("initdb", "-D", self.data, "-A", "trust", "-U", "postgres", "--no-sync")
        self.start()

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", os.path.join(self.bin, tool), *args],
            check=True,
            capture_output=True,
            timeout=120,
        )

    def start(self) -> None:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(
            "pg_ctl",
            "-D",
            self.data,
            "-o",
            options,
            "-l",
            os.path.join(self.dir, "log"),
            "-w",
            "start",
        )

    def stop(self) -> None:
        self._run("pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop")


class PrivateMariaDB(_PrivateServer):
    """mariadb-install-db + mariadbd on a free port, root with an empty password."""

    database, user = "mysql", "root"

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="dpb_my_")
        self.data = os.path.join(self.dir, "data")
        self.socket = os.path.join(self.dir, "mysqld.sock")
        self.process: subprocess.Popen | None = None
        subprocess.run(
            [
                "mariadb-install-db",
                "--no-defaults",
                f"--datadir={self.data}",
                "--user=root",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ],
            check=True,
            capture_output=True,
            timeout=180,
        )
        self.start()

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "mariadbd",
                "--no-defaults",
                f"--datadir={self.data}",
                f"--port={self.port}",
                f"--socket={self.socket}",
                "--bind-address=127.0.0.1",
                "--user=root",
                "--skip-log-bin",
                "--innodb-flush-log-at-trx-commit=0",
                f"--pid-file={os.path.join(self.dir, 'mysqld.pid')}",
                f"--log-error={os.path.join(self.dir, 'error.log')}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        import MySQLdb

        from .conftest import wait_for

        def accepting() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"mariadbd exited with {self.process.returncode}")
            try:
                MySQLdb.connect(host="127.0.0.1", port=self.port, user="root").close()
                return True
            except MySQLdb.OperationalError:
                return False

        wait_for(accepting, timeout=60, what="the private MariaDB to accept connections")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()  # SIGTERM: a normal shutdown
            self.process.wait(timeout=60)
        self.process = None


class PrivatePgBouncer:
    """Debian's PgBouncer on a free port, with a private ini in a temporary
    directory, run as the postgres OS user (it refuses to run as root).

    *databases* maps each PgBouncer database name to its connect string
    (``host=127.0.0.1 port=5432 dbname=... pool_mode=...``); *settings* are
    extra ``[pgbouncer]`` lines. The user ``postgres`` may use the admin console.
    Stopped by its own pid only.
    """

    BINARY = "/usr/sbin/pgbouncer"

    def __init__(self, databases: dict[str, str], **settings: object) -> None:
        from pathlib import Path

        from .conftest import wait_listening

        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="dpb_pgbouncer_")
        self.log = os.path.join(self.dir, "pgbouncer.log")
        users = os.path.join(self.dir, "users.txt")
        ini = os.path.join(self.dir, "pgbouncer.ini")
        with open(users, "w") as handle:
            handle.write('"postgres" ""\n')
        lines = ["[databases]"]
        lines += [f"{name} = {target}" for name, target in databases.items()]
        lines += [
            "[pgbouncer]",
            "listen_addr = 127.0.0.1",
            f"listen_port = {self.port}",
            "unix_socket_dir =",
            "auth_type = trust",
            f"auth_file = {users}",
            "admin_users = postgres",
            f"logfile = {self.log}",
        ]
        lines += [f"{key} = {value}" for key, value in settings.items()]
        with open(ini, "w") as handle:
            handle.write("\n".join(lines) + "\n")
        for path in (self.dir, users, ini):
            shutil.chown(path, "postgres", "postgres")
        self.process = subprocess.Popen(
            [self.BINARY, ini],
            user="postgres",
            # Not a pipe: nobody reads it, and a full pipe would stall PgBouncer.
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_listening(self.process, self.port, "pgbouncer", Path(self.log))
        except BaseException:
            self.destroy()
            raise

    @staticmethod
    def version() -> str:
        """``PgBouncer 1.18.0``: the first line of ``pgbouncer --version``."""
        out = subprocess.run(
            [PrivatePgBouncer.BINARY, "--version"], capture_output=True, text=True, timeout=30
        )
        return out.stdout.splitlines()[0].strip()

    def admin(self, command: str) -> list[dict[str, str | None]]:
        """One command on the admin console (``SHOW POOLS``, ``SHOW CLIENTS``, …)
        as rows of column name to text. The console speaks only the simple query
        protocol, so the command goes straight through libpq."""
        import psycopg

        conn = psycopg.connect(
            host="127.0.0.1", port=self.port, user="postgres", dbname="pgbouncer", autocommit=True
        )
        try:
            result = conn.pgconn.exec_(command.encode())
            ok = (psycopg.pq.ExecStatus.TUPLES_OK, psycopg.pq.ExecStatus.COMMAND_OK)
            if result.status not in ok:
                raise RuntimeError(f"{command}: {conn.pgconn.get_error_message()}")
            names = [result.fname(c).decode() for c in range(result.nfields)]
            return [
                {
                    name: None if (v := result.get_value(r, c)) is None else v.decode()
                    for c, name in enumerate(names)
                }
                for r in range(result.ntuples)
            ]
        finally:
            conn.close()

    def destroy(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()  # SIGTERM: PgBouncer shuts down at once
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.dir, ignore_errors=True)
