"""Each process's snapshot of its pools, written where any process can read it.

Each process that has a pool writes ``<pid>.json`` into a directory shared by the
processes serving the same settings (all of a host's Gunicorn workers), and
:mod:`django_poolbackend.snapshots` reads them back for ``manage.py poolstats``,
``pooldrain`` and the Prometheus collector. This module holds the writing side
(the snapshot, noticing a drain, ``pooldrain``'s request) and what both sides
share: where the directory is, how it is opened safely, and how one file in it
is written or read. Files, not a socket or shared memory, because they need no
server, survive nothing (a dead process's file is dropped by the next reader) and
work across any process model; ``prometheus_client``'s multiprocess mode works the
same way.

Writes piggy-back on the pool's own once-a-second tick (a return to the pool, or
the maintenance thread when the process is idle), are skipped when nothing
changed, and are atomic (a temporary file, then ``os.replace``), so a reader never
sees half a snapshot. A snapshot written while connections were in use is written
again as soon as the pool is idle, so a reader never sees connections in use that
were already returned. ``manage.py pooldrain`` leaves a generation number per
alias in the same directory; the same tick notices it with one ``stat()``.

The directory holds no secret (snapshots carry host, port, database and user,
never a password or DSN), but what it holds steers processes (drain requests) and
the files they delete (snapshots of dead processes), so another local user must
not be able to plant or redirect anything in it. It is opened one component at a
time without following a symlink the package did not trust: the directories the
package owns must belong to this process's user and be writable by it alone, and
every directory above them must belong to root or that user and be writable by
nobody else unless it is sticky (like ``/tmp``). A directory that fails is refused
with one logged error naming it and saying what is wrong, and statistics are then
off in that process: it publishes nothing, notices no drain, and never writes
anywhere else instead. Every file is then opened, created, renamed and removed
relative to the directory's descriptor, never through a symlink, and what is read
back is validated field by field (in :mod:`django_poolbackend.snapshots`): a reader
skips a bad file with one warning naming it and shows every other process.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import secrets
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from django.core.exceptions import ImproperlyConfigured

from . import process
from .aliases import is_pooled_engine
from .core import Pool
from .figures import pool_figures

logger = logging.getLogger("django_poolbackend")

SETTING = "DJANGO_POOLBACKEND_STATS_DIR"
#: Snapshot format; readers skip files of another one.
FORMAT = 1
#: A process writes at most this often, however many pools tick.
MIN_INTERVAL = 0.5
#: The largest file a reader reads: a snapshot is a few KB (about 3 KB an alias),
#: so this leaves room for some 300 aliases and keeps a planted huge file cheap.
MAX_FILE_BYTES = 1 << 20

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _NOFOLLOW | _CLOEXEC
#: O_NONBLOCK: opening a FIFO planted under a snapshot's name must not hang.
_READ_FLAGS = os.O_RDONLY | _NOFOLLOW | getattr(os, "O_NONBLOCK", 0) | _CLOEXEC
#: The kernel's own limit on symlinks followed in one lookup.
_MAX_LINKS = 40

_lock = threading.Lock()
_drain_lock = threading.Lock()
_last: dict[str, Any] | None = None
_last_at = -1e9
_written: Path | None = None
_written_pid = 0
#: The messages already logged by this process (each once).
_reported: set[str] = set()
#: The directories this process refused for its own writes: statistics stay off
#: for them until the process restarts, so a directory another user could control
#: is never retried (and raced) once a second, and the error is logged once.
#: Kept across fork(): a child has the same environment and the same directory.
_refused: set[str] = set()


class UntrustedDirectory(ImproperlyConfigured):
    """The statistics directory, or one above it, could be controlled by another
    user: nothing is read from it or written to it."""


class BadFile(Exception):
    """A file in the statistics directory that a reader skips: says what is wrong.

    *st* is the file's status when it was read, so a reader warns again only when
    the file changed."""

    def __init__(self, reason: str, st: os.stat_result | None = None) -> None:
        super().__init__(reason)
        self.st = st


#: The largest count a file may hold.
_MAX_COUNT = 1 << 63


def checked_count(value: Any, what: str) -> int:
    """*value* if it is a whole number a file may hold as a count, else :class:`BadFile`
    naming *what*."""
    if type(value) is not int or not 0 <= value < _MAX_COUNT:
        raise BadFile(f"{what} is {shown_briefly(value)}, not a whole number >= 0")
    return value


def shown_briefly(value: Any) -> str:
    """*value* as a warning about a bad file quotes it: a short plain value as it
    is, anything else by its type only (a file's content is not to be trusted)."""
    text = repr(value) if isinstance(value, str | int | float | bool | type(None)) else ""
    if text and len(text) <= 40:
        return text
    return f"a {type(value).__name__}"


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
    return _default_base() / project_key()


def _default_base() -> Path:
    """The per-user directory that holds one directory per project."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and _private_dir(Path(runtime)):
        return Path(runtime) / "django_poolbackend"
    return Path(tempfile.gettempdir()).absolute() / f"django_poolbackend-{os.getuid()}"


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
        pooled = _engines_seen[key] = is_pooled_engine(key)
    return pooled


def _private_dir(path: Path) -> bool:
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid()


# -- opening the directory safely ---------------------------------------------------


def _writers(mode: int) -> str:
    who = [name for bit, name in ((0o020, "its group"), (0o002, "other users")) if mode & bit]
    return " and ".join(who)


def _check_own(st: os.stat_result, path: str) -> None:
    """A directory the package owns: this user's, writable by this user only."""
    uid = os.getuid()
    if not stat.S_ISDIR(st.st_mode):
        raise UntrustedDirectory(f"The pool statistics path {path} is not a directory.")
    if st.st_uid != uid:
        raise UntrustedDirectory(
            f"The pool statistics directory {path} belongs to another user (uid "
            f"{st.st_uid}; this process runs as uid {uid}); set settings.{SETTING} "
            "to a directory of yours."
        )
    if st.st_mode & 0o022:
        raise UntrustedDirectory(
            f"The pool statistics directory {path} is writable by "
            f"{_writers(st.st_mode)} (mode {stat.S_IMODE(st.st_mode):04o}), so they "
            "could plant or replace files in it; only its owner may write to it: "
            f"run chmod go-w on it, or set settings.{SETTING} to a directory of yours."
        )


def _check_above(st: os.stat_result, path: str, directory: Path) -> None:
    """A directory above the package's own: root's or this user's, and writable
    by nobody else unless it is sticky (then others can't rename what is ours)."""
    uid = os.getuid()
    if not stat.S_ISDIR(st.st_mode):
        raise UntrustedDirectory(f"The pool statistics path {path} is not a directory.")
    if st.st_uid not in (0, uid):
        raise UntrustedDirectory(
            f"The pool statistics directory {directory} is under {path}, which belongs "
            f"to another user (uid {st.st_uid}), who could replace what is below it; "
            f"every directory above it must belong to root or to uid {uid}: set "
            f"settings.{SETTING} to a directory elsewhere."
        )
    if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
        raise UntrustedDirectory(
            f"The pool statistics directory {directory} is under {path}, which is "
            f"writable by {_writers(st.st_mode)} (mode {stat.S_IMODE(st.st_mode):04o}) "
            "without the sticky bit, so they could replace what is below it; set "
            f"settings.{SETTING} to a directory elsewhere, or run chmod go-w on it."
        )


def _owned_parts(directory: Path) -> int:
    """How many trailing components of *directory* the package owns: the
    project's directory, and in the default layout the per-user one above it."""
    return 2 if directory.parent == _default_base() else 1


def open_dir(directory: Path, *, create: bool) -> int:
    """A descriptor of *directory*, reached one checked component at a time.

    Directories above the package's own may be symlinks (``/var/run``) when root
    or this user owns the link; the package's own directories may not. A missing
    component is created ``0700`` when *create* is true (and is then the
    package's own); otherwise ``FileNotFoundError``. Raises
    :class:`UntrustedDirectory` for a directory that fails a check.
    """
    directory = Path(os.path.abspath(directory))
    parts = [p for p in directory.parts[1:]]
    owned = _owned_parts(directory)
    above, own = parts[: len(parts) - owned], parts[len(parts) - owned :]
    uid = os.getuid()
    fd = os.open("/", _DIR_FLAGS)
    shown = "/"
    try:
        _check_above(os.fstat(fd), shown, directory)
        todo = list(reversed(above))
        links = 0
        while todo:
            name = todo.pop()
            if name in ("", "."):
                continue
            made = False
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                if not create:
                    raise
                made = _mkdir(name, fd)
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            here = os.path.normpath(os.path.join(shown, name))
            if stat.S_ISLNK(st.st_mode):
                if st.st_uid not in (0, uid):
                    raise UntrustedDirectory(
                        f"The pool statistics directory {directory} is reached through "
                        f"{here}, a symlink of another user (uid {st.st_uid}); set "
                        f"settings.{SETTING} to a directory elsewhere."
                    )
                links += 1
                if links > _MAX_LINKS:
                    raise UntrustedDirectory(
                        f"The pool statistics directory {directory}: too many symlinks."
                    )
                target = os.readlink(name, dir_fd=fd)
                if target.startswith("/"):
                    os.close(fd)
                    fd = -1
                    fd = os.open("/", _DIR_FLAGS)
                    shown = "/"
                todo.extend(reversed([p for p in target.split("/") if p]))
                continue
            fd = _step(fd, name, here)
            shown = here
            if made:
                _check_own(os.fstat(fd), shown)
            else:
                _check_above(os.fstat(fd), shown, directory)
        for name in own:
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                if not create:
                    raise
                _mkdir(name, fd)
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            shown = os.path.join(shown, name)
            if stat.S_ISLNK(st.st_mode):
                raise UntrustedDirectory(
                    f"The pool statistics directory {shown} is a symlink; it must be a "
                    "real directory (a symlink can lead anywhere): remove it, or set "
                    f"settings.{SETTING} to a directory of yours."
                )
            fd = _step(fd, name, shown)
            _check_own(os.fstat(fd), shown)
        return fd
    except BaseException:
        if fd >= 0:
            os.close(fd)
        raise


def _mkdir(name: str, parent: int) -> bool:
    try:
        os.mkdir(name, 0o700, dir_fd=parent)
    except FileExistsError:
        return False  # made by someone else meanwhile: checked as found
    return True


def _step(parent: int, name: str, shown: str) -> int:
    """Open the directory *name* under *parent* (closed), refusing a symlink or a
    file swapped in since it was looked at (*shown* is its path, for the error)."""
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=parent)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            # O_NOFOLLOW | O_DIRECTORY: what was a directory a moment ago is now a
            # symlink or a file, which only someone racing this process does.
            raise UntrustedDirectory(
                f"The pool statistics directory {shown} was replaced by a symlink or a "
                "file while it was being opened; it must be a real directory of this "
                f"user: remove it, or set settings.{SETTING} to a directory of yours."
            ) from None
        raise
    finally:
        os.close(parent)


