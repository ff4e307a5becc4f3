"""Pooling for any Django ``DatabaseWrapper``, written once.

Compose it in front of a backend's wrapper::

    class DatabaseWrapper(PooledDatabaseWrapperMixin, base.DatabaseWrapper):
        pass

Django's connection life cycle is kept; only its two ends change. ``connect()``
checks a connection out of the process's pool instead of dialling the server, and
``_close()`` gives it back instead of hanging up. A physical connection is set up
once (autocommit, time zone, role, isolation level, ``connection_created``) when it
is opened, not at every checkout, so a checkout in steady state sends nothing to
the server.
"""

from __future__ import annotations

import copy
import logging
import os
import time
import weakref
from os import getpid
from typing import TYPE_CHECKING, Any

from django.core.exceptions import ImproperlyConfigured
from django.db import DEFAULT_DB_ALIAS
from django.db.backends.base.base import NO_DB_ALIAS
from django.db.backends.signals import connection_created
from django.utils.module_loading import import_string
from django.views.decorators.debug import sensitive_variables

from . import conf, drivers, publish, registry
from . import recorder as _recorder
from .core import Pool, Slot
from .core.pool import Owner, thread_token
from .errors import PoolClosed, PoolTimeout, TooManyRequests

logger = logging.getLogger("django_poolbackend")

_drivers: dict[str, drivers.Driver] = {}
#: The registry's dict itself (never rebound), one lookup closer for connect().
_pools = registry.pools
#: Never the value of a PASSWORD, so a new wrapper's first connect digests it.
_NO_PASSWORD = object()


if TYPE_CHECKING:
    # What the mixin is composed with, for the type checker only: at run time it
    # must stay a plain mixin, in front of whichever wrapper it pools.
    from django.db.backends.base.base import BaseDatabaseWrapper as _WrapperBase
else:
    _WrapperBase = object


