"""Snapshots of every process's pools, so one process can show them all.

Each process that has a pool writes ``<pid>.json`` into a directory shared by the
processes serving the same settings (all of a host's Gunicorn workers):
``manage.py poolstats`` (through :mod:`django_poolbackend.snapshots`, which sums
them up) and the Prometheus collector read them. Files, not a
socket or shared memory, because they need no server, survive nothing (a dead
process's file is dropped by the next reader) and work across any process model;
``prometheus_client``'s multiprocess mode works the same way.

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
back is validated field by field: a reader skips a bad file with one warning
naming it and shows every other process.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import math
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

from .core import Pool
from .core.stats import BOUNDS_MS

logger = logging.getLogger("django_poolbackend")

SETTING = "DJANGO_POOLBACKEND_STATS_DIR"
#: Snapshot format; readers skip files of another one.
FORMAT = 1
#: A process writes at most this often, however many pools tick.
MIN_INTERVAL = 0.5
#: Temporary files older than this belong to a writer that died mid-write.
_TMP_MAX_AGE = 60.0
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
#: (name, inode, mtime, size) of the bad files a reader already warned about, so
#: poolstats --watch and each Prometheus scrape do not repeat the warning.
_bad_seen: set[tuple[str, int, int, int]] = set()


class UntrustedDirectory(ImproperlyConfigured):
    """The statistics directory, or one above it, could be controlled by another
    user: nothing is read from it or written to it."""


class _BadFile(Exception):
    """A file in the statistics directory that a reader skips: says what is wrong.

    *st* is the file's status when it was read, so a reader warns again only when
    the file changed."""

    def __init__(self, reason: str, st: os.stat_result | None = None) -> None:
        super().__init__(reason)
        self.st = st


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
        from .aliases import is_pooled_engine

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
def _opened(directory: Path, *, create: bool) -> Iterator[int]:
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
    with _opened(directory, create=True):
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


def _read_json(dirfd: int, name: str) -> tuple[Any, os.stat_result]:
    """The parsed content of the regular file *name*; :class:`_BadFile` if it is
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
            raise _BadFile("it is a symlink", st) from None
        if isinstance(exc, FileNotFoundError):
            raise
        raise _BadFile(f"it can't be opened ({exc.strerror})", st) from None
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
            raise _BadFile(f"it is more than the {MAX_FILE_BYTES} bytes allowed", st)
    finally:
        os.close(fd)
    try:
        return json.loads(data, parse_constant=_no_constant), st
    except RecursionError:
        raise _BadFile("it nests too deeply", st) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise _BadFile(f"it is not valid JSON ({exc})", st) from None


def _check_regular(st: os.stat_result) -> None:
    if stat.S_ISLNK(st.st_mode):
        raise _BadFile("it is a symlink", st)
    if not stat.S_ISREG(st.st_mode):
        raise _BadFile("it is not a regular file", st)
    if st.st_size > MAX_FILE_BYTES:
        raise _BadFile(f"it is {st.st_size} bytes, more than the {MAX_FILE_BYTES} allowed", st)


def _warn_bad(
    directory: Path, name: str, st: os.stat_result | None, reason: str, what: str = "snapshot"
) -> None:
    """Warn once about the bad file *name*: again only when it changed."""
    key = (name, st.st_ino, st.st_mtime_ns, st.st_size) if st is not None else (name, 0, 0, 0)
    if key in _bad_seen:
        return
    if len(_bad_seen) > 1000:
        _bad_seen.clear()
    _bad_seen.add(key)
    logger.warning(
        "Pool statistics: skipping unreadable %s %s (%s).", what, directory / name, reason
    )


# -- what a reader accepts ---------------------------------------------------------

#: Figures that are non-negative integers (gauges, counters, settings).
_COUNTS = frozenset(
    {
        "size", "idle", "in_use", "waiting", "requests", "checkouts", "waits",
        "timeouts", "rejected", "connects", "connect_errors", "connect_backoffs",
        "closed", "pings", "ping_failures", "resets", "leaks", "drains",
        "drain_pending", "drain_generation", "min_size", "max_size",
    }
)  # fmt: skip
_STRINGS = frozenset({"alias", "vendor", "host", "port", "database", "user"})
_TIMINGS = frozenset({"wait_ms", "hold_ms", "connect_ms"})
_MAX_COUNT = 1 << 63
_NBUCKETS = len(BOUNDS_MS) + 1


def _count(value: Any, what: str) -> int:
    if type(value) is not int or not 0 <= value < _MAX_COUNT:
        raise _BadFile(f"{what} is {_show(value)}, not a whole number >= 0")
    return value


def _number(value: Any, what: str) -> float:
    if type(value) not in (int, float) or not math.isfinite(value) or value < 0:
        raise _BadFile(f"{what} is {_show(value)}, not a finite number >= 0")
    return float(value)


