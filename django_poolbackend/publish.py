"""Snapshots of every process's pools, so one process can show them all.

Each process that has a pool writes ``<pid>.json`` into a directory shared by the
processes serving the same settings (all of a host's Gunicorn workers):
``manage.py poolstats`` and the Prometheus collector read them. Files, not a
socket or shared memory, because they need no server, survive nothing (a dead
process's file is dropped by the next reader) and work across any process model;
``prometheus_client``'s multiprocess mode works the same way.

Writes piggy-back on the pool's own once-a-second tick (a return to the pool, or
the maintenance thread when the process is idle), are skipped when nothing
changed, and are atomic (a temporary file, then ``os.replace``), so a reader never
sees half a snapshot. ``manage.py pooldrain`` leaves a generation number per alias
in the same directory; the same tick notices it with one ``stat()``.

The directory holds no secret (snapshots carry host, port, database and user,
never a password or DSN); it is still private: created ``0700``, files ``0600``.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import stat
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from django.core.exceptions import ImproperlyConfigured

from .core import Pool

logger = logging.getLogger("django_poolbackend")

SETTING = "DJANGO_POOLBACKEND_STATS_DIR"
#: Snapshot format; readers skip files of another one.
FORMAT = 1
#: A process writes at most this often, however many pools tick.
MIN_INTERVAL = 0.5
#: Temporary files older than this belong to a writer that died mid-write.
_TMP_MAX_AGE = 60.0

_lock = threading.Lock()
_drain_lock = threading.Lock()
_last: dict[str, Any] | None = None
_last_at = -1e9
_written: Path | None = None
_written_pid = 0
_warned = False


# -- where ------------------------------------------------------------------------


def stats_dir() -> Path:
    """The directory of this project's snapshots (not created).

    ``settings.DJANGO_POOLBACKEND_STATS_DIR`` (or the environment variable of the
    same name) wins; otherwise a per-user directory (``$XDG_RUNTIME_DIR`` or the
    temporary directory) with one subdirectory per project: a hash of the settings
    module and the pooled databases' identities (never their passwords), so two
    projects on one host never read each other's pools.
    """
    from django.conf import settings

    explicit = getattr(settings, SETTING, None) or os.environ.get(SETTING)
    if explicit:
        if not isinstance(explicit, str | os.PathLike):
            raise ImproperlyConfigured(
                f"settings.{SETTING} must be a directory path (str or Path), "
                f"not {type(explicit).__name__}."
            )
        return Path(explicit).expanduser().absolute()
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and _private_dir(Path(runtime)):
        base = Path(runtime) / "django_poolbackend"
    else:
        base = Path(tempfile.gettempdir()) / f"django_poolbackend-{os.getuid()}"
    return base / project_key()


def project_key() -> str:
    from django.conf import settings

    parts: list[Any] = [getattr(settings, "SETTINGS_MODULE", None) or ""]
    for alias in sorted(settings.DATABASES):
        db = settings.DATABASES[alias]
        if _pooled_engine(db.get("ENGINE")):
            parts.append(
                [alias, db.get("ENGINE"), db.get("NAME"), db.get("HOST"), str(db.get("PORT"))]
                + [db.get("USER")]
            )
    digest = hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()
    return digest[:16]


#: ENGINE -> pooled or not, for project_key(): it runs at every publishing tick,
#: and an ENGINE that does not import would otherwise be tried again each time.
_engines_seen: dict[str, bool] = {}


def _pooled_engine(engine: Any) -> bool:
    """By the wrapper's class, like every other place that decides (a backend
    composed with the mixin counts), so poolstats and the workers agree."""
    key = str(engine or "")
    pooled = _engines_seen.get(key)
    if pooled is None:
        from .aliases import is_pooled_engine

        pooled = _engines_seen[key] = is_pooled_engine(key)
    return pooled


def _private_dir(path: Path) -> bool:
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid()


def ensure_dir(directory: Path) -> Path:
    """Create *directory* (and its parent) ``0700``; refuse one owned by another
    user or reached through a symlink another user could have planted."""
    for path in (directory.parent, directory):
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
        except FileNotFoundError:
            os.makedirs(path, 0o700, exist_ok=True)
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            st = os.stat(path)
            if st.st_uid != os.getuid():
                raise ImproperlyConfigured(
                    f"The pool statistics directory {path} is a symlink to a directory "
                    f"of another user; set settings.{SETTING} to a directory of yours."
                )
        if not stat.S_ISDIR(st.st_mode):
            raise ImproperlyConfigured(f"The pool statistics path {path} is not a directory.")
        if path == directory and st.st_uid != os.getuid():
            raise ImproperlyConfigured(
                f"The pool statistics directory {path} belongs to another user; "
                f"set settings.{SETTING} to a directory of yours."
            )
    return directory


def _write_json(directory: Path, name: str, data: Any) -> Path:
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".json")  # 0600
    try:
        with os.fdopen(fd, "w") as f:
            # dumps(), not dump(): dump() takes json's pure-Python encoder, whose
            # closures leave ~30 objects of cyclic garbage per snapshot, written from
            # the maintenance thread of every process (Django's
            # test_release_memory_without_garbage_collection caught it); dumps() takes
            # the C encoder, which leaves none.
            f.write(json.dumps(data, separators=(",", ":")))
        target = directory / name
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return target


# -- writing (in each process with a pool) ---------------------------------------


def attach(pool: Pool) -> None:
    """Have *pool* publish and watch for drains; called when the pool is made.

    Reads the current drain generation now, so a drain requested before this pool
    existed is not applied to its fresh connections, and one requested after is.
    """
    from . import registry

    registry.add_fork_hook(_after_fork)
    try:
        directory = stats_dir()
        pool.extra["drain_generation"], pool.extra["drain_seen"] = _read_generation(
            directory, pool.name
        )
    except Exception as exc:
        _warn_once(exc)
    pool.on_tick = _on_tick


def _on_tick(pool: Pool) -> None:
    try:
        directory = stats_dir()
        _check_drain(directory, pool)
        publish(directory)
    except Exception as exc:
        _warn_once(exc)


def _warn_once(exc: Exception) -> None:
    global _warned
    if not _warned:
        _warned = True
        logger.warning(
            "Pool statistics are not published (manage.py poolstats and pooldrain "
            "won't see this process): %s: %s",
            type(exc).__name__,
            exc,
        )


def publish(directory: Path | None = None, *, force: bool = False) -> bool:
    """Write this process's snapshot if something changed; True if written.

    Never blocks: a thread that finds another one publishing leaves it to it.
    """
    global _last, _last_at, _written, _written_pid
    from . import registry

    if not _lock.acquire(blocking=False):
        return False
    try:
        now = time.monotonic()
        if not force and now - _last_at < MIN_INTERVAL:
            return False
        pid = os.getpid()
        current = {
            alias: pool for alias, pool in list(registry.pools.items()) if pool.pid == pid
        }
        pools = {alias: registry.pool_figures(pool) for alias, pool in current.items()}
        if not force and pools == _last and _written_pid == pid:
            return False
        if directory is None:
            directory = stats_dir()
        if not pools:
            _last, _last_at = pools, now
            return _remove_own()
        for alias, pool in current.items():
            pools[alias]["wait_histogram"] = pool.wait_histogram()
        document = {
            "format": FORMAT,
            "pid": pid,
            "start_time": _start_time(pid),
            "written": time.time(),
            "written_monotonic": now,
            "pools": pools,
        }
        ensure_dir(directory)
        _written = _write_json(directory, f"{pid}.json", document)
        _written_pid = pid
        for figures in pools.values():
            figures.pop("wait_histogram", None)
        _last, _last_at = pools, now
        return True
    finally:
        _lock.release()


def withdraw() -> None:
    """Remove this process's snapshot (process exit)."""
    with _lock:
        _remove_own()