class PooledDatabaseWrapperMixin(_WrapperBase):
    _dpb_slot: Slot | None = None
    #: Set when Django's own usability check failed on a pooled connection: it is
    #: discarded at its return instead of pooled (cleared there).
    _dpb_failed_check = False
    #: The pool whose remembered wrapper attributes this wrapper has applied.
    _dpb_synced: Pool | None = None
    #: The PASSWORD object last digested, and its digest (see connect()).
    _dpb_password: object = None
    _dpb_password_digest = b""
    #: What a checkout stores as its slot's owner: the thread_token() of the
    #: thread that made this wrapper (Django binds a wrapper to that thread), or
    #: None while the wrapper is shared between threads (inc_thread_sharing()).
    _dpb_owner: Owner | None = None

    def __init__(self, settings_dict: dict[str, Any], alias: str = DEFAULT_DB_ALIAS) -> None:
        settings_dict, config = conf.prepare(settings_dict, alias)
        super().__init__(settings_dict, alias)
        #: A PoolConfig, or the ImproperlyConfigured raised when a pool is needed.
        self._dpb_config = config
        self._dpb_pooled = alias != NO_DB_ALIAS
        database: Any = self.Database  # type: ignore[attr-defined]  # every concrete wrapper sets it
        module = database.__name__
        driver = _drivers.get(module)
        if driver is None:
            driver = _drivers.setdefault(module, drivers.for_module(database))
        self._dpb_driver = driver
        self._dpb_thread = self._dpb_owner = thread_token()
        self._dpb_password = _NO_PASSWORD

    @sensitive_variables("password")
    def _dpb_digest_password(self) -> bytes:
        """The pool-key digest of PASSWORD, remembered with the object it came from.

        The only frame on the checkout path with the password in a local; it is
        marked sensitive for Django's error reports, and nothing in it is expected
        to fail.
        """
        password = self.settings_dict["PASSWORD"]
        digest = registry.password_digest(password)
        self._dpb_password_digest = digest
        self._dpb_password = password
        return digest

    def inc_thread_sharing(self) -> None:
        """A connection shared between threads (LiveServerTestCase, a test that
        hands its connection to a thread) outlives any one of them: while shared,
        the pool never reclaims it when a thread ends."""
        super().inc_thread_sharing()
        self._dpb_owner = None
        slot = self._dpb_slot
        if slot is not None:
            slot.owner = None

    def dec_thread_sharing(self) -> None:
        """Sharing over: later checkouts belong to the wrapper's own thread again.
        The current one stays unowned until it is returned, since another thread
        may still be finishing with it."""
        super().dec_thread_sharing()
        if not self.allow_thread_sharing:
            self._dpb_owner = self._dpb_thread

    # -- checkout ---------------------------------------------------------------

    def connect(self) -> None:
        # Not @async_unsafe, unlike Django's: its one caller, ensure_connection(),
        # already checks, and so do get_new_connection(), the only I/O a checkout
        # can do, and Django's own connect(); the check costs a raised and caught
        # exception per call.
        if not self._dpb_pooled:
            # Django's connections for creating and dropping databases.
            return super().connect()
        if self._dpb_slot is not None:
            # connect() on a connected wrapper: give the old one back first.
            self._close()
        # What BaseDatabaseWrapper.connect() resets, in the same order.
        self.check_settings()
        # No local of this frame may hold the password when an error leaves it
        # (Django's debug page and error reporters show every frame's locals):
        # the settings dict is read into plain values and deleted before anything
        # here can fail, and the pool key holds a digest of the password.
        settings_dict = self.settings_dict
        self.in_atomic_block = False
        self.savepoint_ids = []
        self.atomic_blocks = []
        self.needs_rollback = False
        self.health_check_enabled = settings_dict["CONN_HEALTH_CHECKS"]
        max_age = settings_dict["CONN_MAX_AGE"]
        # CONN_MAX_AGE=0 (the default): any past instant does, without a clock read.
        self.close_at = None if max_age is None else time.monotonic() + max_age if max_age else 0.0
        self.closed_in_transaction = False
        self.errors_occurred = False
        self.health_check_done = True
        autocommit = settings_dict["AUTOCOMMIT"]

        # This alias's pool, for the settings as they are now (the test runner
        # renames NAME in place) and in this process (a fork that bypassed
        # os.fork() leaves an inherited pool behind).
        key = (
            settings_dict["NAME"],
            settings_dict["USER"],
            settings_dict["HOST"],
            settings_dict["PORT"],
            self.timezone_name,
            # A corrected password gets a pool of its own, so it does not inherit
            # the old pool's connect back-off. The digest is computed again only
            # when the password object changes.
            self._dpb_password_digest
            if settings_dict["PASSWORD"] is self._dpb_password
            else self._dpb_digest_password(),
        )
        del settings_dict
        pool = _pools.get(self.alias)
        if pool is None or pool.key != key or pool.pid != getpid():
            pool = registry.get(self.alias, key, self._dpb_new_pool)
        options = self.settings_dict["OPTIONS"]
        other_options = options is not pool.extra["options_of"] and options != pool.extra["options"]
        del options  # OPTIONS can hold secrets too (sslpassword, MySQL's password)
        if other_options:
            # Another wrapper of this alias with other OPTIONS (connection.copy()
            # and a changed isolation level, role, …): the pool's connections were
            # set up with the pool's, so this one gets a connection of its own,
            # outside the pool, exactly as the stock engine opens it.
            return super().connect()
        self.connection = None
        if _recorder.active:  # a debug-toolbar panel is recording somewhere
            slot = _recorder.checkout(self, pool)
        else:
            slot = pool.getconn(self._dpb_open)
        self._dpb_slot = slot
        # The thread this wrapper belongs to, so that the pool can reclaim the
        # connection if that thread ends holding it (None while shared).
        slot.owner = self._dpb_owner
        if self.connection is None:
            # Reused: set up when it was opened; only our side needs syncing.
            self.connection = slot.conn
            self.autocommit = autocommit
            if self._dpb_synced is not pool:
                self.__dict__.update(pool.extra.get("wrapper_state", ()))
                self._dpb_synced = pool
            if slot.needs_init:
                # A "full" reset wiped the session: set it up again.
                slot.needs_init = False
                try:
                    self._dpb_initialise()
                except BaseException:
                    self._dpb_slot = None
                    self.connection = None
                    pool.putconn(slot, "init_failed")
                    raise
        elif "wrapper_state" not in pool.extra:
            self._dpb_remember_state(pool)
        self.run_on_commit = []

    def _dpb_remember_state(self, pool: Pool) -> None:
        pool.extra["wrapper_state"] = {
            name: self.__dict__[name]
            for name in self._dpb_driver.wrapper_attrs
            if name in self.__dict__
        }
        self._dpb_synced = pool
        # Asked once per pool, on its first connection (one round trip on
        # PostgreSQL, none elsewhere); chunked_cursor() reads the answer.
        try:
            behind_proxy = self._dpb_driver.behind_proxy(self.connection)
        except Exception:
            behind_proxy = True  # can't tell: the answer that can't break a cursor
        pool.extra["behind_proxy"] = behind_proxy

    def _dpb_new_pool(self, key: Any) -> Pool:
        config = self._dpb_config
        if isinstance(config, ImproperlyConfigured):
            raise ImproperlyConfigured(str(config))
        from .checks import log_settings_warnings

        # W001/W006 also reach the log of a project that never runs the checks
        # (once per process and alias; no I/O beyond the log line).
        log_settings_warnings(self.alias, self.settings_dict)
        registry.add_fork_hook(_forget_inherited_connections)
        pool = Pool(
            config,
            self._dpb_driver,
            name=self.alias,
            key=key,
            timeout_error=PoolTimeout,
            closed_error=PoolClosed,
            rejected_error=TooManyRequests,
            hint=_ExhaustionHint(self.alias, self.settings_dict),
        )
        pool.background_opener = _background_opener(
            type(self), copy.deepcopy(self.settings_dict), self.alias, pool
        )
        pool.extra["identity"] = registry.identity(self.vendor, self.settings_dict)
        # The OPTIONS the pool's connections are opened with: the object (the usual
        # case, every thread's wrapper shares the settings dict) and its value.
        pool.extra["options_of"] = self.settings_dict["OPTIONS"]
        pool.extra["options"] = copy.deepcopy(self.settings_dict["OPTIONS"])
        publish.attach(pool)
        return pool

    def _dpb_open(self) -> Any:
        """The pool's opener: one new physical connection, fully set up."""
        try:
            conn = self.get_new_connection(self._dpb_params())
        except Exception as exc:
            # The frames below this one (Django's get_connection_params() and
            # get_new_connection(), the connect_params hook, the driver's connect)
            # hold the connection parameters, password included, in their locals,
            # and Django's debug page and error reporters show every frame's
            # locals. They are cut from the error (and from what it chains to);
            # its type and message, all a caller needs, stay.
            raise _without_inner_frames(exc)  # noqa: B904 - the same error, raised again
        self.connection = conn
        try:
            self._dpb_initialise()
        except BaseException:
            self.connection = None
            self._dpb_driver.close(conn)
            raise
        return conn

    def get_connection_params(self) -> dict[str, Any]:
        """PostgreSQL sessions of a pool are named ``dpb:<alias>:<pid>`` unless the
        user named them (OPTIONS or ``PGAPPNAME``), so ``manage.py poolstats
        --server`` can tell which process holds which session."""
        params: dict[str, Any] = super().get_connection_params()
        if (
            self.vendor == "postgresql"
            and self._dpb_pooled
            and not params.get("application_name")
            and "PGAPPNAME" not in os.environ
            and not params.get("service")
        ):
            params["application_name"] = application_name(self.alias, os.getpid())
        return params

    def _dpb_params(self) -> dict[str, Any]:
        """Django's connection parameters, through the ``connect_params`` hook."""
        params = self.get_connection_params()
        config = self._dpb_config
        hook = None if isinstance(config, ImproperlyConfigured) else config.connect_params
        if hook is not None:
            function = import_string(hook) if isinstance(hook, str) else hook
            params = conf.checked_params(self.alias, hook, function(self.alias, params))
        return params

    def _dpb_initialise(self) -> None:
        self.set_autocommit(self.settings_dict["AUTOCOMMIT"])
        self.init_connection_state()
        connection_created.send(sender=self.__class__, connection=self)

    # -- checkin ----------------------------------------------------------------

    def _close(self) -> None:
        slot = self._dpb_slot
        if slot is None:
            super()._close()  # type: ignore[misc]  # not in django-stubs
            return
        self._dpb_slot = None
        discard: str | None
        if self._dpb_failed_check:
            self._dpb_failed_check = False
            discard, reset = "broken", False
        else:
            discard, reset = self._dpb_clean(slot)
        slot.pool.putconn(slot, discard, reset)
        if discard is None:
            # The pool owns it now. close() would drop the reference anyway; a bare
            # _close() (Django's tests emulate a server disconnect this way) must not
            # leave one behind that a later stock _close() or cursor() would use.
            self.connection = None
        if _recorder.active:  # a debug-toolbar panel is recording somewhere
            _recorder.checkin(self, discard, reset)

    def chunked_cursor(self) -> Any:
        """``QuerySet.iterator()`` outside a transaction declares a cursor WITH
        HOLD, which lives in one server session. Behind a proxy that hands server
        sessions out per transaction (PgBouncer in transaction mode) the next FETCH
        may reach another session ('cursor ... does not exist'), so there the rows
        come through a client-side cursor, as with DISABLE_SERVER_SIDE_CURSORS.
        Inside a transaction the server-side cursor stays: it lives and dies with
        the transaction, in one server session."""
        self.ensure_connection()
        slot = self._dpb_slot
        if (
            slot is not None
            and slot.pool.extra.get("behind_proxy")
            and self._dpb_driver.autocommit(self.connection)
        ):
            return self.cursor()
        return super().chunked_cursor()

    def is_usable(self) -> bool:
        if self.connection is None:
            # Given back by a bare _close(); mysqlclient's check would crash on None.
            return False
        usable: bool = super().is_usable()
        if not usable and self._dpb_slot is not None:
            # Django closes a connection that fails its own check (CONN_HEALTH_CHECKS,
            # close_if_unusable_or_obsolete). mysqlclient's client-side state can't
            # tell that it is dead, so remember the verdict: it must not be pooled.
            self._dpb_failed_check = True
        return usable

    def _dpb_clean(self, slot: Slot) -> tuple[str | None, bool]:
        """Make the connection fit for the next borrower, or say why it isn't.

        Returns (reason to discard or None, whether a round trip was spent).
        """
        if self.in_atomic_block:
            # Django keeps its reference to a connection closed inside atomic(),
            # so it must never serve anyone else.
            return "closed_in_transaction", False
        conn = slot.conn
        if (
            self.autocommit
            and not self.errors_occurred
            and not self.needs_rollback
            and slot.pool.config.reset == "rollback"
            and self._dpb_driver.idle_in_autocommit(conn)
            and self.settings_dict["AUTOCOMMIT"]
        ):
            # Every request's return: no transaction, autocommit everywhere,
            # nothing to reset. What follows would conclude the same, slower.
            return None, False
        state = self._dpb_driver.state(conn)
        if state == drivers.BROKEN:
            return "broken", False
        if state == drivers.BUSY:
            # Mid-COPY, a result not read to its end, a pipeline: a rollback would
            # wait on the driver's lock forever or fail out of sync. Closing is
            # what the stock engine does, and it takes no lock.
            return "busy", False
        # The driver's own autocommit flag, client-side (mysqlclient reads it from
        # the server's last reply): unlike Django's view, it also sees a raw
        # "SET autocommit = 0" or psycopg's attribute set behind Django's back.
        driver_autocommit = self._dpb_driver.autocommit(conn)
        if state is None:
            # The driver can't tell without a round trip: trust Django's view.
            state = (
                drivers.IN_TRANSACTION
                if not (self.autocommit and driver_autocommit)
                or self.needs_rollback
                or self.errors_occurred
                else drivers.IDLE
            )
        reset = False
        try:
            autocommit = self.settings_dict["AUTOCOMMIT"]
            if state == drivers.IN_TRANSACTION:
                reset = True
                conn.rollback()
                if autocommit:
                    # With AUTOCOMMIT=False every return rolls back by design;
                    # otherwise the request left a transaction open or failed.
                    logger.warning(
                        "Pool %r: rolled back a transaction left open on a returned connection.",
                        self.alias,
                    )
            if self.autocommit != autocommit or driver_autocommit != autocommit:
                reset = True
                self._set_autocommit(autocommit)  # type: ignore[attr-defined]  # every vendor's wrapper has it
                self.autocommit = autocommit
            policy = slot.pool.config.reset
            if policy == "rollback":
                pass
            elif policy == "full":
                reset = True
                self._dpb_full_reset(conn)
                slot.needs_init = True
            else:
                reset = True
                if isinstance(policy, str):
                    policy = import_string(policy)
                policy(conn)
        except Exception as exc:
            # Only the exception's type: a driver's message can quote the session
            # (and so a secret); an import error's names the module to fix.
            logger.warning(
                "Pool %r: discarding a connection whose reset failed: %s",
                self.alias,
                f"{type(exc).__name__}: {exc}"
                if isinstance(exc, ImportError)
                else type(exc).__name__,
            )
            return "reset_failed", reset
        if self.errors_occurred and not self.is_usable():
            return "broken", reset
        return None, reset

    def _dpb_full_reset(self, conn: Any) -> None:
        """Wipe the session (``DISCARD ALL``, a MySQL connection reset); the
        connection's one-time set-up runs again at its next checkout."""
        full_reset = getattr(self._dpb_driver, "full_reset", None)
        if full_reset is None:
            raise NotImplementedError(f"reset='full' is not supported with {self._dpb_driver.name}")

        def params(credentials: bool = False) -> dict[str, Any]:
            # A reset that logs in again needs what a new connection would get
            # (connect_params: short-lived credentials); one that doesn't, only
            # Django's own connect options.
            return self._dpb_params() if credentials else self.get_connection_params()

        full_reset(conn, params)

    def __del__(self) -> None:
        # A wrapper dropped while holding a connection (a thread that ended without
        # closing it): hand the slot to the pool to close at its next checkout.
        # Nothing else is safe here, as this can run inside the pool's own lock.
        slot = self.__dict__.get("_dpb_slot")
        if slot is not None:
            slot.pool.orphan(slot)

    def _dpb_forget_inherited(self) -> None:
        """In a forked child: drop the parent's connection without a byte on it.

        A pooled one was abandoned with its pool already; anything else (a
        connection this wrapper opened outside the pool) is abandoned here.
        """
        conn = self.connection
        if conn is None:
            return
        if self._dpb_slot is None:
            self._dpb_driver.abandon(conn)
        self._dpb_slot = None
        self._dpb_failed_check = False
        self.connection = None
        # Whatever the parent was doing on it, this process was not.
        self.in_atomic_block = False
        self.atomic_blocks = []
        self.savepoint_ids = []
        self.needs_rollback = False
        self.closed_in_transaction = False
        self.run_on_commit = []

    # -- Django hooks that affect the whole pool ---------------------------------

    def close_pool(self) -> None:
        """Retire this alias's pool (Django calls it before cloning/dropping test DBs)."""
        registry.retire(self.alias)
        parent = getattr(super(), "close_pool", None)
        if parent is not None:
            parent()