def _show(value: Any) -> str:
    text = repr(value) if isinstance(value, str | int | float | bool | type(None)) else ""
    if text and len(text) <= 40:
        return text
    return f"a {type(value).__name__}"


def _plain(value: Any, depth: int = 3) -> bool:
    """A JSON value shallow enough to print again (a setting's value)."""
    if value is None or isinstance(value, bool | int | str):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if depth and isinstance(value, list):
        return all(_plain(v, depth - 1) for v in value)
    if depth and isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v, depth - 1) for k, v in value.items())
    return False


def _check_figures(alias: str, figures: Any, pid: int) -> None:
    where = f"pools[{alias!r}]"
    if not isinstance(figures, dict):
        raise _BadFile(f"{where} is {_show(figures)}, not an object")
    if figures.get("alias", alias) != alias:
        raise _BadFile(f"{where}['alias'] is {_show(figures['alias'])}, not {alias!r}")
    if figures.get("pid", pid) != pid or type(figures.get("pid", pid)) is not int:
        raise _BadFile(f"{where}['pid'] is {_show(figures['pid'])}, not {pid}")
    for key, value in figures.items():
        what = f"{where}[{key!r}]"
        if key in _COUNTS:
            _count(value, what)
        elif key in _STRINGS:
            if not isinstance(value, str):
                raise _BadFile(f"{what} is {_show(value)}, not a string")
        elif key in _TIMINGS:
            if not isinstance(value, dict):
                raise _BadFile(f"{what} is {_show(value)}, not an object")
            for part, part_value in value.items():
                if part == "count":
                    _count(part_value, f"{what}['count']")
                else:
                    _number(part_value, f"{what}[{part!r}]")
        elif key == "closed_by_reason":
            if not isinstance(value, dict):
                raise _BadFile(f"{what} is {_show(value)}, not an object")
            for reason, count in value.items():
                _count(count, f"{what}[{reason!r}]")
        elif key == "wait_histogram":
            _check_histogram(value, what)
        elif not _plain(value):
            raise _BadFile(f"{what} is not a plain value")


def _check_histogram(value: Any, what: str) -> None:
    if not isinstance(value, dict):
        raise _BadFile(f"{what} is {_show(value)}, not an object")
    buckets = value.get("buckets", [])
    if not isinstance(buckets, list) or len(buckets) > _NBUCKETS:
        raise _BadFile(f"{what}['buckets'] is not a list of at most {_NBUCKETS} pairs")
    for pair in buckets:
        if (
            not isinstance(pair, list)
            or len(pair) != 2
            or type(pair[0]) is not int
            or not 0 <= pair[0] < _NBUCKETS
        ):
            raise _BadFile(f"{what}['buckets'] holds {_show(pair)}, not [bucket, count]")
        _count(pair[1], f"{what}['buckets'] count")
    for key in ("zeros", "count"):
        if key in value:
            _count(value[key], f"{what}[{key!r}]")
    for key in ("sum_ms", "max_ms"):
        if key in value:
            _number(value[key], f"{what}[{key!r}]")


def _check_snapshot(document: Any, pid: int) -> bool:
    """Whether *document* is a snapshot of this format; :class:`_BadFile` saying
    what is wrong if it claims to be one and is not."""
    if not isinstance(document, dict):
        raise _BadFile(f"it is {_show(document)}, not an object")
    if document.get("format") != FORMAT:
        return False  # another version's: not ours to judge
    if document.get("pid") != pid or type(document.get("pid")) is not int:
        raise _BadFile(f"its pid is {_show(document.get('pid'))}, not the {pid} of its name")
    started = document.get("start_time")
    if started is not None:
        _count(started, "start_time")
    for key in ("written", "written_monotonic"):
        if key in document:
            _number(document[key], key)
    pools = document.get("pools")
    if not isinstance(pools, dict):
        raise _BadFile(f"pools is {_show(pools)}, not an object")
    for alias, figures in pools.items():
        _check_figures(alias, figures, pid)
    return True


# -- writing (in each process with a pool) ---------------------------------------


def attach(pool: Pool) -> None:
    """Have *pool* publish and watch for drains; called when the pool is made.

    Reads the current drain generation now, so a drain requested before this pool
    existed is not applied to its fresh connections, and one requested after is.
    """
    from . import registry

    registry.add_fork_hook(_after_fork)
    registry.add_retire_hook(_retired)
    registry.add_exit_hook(_exited)
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
    """The registry retired *pool*: publish at once, so readers stop seeing it.
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
    from . import registry

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
            alias: pool for alias, pool in list(registry.pools.items()) if pool.pid == pid
        }
        if not (force or urgent) and now - _last_at < MIN_INTERVAL:
            _keep_armed(current)
            return False
        pools = {alias: registry.pool_figures(pool) for alias, pool in current.items()}
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
            "start_time": _start_time(pid),
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
    from . import registry

    for pool in list(registry.pools.values()):
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
            with _opened(_written.parent, create=False) as dirfd:
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


def _proc_stat(pid: int) -> list[bytes] | None:
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


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), to tell a
    live process from a new one that reused a dead one's pid."""
    fields = _proc_stat(pid)
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


