"""How a pooled wrapper opens, sets up, cleans and resets its connections.

:class:`PoolCheckout` holds the steps that the Django hooks of
:class:`~django_poolbackend.wrapper.PooledDatabaseWrapperMixin` call: making the
alias's pool, opening and setting up a new physical connection, making a returned
one fit for the next borrower (or saying why it is not), the ``"full"`` reset, and
letting go of a parent's connections after a fork. It also holds what a pool is
made with (the exhaustion hint, the background opener) and the naming rule of
PostgreSQL sessions. Nothing here is a hook Django calls itself.
"""

from __future__ import annotations

import copy
import logging
import weakref
from typing import TYPE_CHECKING, Any

from django.core.exceptions import ImproperlyConfigured
from django.db.backends.signals import connection_created
from django.utils.module_loading import import_string

from . import drivers, figures, process, publish
from . import settings as pool_settings
from .core import Pool, Slot
from .core.config import PoolConfig
from .errors import PoolClosed, PoolTimeout, TooManyRequests

logger = logging.getLogger("django_poolbackend")

#: One driver object per DB-API module, shared by every wrapper that uses it.
_drivers: dict[str, drivers.Driver] = {}


if TYPE_CHECKING:
    # What the mixin is composed with, for the type checker only: at run time it
    # must stay a plain mixin, in front of whichever wrapper it pools.
    from django.db.backends.base.base import BaseDatabaseWrapper as _WrapperBase
else:
    _WrapperBase = object