_POOL_HINT = (
    "Raise POOL['max_size'] (within the server's connection limit) or "
    "POOL['timeout'], keep work that holds a connection short, or set "
    "POOL['leak_timeout'] to find code that holds one too long."
)


class _ExhaustionHint:
    """The advice a ``PoolTimeout`` ends with, read from the alias's settings when
    the checkout fails (the core pool names no Django setting).

    A class rather than a closure: a closure's variables show among its frame's
    locals, and the settings hold the password.
    """

    __slots__ = ("alias", "settings_dict")

    def __init__(self, alias: str, settings_dict: dict[str, Any]) -> None:
        self.alias = alias
        self.settings_dict = settings_dict

    def __call__(self) -> str:
        max_age = self.settings_dict.get("CONN_MAX_AGE", 0)
        if max_age == 0:
            return _POOL_HINT
        # The most common cause: every thread keeps its connection between
        # requests, so a pool smaller than the thread count runs dry.
        return (
            f"DATABASES[{self.alias!r}]['CONN_MAX_AGE'] is {max_age!r}, so each thread "
            "keeps its connection out of the pool between requests, busy or not: "
            "set it to 0, so that connections go back to the pool at the end of "
            "each request (the pool keeps them open). " + _POOL_HINT
        )


def _without_inner_frames(exc: BaseException) -> BaseException:
    """*exc* with no traceback below the frame that raises it again, and none on
    the exceptions it chains to (their frames are the same kind)."""
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        link.__traceback__ = None
        cause = link.__cause__
        if cause is not None and id(cause) not in seen:
            _without_inner_frames(cause)
        link = link.__context__
    exc.add_note(
        "django_poolbackend: the frames below the pool's connect were removed from "
        "this traceback: their variables hold the connection parameters, the "
        "password among them."
    )
    return exc