@contextmanager
def opened(directory: Path, *, create: bool) -> Iterator[int]:
    fd = open_dir(directory, create=create)
    try:
        yield fd
    finally:
        os.close(fd)


def _writer_dir(directory: Path) -> int | None:
    """A descriptor of *directory* (created if missing) for this process's own
    writes and drain checks, or None when statistics are off in this process.

    A directory refused as unsafe turns them off for good in this process, with
    one logged error: nothing is written there, and nothing anywhere else instead.
    Any other failure (a full disk, a directory removed meanwhile) propagates, and
    the next tick tries again.
    """
    key = str(directory)
    if key in _refused:
        return None
    try:
        return open_dir(directory, create=True)
    except UntrustedDirectory as exc:
        _refused.add(key)
        logger.error(
            "Pool statistics are not published (manage.py poolstats and pooldrain "
            "won't see this process): %s Statistics stay off in this process (pid %d) "
            "until it is restarted with a safe directory.",
            exc,
            os.getpid(),
        )
        return None


def ensure_dir(directory: Path) -> Path:
    """Create *directory* (and what is missing above it) ``0700`` and check it and
    every directory above it (see :func:`open_dir`); raise
    :class:`UntrustedDirectory` if one fails."""
    with opened(directory, create=True):
        pass
    return directory