def _generation_of(data: Any, alias: str | None) -> tuple[str, int]:
    if not isinstance(data, dict):
        raise _BadFile(f"it is {_show(data)}, not an object")
    name = data.get("alias", alias)
    if not isinstance(name, str) or (alias is not None and name != alias):
        raise _BadFile(f"its alias is {_show(name)}, not {alias!r}")
    return name, _count(data.get("generation", 0), "generation")


def _read_generation(dirfd: int, alias: str) -> tuple[int, int | None]:
    """(generation, file mtime in ns) of *alias*'s drain file; (0, None) if none
    (or if it is not a valid drain file: it is then ignored, with a warning)."""
    name = _drain_file(alias)
    try:
        data, st = _read_json(dirfd, name)
        return _generation_of(data, alias)[1], st.st_mtime_ns
    except FileNotFoundError:
        return 0, None
    except _BadFile as exc:
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
    with _opened(directory, create=True) as dirfd:
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


def drain_generations(directory: Path | None = None) -> dict[str, int]:
    directory = directory or stats_dir()
    out: dict[str, int] = {}
    try:
        with _opened(directory, create=False) as dirfd:
            for name in os.listdir(dirfd):
                if not (name.startswith("drain-") and name.endswith(".json")):
                    continue
                st = None
                try:
                    data, st = _read_json(dirfd, name)
                    alias, generation = _generation_of(data, None)
                except FileNotFoundError:
                    continue
                except _BadFile as exc:
                    _warn_bad(directory, name, exc.st or st, str(exc), "drain file")
                    continue
                out[alias] = generation
    except FileNotFoundError:
        pass
    return out


# -- reading (poolstats, the Prometheus collector) --------------------------------

_SNAPSHOT_NAME = re.compile(r"([0-9]{1,10})\.json")


def read_snapshots(directory: Path | None = None, *, clean: bool = True) -> list[dict[str, Any]]:
    """Every live process's snapshot, oldest pid first, each with ``age`` (seconds).

    Snapshots of processes that are gone (or whose pid now belongs to another
    process) are skipped and, with *clean*, deleted. A file that is not a valid
    snapshot is skipped with a warning naming it. Raises
    :class:`UntrustedDirectory` for a directory that fails the checks.
    """
    directory = directory or stats_dir()
    try:
        with _opened(directory, create=False) as dirfd:
            return _read_all(directory, dirfd, clean)
    except FileNotFoundError:
        return []


def _read_all(directory: Path, dirfd: int, clean: bool) -> list[dict[str, Any]]:
    now_wall, now_mono = time.time(), time.monotonic()
    out = []
    for name in os.listdir(dirfd):
        if name.startswith(".tmp-"):
            if clean:
                _remove_if_old(dirfd, name, now_wall)
            continue
        match = _SNAPSHOT_NAME.fullmatch(name)
        if match is None:
            continue
        pid = int(match.group(1))
        if not _alive(pid):
            if clean:
                _unlink(dirfd, name)
            continue
        st = None
        try:
            document, st = _read_json(dirfd, name)
            if not _check_snapshot(document, pid):
                continue
        except FileNotFoundError:
            continue  # its process just exited
        except _BadFile as exc:
            _warn_bad(directory, name, exc.st or st, str(exc))
            continue
        started = document.get("start_time")
        if started is not None and _start_time(pid) not in (None, started):
            if clean:
                _unlink(dirfd, name)  # the pid was reused
            continue
        written = document.get("written_monotonic")
        if written is not None and written <= now_mono:
            document["age"] = now_mono - written
        else:
            document["age"] = max(0.0, now_wall - float(document.get("written", now_wall)))
        out.append(document)
    out.sort(key=lambda d: d["pid"])
    return out


def _alive(pid: int) -> bool:
    if not 0 < pid < 1 << 31:
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
    # Where its state cannot be read, the signal's answer stands.
    fields = _proc_stat(pid)
    return not fields or fields[0] != b"Z"


def _unlink(dirfd: int, name: str) -> None:
    try:
        os.unlink(name, dir_fd=dirfd)
    except OSError:
        pass


def _remove_if_old(dirfd: int, name: str, now: float) -> None:
    try:
        if now - os.stat(name, dir_fd=dirfd, follow_symlinks=False).st_mtime > _TMP_MAX_AGE:
            os.unlink(name, dir_fd=dirfd)
    except OSError:
        pass
