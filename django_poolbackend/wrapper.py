"""The mixin that pools any Django ``DatabaseWrapper``: Django's hooks only.

Compose it in front of a backend's wrapper::

    class DatabaseWrapper(PooledDatabaseWrapperMixin, base.DatabaseWrapper):
        pass

Django's connection life cycle is kept; only its two ends change. ``connect()``
checks a connection out of the process's pool instead of dialling the server, and
``_close()`` gives it back instead of hanging up. A physical connection is set up
once (autocommit, time zone, role, isolation level, ``connection_created``) when it
is opened, not at every checkout, so a checkout in steady state sends nothing to
the server. The steps these hooks take (open, set up, clean, reset) are in
:mod:`django_poolbackend.checkout`.
"""

from __future__ import annotations

import os
import time
from os import getpid
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.db import DEFAULT_DB_ALIAS
from django.db.backends.base.base import NO_DB_ALIAS
from django.views.decorators.debug import sensitive_variables

from . import drivers, process
from . import settings as pool_settings
from .checkout import PoolCheckout, _drivers, application_name
from .core.pool import Owner, thread_token
from .errors import PoolTimeout
from .release import TransactionRelease
from .toolbar import recorder as _recorder

#: The registry's dict itself (never rebound), one lookup closer for connect().
_pools = process.pools
#: Never the value of a PASSWORD, so a new wrapper's first connect digests it.
_NO_PASSWORD = object()