def _write_json(dirfd: int, name: str, data: Any) -> None:
    tmp = f".tmp-{os.getpid()}-{secrets.token_hex(6)}.json"
    fd = os.open(
        tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC, 0o600, dir_fd=dirfd
    )
    try:
        with os.fdopen(fd, "w") as f:
            # dumps(), not dump(): dump() takes json's pure-Python encoder, whose
            # closures leave ~30 objects of cyclic garbage per snapshot, written from
            # the maintenance thread of every process (Django's
            # test_release_memory_without_garbage_collection caught it); dumps() takes
            # the C encoder, which leaves none.
            f.write(json.dumps(data, separators=(",", ":")))
        os.replace(tmp, name, src_dir_fd=dirfd, dst_dir_fd=dirfd)
    except BaseException:
        try:
            os.unlink(tmp, dir_fd=dirfd)
        except OSError:
            pass
        raise


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number a snapshot can hold")


def read_json(dirfd: int, name: str) -> tuple[Any, os.stat_result]:
    """The parsed content of the regular file *name*; :class:`BadFile` if it is
    anything else, too large, or not JSON. ``FileNotFoundError`` if it is gone.

    Looked at before it is opened, so a FIFO or a device is never opened at all;
    then opened with ``O_NOFOLLOW | O_NONBLOCK`` and looked at again, so one
    swapped in meanwhile neither leads elsewhere nor blocks. At most
    ``MAX_FILE_BYTES`` are read, whatever the file claims its size is.
    """
    st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
    _check_regular(st)
    try:
        fd = os.open(name, _READ_FLAGS, dir_fd=dirfd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise BadFile("it is a symlink", st) from None
        if isinstance(exc, FileNotFoundError):
            raise
        raise BadFile(f"it can't be opened ({exc.strerror})", st) from None
    try:
        st = os.fstat(fd)
        _check_regular(st)
        data = b""
        while len(data) <= MAX_FILE_BYTES:
            chunk = os.read(fd, MAX_FILE_BYTES + 1 - len(data))
            if not chunk:
                break
            data += chunk
        if len(data) > MAX_FILE_BYTES:
            raise BadFile(f"it is more than the {MAX_FILE_BYTES} bytes allowed", st)
    finally:
        os.close(fd)
    try:
        return json.loads(data, parse_constant=_no_constant), st
    except RecursionError:
        raise BadFile("it nests too deeply", st) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadFile(f"it is not valid JSON ({exc})", st) from None


def _check_regular(st: os.stat_result) -> None:
    if stat.S_ISLNK(st.st_mode):
        raise BadFile("it is a symlink", st)
    if not stat.S_ISREG(st.st_mode):
        raise BadFile("it is not a regular file", st)
    if st.st_size > MAX_FILE_BYTES:
        raise BadFile(f"it is {st.st_size} bytes, more than the {MAX_FILE_BYTES} allowed", st)


# -- writing (in each process with a pool) ---------------------------------------


def attach(pool: Pool) -> None:
    """Have *pool* publish and watch for drains; called when the pool is made.

    Reads the current drain generation now, so a drain requested before this pool
    existed is not applied to its fresh connections, and one requested after is.
    """
    process.add_fork_hook(_after_fork)
    process.add_retire_hook(_retired)
    process.add_exit_hook(_exited)
    try:
        dirfd = _writer_dir(stats_dir())
        if dirfd is not None:
            try:
                context = pool.context
                context.drain_generation, context.drain_seen = _read_generation(dirfd, pool.name)
            finally:
                os.close(dirfd)
    except Exception as exc:
        _report(exc)
    pool.tick_when_idle = False
    pool.on_tick = _on_tick


def _retired(pool: Pool) -> None:
    """The process retired *pool*: publish at once, so readers stop seeing it.
    Only a pool this module attached publishes (a bare core pool has no tick)."""
    if pool.on_tick is not None:
        publish(force=True)


def _exited(pool: Pool) -> None:
    """The process is exiting with its pools closed: its snapshot goes too."""
    if pool.on_tick is not None:
        withdraw()


def _on_tick(pool: Pool) -> None:
    # A tick because the pool went idle after a snapshot that showed it busy:
    # publish now, however recent that snapshot is. Cleared first, so a failure
    # can't make every later return tick again; publish() sets it again when it
    # writes a busy snapshot or, writing nothing, keeps the last one's.
    urgent = pool.tick_when_idle
    pool.tick_when_idle = False
    try:
        dirfd = _writer_dir(stats_dir())
        if dirfd is None:
            return  # statistics are off in this process (already logged)
        try:
            _check_drain(dirfd, pool)
            publish(dirfd=dirfd, urgent=urgent)
        finally:
            os.close(dirfd)
    except Exception as exc:
        _report(exc)


def _report(exc: Exception) -> None:
    """Log, as a warning, why this process could not publish this time (a full
    disk, a directory removed meanwhile): each distinct reason once. A directory
    refused for safety is logged by :func:`_writer_dir`, as an error."""
    message = f"{type(exc).__name__}: {exc}"
    if message in _reported or len(_reported) > 100:
        return
    _reported.add(message)
    logger.log(
        logging.ERROR if isinstance(exc, UntrustedDirectory) else logging.WARNING,
        "Pool statistics are not published (manage.py poolstats and pooldrain "
        "won't see this process): %s",
        message,
    )


def publish(
    directory: Path | None = None,
    *,
    force: bool = False,
    dirfd: int | None = None,
    urgent: bool = False,
) -> bool:
    """Write this process's snapshot if something changed; True if written.

    *urgent* skips the ``MIN_INTERVAL`` wait (a pool just went idle). Never
    blocks: a thread that finds another one publishing leaves it to it.
    """
    global _last, _last_at, _written, _written_pid

    if not _lock.acquire(blocking=False):
        if urgent:
            # The other publisher may have read the figures before this return:
            # let the next idle return try again.
            _rearm_idle()
        return False
    try:
        now = time.monotonic()
        pid = os.getpid()
        current = {
            alias: pool for alias, pool in list(process.pools.items()) if pool.pid == pid
        }
        if not (force or urgent) and now - _last_at < MIN_INTERVAL:
            _keep_armed(current)
            return False
        pools = {alias: pool_figures(pool) for alias, pool in current.items()}
        if not force and pools == _last and _written_pid == pid:
            # Nothing changed since the last snapshot (a return ticks before its
            # connection counts as returned): if that one showed connections in
            # use, the return that leaves the pool idle must still write again.
            _keep_armed(current)
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
            "start_time": start_time(pid),
            "written": time.time(),
            "written_monotonic": now,
            "pools": pools,
        }
        if dirfd is None:
            fd = _writer_dir(directory)
            if fd is None:
                return False  # statistics are off in this process
            try:
                _write_json(fd, f"{pid}.json", document)
            finally:
                os.close(fd)
        else:
            _write_json(dirfd, f"{pid}.json", document)
        _written = directory / f"{pid}.json"
        _written_pid = pid
        for alias, figures in pools.items():
            figures.pop("wait_histogram", None)
            # Busy in this snapshot: the return that leaves the pool idle ticks
            # (pool.py checks this flag only), so readers see it idle at once.
            current[alias].tick_when_idle = bool(figures["in_use"] or figures["waiting"])
        _last, _last_at = pools, now
        return True
    finally:
        _lock.release()


