"""This process's pools, one per alias, and what happens to them at fork and exit.

Nothing here runs at import: the fork and exit hooks are installed when the first
pool is made (process-wide, so a forked child inherits them). The module offers
three events, a fork, a retired pool and the process's exit, that other modules
subscribe to (``publish`` does, to keep its snapshot current), so that holding the
pools does not depend on anything that reads them. What the pools' figures say is
:mod:`django_poolbackend.figures`'s business.
"""

from __future__ import annotations

import atexit
import hashlib
import hmac
import logging
import os
import secrets
import sys
import threading
import weakref
from collections.abc import Callable
from typing import Any

from .core import Pool
from .core.maintenance import Maintainer

logger = logging.getLogger("django_poolbackend")

#: alias -> the pool in use. Read without a lock on the checkout path.
pools: dict[str, Pool] = {}
_every: weakref.WeakSet[Pool] = weakref.WeakSet()
_lock = threading.Lock()
_fork_hooks: list[Callable[[], None]] = []
#: Called with a pool that was retired, and with one of the pools closed at exit.
_retire_hooks: list[Callable[[Pool], None]] = []
_exit_hooks: list[Callable[[Pool], None]] = []
_hooks_installed = False
_exit_hooks_pid = 0
#: This process's maintenance thread; threads do not survive fork(), so a child
#: starts its own with its first pool.
_maintainer: Maintainer | None = None
#: The app configs whose ready() had run when this process last looked.
_app_configs_seen: weakref.WeakSet[Any] = weakref.WeakSet()
#: The key of password digests: random, made once per process (a forked child keeps
#: its parent's, so the digests its inherited wrappers remember stay valid).
_DIGEST_KEY = secrets.token_bytes(32)


def password_digest(password: object) -> bytes:
    """What a pool key holds instead of the password: an HMAC-SHA256 of it.

    Keyed with a random per-process key, so a digest seen anywhere (a debugger, a
    dump of the pool key) cannot be checked against guessed passwords, while equal
    passwords still give equal digests within the process, and a corrected
    password a pool of its own.
    """
    text = password if isinstance(password, str | bytes) else str(password)
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    return hmac.new(_DIGEST_KEY, data, hashlib.sha256).digest()


def get(alias: str, key: Any, factory: Callable[[Any], Pool]) -> Pool:
    """The pool for *alias* whose settings match *key*, made if need be.

    A pool built for other settings (the test runner switched NAME, the time zone
    changed) is retired: idle connections close now, busy ones when returned.
    """
    with _lock:
        old = pools.get(alias)
        if old is not None and old.key == key and not old.closed and old.pid == os.getpid():
            return old
        if old is not None and old.pid != os.getpid():
            # A fork that bypassed os.fork() (and so our hook): the second guard.
            _abandon_inherited()
            old = None
        pool = factory(key)
        pools[alias] = pool
        _every.add(pool)
        _install_hooks()
        _maintainer_here().add(pool)
    logger.info(
        "Pool %r: created in process %d (max_size=%d).", alias, pool.pid, pool.config.max_size
    )
    if old is not None:
        logger.info("Pool %r: the previous pool is retired (its settings changed).", alias)
        old.close()
    return pool


def add_fork_hook(hook: Callable[[], None]) -> None:
    """Run *hook* in a forked child, after the inherited pools are abandoned."""
    if hook not in _fork_hooks:
        _fork_hooks.append(hook)


def add_retire_hook(hook: Callable[[Pool], None]) -> None:
    """Run *hook* with a pool after :func:`retire` closed it."""
    if hook not in _retire_hooks:
        _retire_hooks.append(hook)


def add_exit_hook(hook: Callable[[Pool], None]) -> None:
    """Run *hook* once :func:`close_all` closed this process's pools, with one of
    them (the hook is about the process, the pool says which layer made it)."""
    if hook not in _exit_hooks:
        _exit_hooks.append(hook)