def application_name(alias: str, pid: int) -> str:
    """``dpb:<alias>:<pid>``, within PostgreSQL's 63 bytes (a long alias is cut)."""
    tail = f":{pid}"
    return "dpb:" + alias.encode()[: 63 - 4 - len(tail)].decode(errors="ignore") + tail


def _forget_inherited_connections() -> None:
    """at-fork hook (child): the forking thread's Django wrappers still hold the
    parent's connections; the other threads' wrappers are gone with their threads."""
    from django.db import connections

    for wrapper in connections.all(initialized_only=True):
        if isinstance(wrapper, PooledDatabaseWrapperMixin):
            wrapper._dpb_forget_inherited()


def _background_opener(
    cls: type[PooledDatabaseWrapperMixin], settings_dict: dict[str, Any], alias: str, pool: Pool
) -> Any:
    """An opener for the maintenance thread, which has no wrapper of its own: a
    throwaway wrapper opens and sets up the connection exactly as a checkout would."""

    # Weak: the pool holds this opener, and a cycle would keep a retired pool
    # alive until the garbage collector runs.
    pool_ref = weakref.ref(pool)

    def open_one() -> Any:
        wrapper = cls(copy.deepcopy(settings_dict), alias)
        conn = wrapper._dpb_open()
        pool = pool_ref()
        if pool is not None and "wrapper_state" not in pool.extra:
            wrapper._dpb_remember_state(pool)
        wrapper.connection = None  # the pool owns it now
        return conn

    return open_one