def _keep_armed(current: dict[str, Pool]) -> None:
    """Called with ``_lock`` held, when no snapshot is written: each pool ticks
    on going idle again exactly when the snapshot readers see showed it busy
    (``_on_tick`` cleared the flag before calling :func:`publish`)."""
    if _last is None or _written_pid != os.getpid():
        return
    for alias, pool in current.items():
        figures = _last.get(alias)
        if figures is not None and (figures.get("in_use") or figures.get("waiting")):
            pool.tick_when_idle = True


def _rearm_idle() -> None:
    for pool in list(process.pools.values()):
        pool.tick_when_idle = True


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
            with opened(_written.parent, create=False) as dirfd:
                os.unlink(_written.name, dir_fd=dirfd)
            removed = True
        except (OSError, ImproperlyConfigured):
            pass
    _written = None
    return removed


def _after_fork() -> None:
    """In a forked child: nothing of the parent's snapshot is ours."""
    global _lock, _drain_lock, _last, _last_at, _written, _written_pid
    _lock = threading.Lock()
    _drain_lock = threading.Lock()
    _last, _last_at, _written, _written_pid = None, -1e9, None, 0


def proc_stat(pid: int) -> list[bytes] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (Linux), the
    process state first; None where there is no such file or it cannot be read.

    The command name is in parentheses and may itself hold spaces and ")", so
    the fields start after the last ")" of the line.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        return data[data.rindex(b")") + 2 :].split()
    except (OSError, ValueError):
        return None


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), to tell a
    live process from a new one that reused a dead one's pid."""
    fields = proc_stat(pid)
    try:
        # The 22nd field of the line, counting the pid and the command name.
        return None if fields is None else int(fields[19])
    except (ValueError, IndexError):
        return None