def _remove_own() -> bool:
    global _written
    # Only a file this very process wrote: a forked child never removes its
    # parent's snapshot.
    removed = False
    if _written is not None and _written_pid == os.getpid():
        try:
            os.unlink(_written)
            removed = True
        except OSError:
            pass
    _written = None
    return removed


def _after_fork() -> None:
    """In a forked child: nothing of the parent's snapshot is ours."""
    global _lock, _drain_lock, _last, _last_at, _written, _written_pid
    _lock = threading.Lock()
    _drain_lock = threading.Lock()
    _last, _last_at, _written, _written_pid = None, -1e9, None, 0


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), to tell a
    live process from a new one that reused a dead one's pid."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    try:
        return int(data[data.rindex(b")") + 2 :].split()[19])
    except (ValueError, IndexError):
        return None


# -- drains ----------------------------------------------------------------------


def _drain_file(alias: str) -> str:
    if re.fullmatch(r"[A-Za-z0-9_.-]{1,100}", alias) and not alias.startswith("."):
        return f"drain-{alias}.json"
    return "drain-" + hashlib.sha256(alias.encode()).hexdigest()[:16] + ".json"


def _read_generation(directory: Path, alias: str) -> tuple[int, int | None]:
    """(generation, file mtime in ns) of *alias*'s drain file; (0, None) if none."""
    path = directory / _drain_file(alias)
    try:
        mtime = os.stat(path).st_mtime_ns
        with open(path) as f:
            generation = int(json.load(f).get("generation", 0))
    except FileNotFoundError:
        return 0, None
    except (OSError, ValueError, AttributeError):
        return 0, None
    return generation, mtime