class PoolCheckout(_WrapperBase):
    """The checkout and return steps of a pooled wrapper, below its Django hooks.

    It is a base class of :class:`~django_poolbackend.wrapper.PooledDatabaseWrapperMixin`
    only, so that the hooks Django calls and the steps they take read as two
    short files; its ``_dpb_*`` names are explained on that class.
    """

    #: Set by the wrapper's __init__ (a PoolConfig, or the ImproperlyConfigured
    #: raised when a pool is needed) and the driver of the wrapper's DB-API module.
    _dpb_config: PoolConfig | ImproperlyConfigured
    _dpb_driver: drivers.Driver
    _dpb_slot: Slot | None = None
    #: Set when Django's own usability check failed on a pooled connection: it is
    #: discarded at its return instead of pooled (cleared there).
    _dpb_failed_check = False
    #: The pool whose remembered wrapper attributes this wrapper has applied.
    _dpb_synced: Pool | None = None

    def _dpb_remember_state(self, pool: Pool) -> None:
        pool.context.wrapper_state = {
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
        pool.context.behind_proxy = behind_proxy

    def _dpb_new_pool(self, key: Any) -> Pool:
        config = self._dpb_config
        if isinstance(config, ImproperlyConfigured):
            # A copy, so the stored error gathers no traceback from each raise, and
            # of its own class, so a subclass (and its notes) reaches the caller.
            raise copy.copy(config)
        from .checks import log_settings_warnings

        # W001/W006 also reach the log of a project that never runs the checks
        # (once per process and alias; no I/O beyond the log line).
        log_settings_warnings(self.alias, self.settings_dict)
        process.add_fork_hook(_forget_inherited_connections)
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
        context = pool.context
        context.identity = figures.identity(self.vendor, self.settings_dict)
        # The OPTIONS the pool's connections are opened with: the object (the usual
        # case, every thread's wrapper shares the settings dict) and its value.
        context.options_of = self.settings_dict["OPTIONS"]
        context.options = copy.deepcopy(self.settings_dict["OPTIONS"])
        publish.attach(pool)
        return pool

    def pool_open_connection(self) -> Any:
        """The pool's opener: one new physical connection, fully set up.

        Public for the package's own collaborators (the debug-toolbar recorder
        times it), not for users: a connection opened here belongs to the pool.
        """
        try:
            conn = self.get_new_connection(self.pool_connect_params())
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
            self._dpb_set_up()
        except BaseException:
            self.connection = None
            self._dpb_driver.close(conn)
            raise
        return conn

    def pool_connect_params(self) -> dict[str, Any]:
        """Django's connection parameters, through the ``connect_params`` hook.

        What a pooled connection is opened with; the system checks and
        ``poolstats --server`` open their own short connection with it too.
        """
        params = self.get_connection_params()
        config = self._dpb_config
        hook = None if isinstance(config, ImproperlyConfigured) else config.connect_params
        if hook is not None:
            function = import_string(hook) if isinstance(hook, str) else hook
            params = pool_settings.checked_params(self.alias, hook, function(self.alias, params))
        return params

    #: The names the package's other modules used before the public ones; kept
    #: until they all call the public names.
    _dpb_params = pool_connect_params
    _dpb_open = pool_open_connection

    def pool_note_recording(self, mark: Any) -> None:
        """Remember where the debug-toolbar recorder noted this checkout, so the
        return (which Django makes after the response has left the panel) is
        added to the same event."""
        self.__dict__["_dpb_recording"] = mark

    def pool_peek_recording(self) -> Any:
        """The recorder's mark of the current checkout, kept; None when the
        checkout was not recorded."""
        return self.__dict__.get("_dpb_recording")

    def pool_take_recording(self) -> Any:
        """The recorder's mark of the current checkout, forgotten here; None when
        the checkout was not recorded."""
        return self.__dict__.pop("_dpb_recording", None)

    #: True while a connection is being set up: Django's own set-up statements
    #: (MySQL's ``SET``) pin nothing and release nothing in transaction mode.
    _dpb_initialising = False

    def _dpb_set_up(self) -> None:
        """:meth:`_dpb_initialise`, marked as set-up for transaction release."""
        self._dpb_initialising = True
        try:
            self._dpb_initialise()
        finally:
            self._dpb_initialising = False

    def _dpb_initialise(self) -> None:
        # Django's own steps, in its order (tests/test_django_contract.py).
        self.set_autocommit(self.settings_dict["AUTOCOMMIT"])
        self.init_connection_state()
        connection_created.send(sender=self.__class__, connection=self)

    def _dpb_clean(self, slot: Slot) -> tuple[str | None, bool]:
        """Make the connection fit for the next borrower, or say why it isn't.

        Returns (reason to discard or None, whether a round trip was spent).
        """
        if self.in_atomic_block:
            # Django keeps its reference to a connection closed inside atomic(),
            # so it must never serve anyone else.
            return "closed_in_transaction", False
        if (
            self.autocommit
            and not self.errors_occurred
            and not self.needs_rollback
            and slot.pool.config.reset == "rollback"
            and self._dpb_driver.idle_in_autocommit(slot.conn)
            and self.settings_dict["AUTOCOMMIT"]
        ):
            # The fast path, every request's return: no transaction, autocommit
            # everywhere, nothing to reset. What follows would conclude the same,
            # slower; tests/test_django_contract.py checks that the two agree on
            # every state the state-leakage tests produce. Both stay in this one
            # method: a call of a second one costs each return about 1% more.
            return None, False
        conn = slot.conn
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
            return self.pool_connect_params() if credentials else self.get_connection_params()

        full_reset(conn, params)

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
        # Transaction-scoped release: no pin, cursor or request of the parent's.
        self.__dict__.update(
            _dpb_pin=None, _dpb_cursors=0, _dpb_request_checkouts=0, _dpb_last=None,
            _dpb_request_pool=None,
        )  # fmt: skip


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
        if isinstance(wrapper, PoolCheckout):
            wrapper._dpb_forget_inherited()


def _background_opener(
    cls: type[PoolCheckout], settings_dict: dict[str, Any], alias: str, pool: Pool
) -> Any:
    """An opener for the maintenance thread, which has no wrapper of its own: a
    throwaway wrapper opens and sets up the connection exactly as a checkout would."""

    # Weak: the pool holds this opener, and a cycle would keep a retired pool
    # alive until the garbage collector runs.
    pool_ref = weakref.ref(pool)

    def open_one() -> Any:
        wrapper = cls(copy.deepcopy(settings_dict), alias)
        conn = wrapper.pool_open_connection()
        pool = pool_ref()
        if pool is not None and pool.context.wrapper_state is None:
            wrapper._dpb_remember_state(pool)
        wrapper.connection = None  # the pool owns it now
        return conn

    return open_one