# -- drains ----------------------------------------------------------------------


def _drain_file(alias: str) -> str:
    if re.fullmatch(r"[A-Za-z0-9_.-]{1,100}", alias) and not alias.startswith("."):
        return f"drain-{alias}.json"
    return "drain-" + hashlib.sha256(alias.encode()).hexdigest()[:16] + ".json"


def generation_of(data: Any, alias: str | None) -> tuple[str, int]:
    """The alias and generation a drain file holds (*alias*'s, when given), or
    :class:`BadFile` saying what is wrong with it."""
    if not isinstance(data, dict):
        raise BadFile(f"it is {shown_briefly(data)}, not an object")
    name = data.get("alias", alias)
    if not isinstance(name, str) or (alias is not None and name != alias):
        raise BadFile(f"its alias is {shown_briefly(name)}, not {alias!r}")
    return name, checked_count(data.get("generation", 0), "generation")


def _read_generation(dirfd: int, alias: str) -> tuple[int, int | None]:
    """(generation, file mtime in ns) of *alias*'s drain file; (0, None) if none
    (or if it is not a valid drain file: it is then ignored, with a warning)."""
    name = _drain_file(alias)
    try:
        data, st = read_json(dirfd, name)
        return generation_of(data, alias)[1], st.st_mtime_ns
    except FileNotFoundError:
        return 0, None
    except BadFile as exc:
        logger.warning("Pool statistics: ignoring the drain file %s (%s).", name, exc)
        return 0, None
    except OSError:
        return 0, None