def _install_hooks() -> None:
    """Called with the lock held when a pool is made."""
    global _hooks_installed, _exit_hooks_pid
    if not _hooks_installed:
        _hooks_installed = True
        os.register_at_fork(
            before=_before_fork,
            after_in_parent=_after_fork_in_parent,
            after_in_child=_after_fork_in_child,
        )
        # Inherited by forked children, so installed once.
        atexit.register(close_all)
        from django.apps import apps
        from django.core.signals import setting_changed

        if apps.ready:
            _app_configs_seen.update(apps.get_app_configs())
        setting_changed.connect(_installed_apps_changed, weak=False)
    pid = os.getpid()
    if _exit_hooks_pid == pid:
        return
    _exit_hooks_pid = pid
    # multiprocessing's children end with os._exit(), which skips atexit; its own
    # exit finalizers still run. Registering in a parent too is harmless:
    # close_all() is idempotent.
    util = sys.modules.get("multiprocessing.util")
    if util is not None:
        util.Finalize(None, close_all, exitpriority=10)
    # Celery's prefork children (billiard) skip even those finalizers; Celery
    # announces their end with a signal, in the child, just before os._exit().
    signals = sys.modules.get("celery.signals")
    if signals is not None:
        signals.worker_process_shutdown.connect(_close_all_receiver, weak=False)


def _maintainer_here() -> Maintainer:
    global _maintainer
    if _maintainer is None:
        _maintainer = Maintainer()
    return _maintainer


def _close_all_receiver(*args: Any, **kwargs: Any) -> None:
    close_all()


def retire(alias: str) -> None:
    with _lock:
        pool = pools.pop(alias, None)
    if pool is not None:
        logger.info(
            "Pool %r: retired (idle connections close now, busy ones when returned).", alias
        )
        pool.close()
        _notify(_retire_hooks, pool)


def _installed_apps_changed(*, setting: str, **kwargs: Any) -> None:
    """INSTALLED_APPS changed (``override_settings``, ``modify_settings``).

    Apps installed so run ``ready()``, which sets up connections: the ones wrappers
    hold, and through ``connection_created`` the ones opened from then on
    (``django.contrib.postgres`` registers its hstore and citext adapters so); never
    one idle in a pool. Retiring the pools makes every connection handed out from then
    on one they have seen, as with the stock engine. A test case's ``available_apps``
    only narrows the registry (the same app configs, no ``ready()``): nothing to do.
    """
    if setting != "INSTALLED_APPS":
        return
    from django.apps import apps

    configs = apps.get_app_configs() if apps.ready else []
    fresh = not apps.ready or any(config not in _app_configs_seen for config in configs)
    _app_configs_seen.update(configs)
    if fresh:
        for alias in list(pools):
            retire(alias)


def close_all() -> None:
    """Close every connection this process opened, busy ones included (exit)."""
    if _maintainer is not None:
        _maintainer.stop()
    with _lock:
        current = list(pools.values())
        pools.clear()
    for pool in current:
        pool.close(everything=True)
    if current:
        _notify(_exit_hooks, current[0])


def _notify(hooks: list[Callable[[Pool], None]], pool: Pool) -> None:
    for hook in list(hooks):
        try:
            hook(pool)
        except Exception:
            pass  # what others do with the news never stands in the way of closing


def _before_fork() -> None:
    # No thread of ours runs across fork(): the child inherits no half-done
    # maintenance, and Python (3.12+) has no reason to warn about threads.
    if _maintainer is not None:
        _maintainer.pause()


def _after_fork_in_parent() -> None:
    if _maintainer is not None:
        _maintainer.resume()


def _after_fork_in_child() -> None:
    global _lock, _maintainer
    # The parent may have forked while another thread held this lock.
    _lock = threading.Lock()
    _maintainer = None
    _abandon_inherited()


def _abandon_inherited() -> None:
    """Forget the parent's pools and connections; takes no lock, does no I/O on them."""
    pools.clear()
    for pool in list(_every):
        pool.abandon()
    for hook in _fork_hooks:
        hook()