def _check_drain(directory: Path, pool: Pool) -> None:
    # One stat() a second; the file is read only when it changed.
    path = directory / _drain_file(pool.name)
    try:
        mtime: int | None = os.stat(path).st_mtime_ns
    except OSError:
        mtime = None
    if mtime == pool.extra.get("drain_seen"):
        return
    # A return and the maintenance thread may both get here: one drain only.
    if not _drain_lock.acquire(blocking=False):
        return
    try:
        generation, mtime = _read_generation(directory, pool.name)
        pool.extra["drain_seen"] = mtime
        if generation > pool.extra.get("drain_generation", 0):
            pool.extra["drain_generation"] = generation
            pool.drain()
    finally:
        _drain_lock.release()


def request_drain(alias: str, directory: Path | None = None) -> int:
    """Bump *alias*'s drain generation; every process notices within about a
    second. Returns the new generation."""
    import fcntl

    directory = ensure_dir(directory or stats_dir())
    with open(directory / ".drain.lock", "w") as lock:
        os.chmod(lock.name, 0o600)
        fcntl.flock(lock, fcntl.LOCK_EX)
        generation, _ = _read_generation(directory, alias)
        generation += 1
        _write_json(
            directory,
            _drain_file(alias),
            {"alias": alias, "generation": generation, "requested": time.time()},
        )
    return generation


def drain_generations(directory: Path | None = None) -> dict[str, int]:
    directory = directory or stats_dir()
    out: dict[str, int] = {}
    try:
        names = os.listdir(directory)
    except OSError:
        return out
    for name in names:
        if name.startswith("drain-") and name.endswith(".json"):
            try:
                with open(directory / name) as f:
                    data = json.load(f)
                out[str(data["alias"])] = int(data["generation"])
            except (OSError, ValueError, KeyError, TypeError):
                continue
    return out


# -- reading (poolstats, the Prometheus collector) --------------------------------


def read_snapshots(directory: Path | None = None, *, clean: bool = True) -> list[dict[str, Any]]:
    """Every live process's snapshot, oldest pid first, each with ``age`` (seconds).

    Snapshots of processes that are gone (or whose pid now belongs to another
    process) are skipped and, with *clean*, deleted.
    """
    directory = directory or stats_dir()
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    now_wall, now_mono = time.time(), time.monotonic()
    out = []
    for name in names:
        path = directory / name
        if name.startswith(".tmp-"):
            if clean:
                _remove_if_old(path, now_wall)
            continue
        if not (name.endswith(".json") and name[:-5].isdigit()):
            continue
        pid = int(name[:-5])
        if not _alive(pid):
            if clean:
                _unlink(path)
            continue
        try:
            with open(path) as f:
                document = json.load(f)
        except FileNotFoundError:
            continue  # its process just exited
        except (OSError, ValueError):
            logger.warning("Pool statistics: skipping unreadable snapshot %s.", path)
            continue
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            continue
        started = document.get("start_time")
        if started is not None and _start_time(pid) not in (None, started):
            if clean:
                _unlink(path)  # the pid was reused
            continue
        written = document.get("written_monotonic")
        if isinstance(written, int | float) and written <= now_mono:
            document["age"] = now_mono - written
        else:
            document["age"] = max(0.0, now_wall - float(document.get("written", now_wall)))
        out.append(document)
    out.sort(key=lambda d: d["pid"])
    return out


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError as exc:
        return exc.errno != errno.ESRCH
    # A zombie (exited, not yet reaped by its parent) no longer serves anything.
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        return data[data.rindex(b")") + 2 : data.rindex(b")") + 3] != b"Z"
    except (OSError, ValueError):
        return True


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _remove_if_old(path: Path, now: float) -> None:
    try:
        if now - os.lstat(path).st_mtime > _TMP_MAX_AGE:
            os.unlink(path)
    except OSError:
        pass