def _check_drain(dirfd: int, pool: Pool) -> None:
    # One stat() a second; the file is read only when it changed.
    try:
        st = os.stat(_drain_file(pool.name), dir_fd=dirfd, follow_symlinks=False)
        mtime: int | None = st.st_mtime_ns
    except OSError:
        mtime = None
    if mtime == pool.context.drain_seen:
        return
    # A return and the maintenance thread may both get here: one drain only.
    if not _drain_lock.acquire(blocking=False):
        return
    try:
        generation, mtime = _read_generation(dirfd, pool.name)
        pool.context.drain_seen = mtime
        if generation > pool.context.drain_generation:
            pool.context.drain_generation = generation
            pool.drain()
    finally:
        _drain_lock.release()


def request_drain(alias: str, directory: Path | None = None) -> int:
    """Bump *alias*'s drain generation; every process notices within about a
    second. Returns the new generation."""
    import fcntl

    directory = directory or stats_dir()
    with opened(directory, create=True) as dirfd:
        try:
            lock = os.open(
                ".drain.lock",
                os.O_RDWR | os.O_CREAT | _NOFOLLOW | getattr(os, "O_NONBLOCK", 0) | _CLOEXEC,
                0o600,
                dir_fd=dirfd,
            )
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise UntrustedDirectory(
                    f"{directory / '.drain.lock'} is a symlink; it must be a regular "
                    "file (a symlink could lead to any file): remove it."
                ) from None
            raise
        try:
            st = os.fstat(lock)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid():
                raise UntrustedDirectory(
                    f"{directory / '.drain.lock'} is not a regular file of this user "
                    f"(uid {os.getuid()}); remove it."
                )
            if stat.S_IMODE(st.st_mode) != 0o600:
                os.fchmod(lock, 0o600)
            fcntl.flock(lock, fcntl.LOCK_EX)
            generation, _ = _read_generation(dirfd, alias)
            generation += 1
            _write_json(
                dirfd,
                _drain_file(alias),
                {"alias": alias, "generation": generation, "requested": time.time()},
            )
        finally:
            os.close(lock)  # and with it the flock
    return generation