class PooledDatabaseWrapperMixin(TransactionRelease, PoolCheckout):
    """Pooling for the Django ``DatabaseWrapper`` it is composed in front of.

    It overrides only Django's own hooks (``connect()``, ``_close()``,
    ``is_usable()``, ``chunked_cursor()``, ``close_pool()``, the thread-sharing
    pair and ``get_connection_params()``). In transaction mode
    (``POOL["release"] = "transaction"``) a wrapper also takes over four more of
    Django's hooks, ``make_cursor()``, ``make_debug_cursor()``, ``set_autocommit()``
    and ``close_if_unusable_or_obsolete()``, on itself only
    (:meth:`~django_poolbackend.release.TransactionRelease._dpb_take_over_hooks`),
    so that the default mode pays nothing for them. Everything else it needs lives in
    attributes and methods named ``_dpb_*``: the prefix keeps them out of the way
    of the wrapper it is mixed into and of any other mixin, since the one
    instance carries Django's attributes, the backend's and ours. They are
    private to this package's checkout code. The few things other modules of
    the package need are public methods with the prefix ``pool_`` instead
    (:meth:`pool_connect_params`, :meth:`pool_open_connection`,
    :meth:`pool_note_recording` and :meth:`pool_take_recording`), and whether a
    backend is pooled at all is the class attribute :attr:`is_pooled_backend`,
    so a module can ask without importing this class.

    The ``_dpb_*`` names, by what they hold:

    - ``_dpb_config``: the alias's ``PoolConfig``, or the ``ImproperlyConfigured``
      raised when a pool is first needed;
    - ``_dpb_pooled``: False for Django's ``NO_DB_ALIAS`` wrappers, which create
      and drop databases and are never pooled;
    - ``_dpb_driver``: the per-driver operations (ping, transaction state, reset);
    - ``_dpb_slot``: the pool's slot of the connection checked out, or None;
    - ``_dpb_failed_check``: Django found the connection unusable, so it is
      closed at its return instead of pooled;
    - ``_dpb_synced``: the pool whose remembered wrapper attributes were applied;
    - ``_dpb_password`` and ``_dpb_password_digest``: the ``PASSWORD`` object last
      digested for the pool key, and its digest;
    - ``_dpb_thread`` and ``_dpb_owner``: the thread that made the wrapper, and
      the owner a checkout records (None while the wrapper is shared);
    - ``_dpb_recording`` (in the instance's ``__dict__`` only while a
      debug-toolbar panel records the checkout): where its return is noted;
    - the methods ``_dpb_initialise``, ``_dpb_clean``, ``_dpb_full_reset``,
      ``_dpb_new_pool``, ``_dpb_remember_state``, ``_dpb_digest_password`` and
      ``_dpb_forget_inherited`` are the steps of a checkout, a return and a fork;
      ``_dpb_open`` and ``_dpb_params`` are the old names of
      :meth:`pool_open_connection` and :meth:`pool_connect_params`;
    - the names of transaction-scoped release (``_dpb_release``, ``_dpb_pin``,
      ``_dpb_cursors``, …) are explained on
      :class:`~django_poolbackend.release.TransactionRelease`.
    """

    #: Whether this backend is pooled: read with ``getattr(cls,
    #: "is_pooled_backend", False)``, so nothing needs to import the mixin to ask.
    is_pooled_backend = True
    #: The PASSWORD object last digested, and its digest (see connect()).
    _dpb_password: object = None
    _dpb_password_digest = b""
    #: What a checkout stores as its slot's owner: the thread_token() of the
    #: thread that made this wrapper (Django binds a wrapper to that thread), or
    #: None while the wrapper is shared between threads (inc_thread_sharing()).
    _dpb_owner: Owner | None = None

    def __init__(self, settings_dict: dict[str, Any], alias: str = DEFAULT_DB_ALIAS) -> None:
        settings_dict, config = pool_settings.prepare(settings_dict, alias)
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
        # Transaction-scoped release, decided once per wrapper (a settings error
        # is raised at the first checkout instead).
        self._dpb_release = (
            self._dpb_pooled
            and not isinstance(config, ImproperlyConfigured)
            and config.release == "transaction"
        )
        if self._dpb_release:
            self._dpb_take_over_hooks()

    @sensitive_variables("password")
    def _dpb_digest_password(self) -> bytes:
        """The pool-key digest of PASSWORD, remembered with the object it came from.

        The only frame on the checkout path with the password in a local; it is
        marked sensitive for Django's error reports, and nothing in it is expected
        to fail.
        """
        password = self.settings_dict["PASSWORD"]
        digest = process.password_digest(password)
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
            pool = process.get(self.alias, key, self._dpb_new_pool)
        options = self.settings_dict["OPTIONS"]
        other_options = options is not pool.context.options_of and options != pool.context.options
        del options  # OPTIONS can hold secrets too (sslpassword, MySQL's password)
        if other_options:
            # Another wrapper of this alias with other OPTIONS (connection.copy()
            # and a changed isolation level, role, …): the pool's connections were
            # set up with the pool's, so this one gets a connection of its own,
            # outside the pool, exactly as the stock engine opens it.
            return super().connect()
        self.connection = None
        try:
            if _recorder.active:  # a debug-toolbar panel is recording somewhere
                slot = _recorder.checkout(self, pool)
            else:
                slot = pool.getconn(self.pool_open_connection)
        except PoolTimeout as exc:
            if self._dpb_request_checkouts:
                # Transaction mode, and not the request's first checkout.
                raise self._dpb_nth_checkout(exc) from None
            raise
        self._dpb_slot = slot
        # The thread this wrapper belongs to, so that the pool can reclaim the
        # connection if that thread ends holding it (None while shared).
        slot.owner = self._dpb_owner
        if self._dpb_release and not self._dpb_checked_out(slot, self.connection is None):
            # The server hung up on it while it sat in the pool: it is discarded,
            # and this checkout takes another (a new one if none is idle).
            return self.connect()
        if self.connection is None:
            # Reused: set up when it was opened; only our side needs syncing.
            self.connection = slot.conn
            self.autocommit = autocommit
            if self._dpb_synced is not pool:
                self.__dict__.update(pool.context.wrapper_state or ())
                self._dpb_synced = pool
            if slot.needs_init:
                # A "full" reset wiped the session: set it up again.
                slot.needs_init = False
                try:
                    self._dpb_set_up()
                except BaseException:
                    self._dpb_slot = None
                    self.connection = None
                    pool.putconn(slot, "init_failed")
                    raise
        elif pool.context.wrapper_state is None:
            self._dpb_remember_state(pool)
        self.run_on_commit = []

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

    # -- checkin ----------------------------------------------------------------

    def _close(self) -> None:
        slot = self._dpb_slot
        if slot is None:
            super()._close()  # type: ignore[misc]  # not in django-stubs
            return
        self._dpb_slot = None
        self._dpb_pin = None
        self._dpb_cursors = 0
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
            and slot.pool.context.behind_proxy
            and self._dpb_driver.autocommit(self.connection)
        ):
            return self.cursor()
        return super().chunked_cursor()

    def close_if_health_check_failed(self) -> None:
        """Django's health check (``CONN_HEALTH_CHECKS``), marking its verdict
        where Django acts on it.

        A connection that fails the check must be closed for good, never pooled
        again: mysqlclient's client-side state cannot tell that it is dead. The
        mark is set here, where Django closes the connection because of the
        answer, so a subclass or a test that replaces ``is_usable()`` cannot hand
        a dead connection back to the pool. The steps are Django's own, and
        tests/test_django_contract.py fails when the installed Django's differ.
        """
        if self.connection is None or not self.health_check_enabled or self.health_check_done:
            return
        if not self.is_usable():
            if self._dpb_slot is not None:
                self._dpb_failed_check = True
            self.close()
        self.health_check_done = True

    def is_usable(self) -> bool:
        if self.connection is None:
            # Given back by a bare _close(); mysqlclient's check would crash on None.
            return False
        usable: bool = super().is_usable()
        if not usable and self._dpb_slot is not None:
            # Whoever asked is told the connection is dead, and mysqlclient's
            # client-side state can't tell, so the verdict is remembered: it must not
            # be pooled. Django's own health check marks it where it acts on the
            # answer too (close_if_health_check_failed()), for an is_usable()
            # replaced in a subclass or a test, and a return after an error asks
            # is_usable() again in _dpb_clean().
            self._dpb_failed_check = True
        return usable

    def __del__(self) -> None:
        # A wrapper dropped while holding a connection (a thread that ended without
        # closing it): hand the slot to the pool to close at its next checkout.
        # Nothing else is safe here, as this can run inside the pool's own lock.
        slot = self.__dict__.get("_dpb_slot")
        if slot is not None:
            slot.pool.orphan(slot)

    # -- Django hooks that affect the whole pool ---------------------------------

    def close_pool(self) -> None:
        """Retire this alias's pool (Django calls it before cloning/dropping test DBs)."""
        process.retire(self.alias)
        parent = getattr(super(), "close_pool", None)
        if parent is not None:
            parent()
