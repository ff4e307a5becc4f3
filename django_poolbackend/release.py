"""Transaction-scoped release: the steps that give a connection back between
transactions, the cursors that tell when, and the ``pinned()`` escape hatch.

With ``POOL["release"] = "transaction"`` a wrapper gives its connection back to
the pool as soon as it holds no transaction and no open cursor: when the last
open cursor of an autocommit statement is closed, and when autocommit comes back
on at the end of the outermost ``atomic()`` block or of a manual transaction. The
next statement checks a connection out again. A request that does anything whose
effect lives in the server session instead of the transaction (a ``SET``, a
temporary table, a session lock; :mod:`django_poolbackend.pinning` has the list)
is *pinned*: it keeps its connection until Django closes it at the end of the
request, when the ``reset`` setting cleans it as usual. An unpinned connection
is clean by construction when it goes back (no transaction, nothing done to the
session), so that return costs no round trip and no reset.

Nothing of this runs in the default mode. :class:`TransactionRelease` is a base
class of the wrapper mixin and holds the steps; a wrapper in transaction mode
takes over four of Django's hooks on itself when it is made
(:meth:`TransactionRelease._dpb_take_over_hooks`), so that a wrapper in the
default mode runs Django's own, with no override in between: an override that
calls ``super()`` costs about 1,800 machine instructions per call, 4 % of a whole
checkout-and-return cycle for the two calls Django makes per request (measured
with callgrind on ``benchmarks.floor_cycle``). The cursor classes here are
the backend's own cursor wrappers, with a counter and the statement scan added.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from django.db import DEFAULT_DB_ALIAS, connections

from . import drivers, pinning
from .errors import SessionStateLost
from .toolbar import recorder as _recorder

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper as _WrapperBase

    from .core import Pool, Slot
else:
    _WrapperBase = object

_ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth")


class TransactionRelease(_WrapperBase):
    """The transaction-release steps of a pooled wrapper (see the module).

    Its ``_dpb_*`` attributes, besides those the wrapper mixin lists:

    - ``_dpb_release``: True in transaction mode (read from the pool settings);
    - ``_dpb_cursors``: cursors of the current checkout not yet closed;
    - ``_dpb_checkout_id``: bumped at each checkout, so a cursor of an earlier
      checkout closing late does not count against this one;
    - ``_dpb_pin``: why the connection stays checked out until the end of the
      request, or None;
    - ``_dpb_request_checkouts``: checkouts since the request began;
    - ``_dpb_fresh``: no statement has run on this checkout yet;
    - ``_dpb_last``: the slot the previous checkout of this request released and
      its use count then, to tell whether a value it left is still there;
    - ``_dpb_request_pool``: the pool this request's checkouts came from;
    - ``_dpb_initialising``: a new connection is being set up (Django's own
      ``SET`` statements of that set-up pin nothing).
    """

    _dpb_release = False
    _dpb_cursors = 0
    _dpb_checkout_id = 0
    _dpb_pin: str | None = None
    _dpb_request_checkouts = 0
    _dpb_fresh = False
    _dpb_last: tuple[Slot, int] | None = None
    _dpb_request_pool: Pool | None = None
    _dpb_initialising: bool  # set by PoolCheckout
    _dpb_slot: Slot | None
    _dpb_driver: drivers.Driver
    _dpb_failed_check: bool

    # -- Django's hooks, taken over in transaction mode ------------------------------

    def _dpb_take_over_hooks(self) -> None:
        """Make this wrapper's own ``make_cursor()``, ``make_debug_cursor()``,
        ``set_autocommit()`` and ``close_if_unusable_or_obsolete()`` the
        transaction-mode versions below.

        They are bound on the instance (an instance attribute shadows the class's
        method) rather than overridden on the class, so that only wrappers in
        transaction mode pay for them; Django's classes are not touched. Each
        calls the method the class itself resolves (a backend's or a subclass's
        override included), so the cursors are the backend's own, only counted.
        """
        cls = type(self)
        self._dpb_django_make_cursor = cls.make_cursor.__get__(self, cls)
        self._dpb_django_make_debug_cursor = cls.make_debug_cursor.__get__(self, cls)
        self._dpb_django_set_autocommit = cls.set_autocommit.__get__(self, cls)
        self._dpb_django_close_if_unusable = cls.close_if_unusable_or_obsolete.__get__(self, cls)
        self.make_cursor = self._dpb_make_cursor  # type: ignore[method-assign]
        self.make_debug_cursor = self._dpb_make_debug_cursor  # type: ignore[method-assign]
        self.set_autocommit = self._dpb_set_autocommit  # type: ignore[method-assign]
        self.close_if_unusable_or_obsolete = self._dpb_close_if_unusable_or_obsolete  # type: ignore[method-assign]

    def _dpb_make_cursor(self, cursor: Any) -> Any:
        return _counted(self._dpb_django_make_cursor(cursor), self)

    def _dpb_make_debug_cursor(self, cursor: Any) -> Any:
        return _counted(self._dpb_django_make_debug_cursor(cursor), self)

    def _dpb_set_autocommit(
        self, autocommit: bool, force_begin_transaction_with_broken_autocommit: bool = False
    ) -> None:
        """Autocommit back on ends the outermost ``atomic()`` block or a manual
        transaction: the connection can go back now."""
        self._dpb_django_set_autocommit(autocommit, force_begin_transaction_with_broken_autocommit)
        if autocommit and not self._dpb_initialising:
            self._dpb_release_if_idle()

    def _dpb_close_if_unusable_or_obsolete(self) -> None:
        """Django calls this at the start and end of every request (and Celery's
        Django fix-up around every task): also the moment a pinned connection
        goes back and the request's checkouts are counted."""
        self._dpb_django_close_if_unusable()
        self._dpb_end_request()

    # -- at checkout ------------------------------------------------------------

    def _dpb_checked_out(self, slot: Slot, reused: bool) -> bool:
        """Transaction mode's part of a checkout; False when the reused connection
        turned out dead (the server hung up while it sat in the pool) and was
        discarded, so the caller checks out another one."""
        if reused and self._dpb_driver.dropped(slot.conn):
            try:
                self._dpb_driver.ping(slot.conn, min(slot.pool.config.timeout, 5.0) or 1.0)
            except Exception:
                self._dpb_slot = None
                self.connection = None
                slot.pool.putconn(slot, "broken")
                if _recorder.active:
                    _recorder.checkin(self, "broken", False)
                return False
        self._dpb_checkout_id += 1
        self._dpb_cursors = 0
        self._dpb_fresh = True
        self._dpb_request_checkouts += 1
        self._dpb_request_pool = slot.pool
        return True

    def _dpb_nth_checkout(self, exc: BaseException) -> BaseException:
        """*exc* (a PoolTimeout) of a checkout after the request's first, with a
        message that says so: the request waited in the middle, not at its start."""
        n = self._dpb_request_checkouts + 1
        nth = _ORDINALS[n - 1] if n <= len(_ORDINALS) else f"{n}th"
        message = (
            f"{exc.args[0] if exc.args else exc} This was the {nth} checkout of this "
            "request: with POOL['release'] = 'transaction' a request checks a "
            "connection out again for each transaction, and may wait each time. "
            "The request's earlier transactions had all ended, so nothing of them "
            "was lost."
        )
        new = type(exc)(message)
        return new

    # -- statements -------------------------------------------------------------

    def _dpb_scan(self, sql: object) -> None:
        """Pin the connection if *sql* leaves state in the session; called by the
        cursors before each statement, in transaction mode only."""
        fresh = self._dpb_fresh
        self._dpb_fresh = False
        reason = pinning.session_use(sql, self.vendor, not self.autocommit or self.in_atomic_block)
        if reason is None:
            return
        if (
            fresh
            and self._dpb_last is not None
            and reason in pinning.MAY_READ_EARLIER_STATE
            and pinning.reads_earlier_state(sql, self.vendor)
        ):
            last_slot, last_uses = self._dpb_last
            slot = self._dpb_slot
            if slot is not last_slot or slot is None or slot.uses != last_uses + 1:
                raise _session_state_lost(self, sql, reason)
        self.pool_pin(reason, sql)

    def pool_pin(self, reason: str, sql: object = None) -> None:
        """Keep the current connection until the end of the request, and say why.

        Public for :func:`pinned` and the package's other modules; a no-op
        outside transaction mode or without a pooled connection."""
        slot = self._dpb_slot
        if not self._dpb_release or slot is None or self._dpb_pin is not None:
            return
        self._dpb_pin = reason
        slot.pool.note_pin(reason)
        if _recorder.active:
            _recorder.pinned(self, reason, None if sql is None else pinning.shown_statement(sql))

    # -- giving the connection back ------------------------------------------------

    def _dpb_cursor_closed(self, checkout_id: int) -> None:
        """A cursor of checkout *checkout_id* was closed."""
        if checkout_id != self._dpb_checkout_id:
            return  # a cursor of an earlier checkout, closed late
        self._dpb_cursors -= 1
        if self._dpb_cursors <= 0:
            self._dpb_cursors = 0
            self._dpb_release_if_idle()

    def _dpb_release_if_idle(self) -> None:
        """Give the connection back if nothing of the request needs it any more."""
        slot = self._dpb_slot
        if (
            slot is None
            or self._dpb_pin is not None
            or self._dpb_cursors
            or self.in_atomic_block
            or not self.autocommit
            or self._dpb_initialising
        ):
            return
        conn = slot.conn
        driver = self._dpb_driver
        discard: str | None = None
        if self._dpb_failed_check:
            discard = "broken"
        elif not driver.idle_in_autocommit(conn) and (
            (state := driver.state(conn)) != drivers.IDLE or not driver.autocommit(conn)
        ):
            # idle_in_autocommit() says False whenever it can't tell (mysqlclient
            # before its status read is bound), so the long way asks again. A
            # transaction begun behind Django's back (a raw BEGIN), a result not
            # read to its end: keep it; the end of the request cleans it.
            if state != drivers.BROKEN:
                return
            discard = "broken"
        elif self.errors_occurred and not self.is_usable():
            discard = "broken"
        self._dpb_slot = None
        self.connection = None
        self._dpb_failed_check = False
        self.errors_occurred = False
        self._dpb_last = (slot, slot.uses)
        slot.pool.putconn(slot, discard, False, True)
        if _recorder.active:
            _recorder.checkin(self, discard, False, released=True)

    def _dpb_end_request(self) -> None:
        """A request (or task) boundary: a pinned connection goes back with the
        reset the settings say, and the request's checkouts are counted."""
        if self._dpb_pin is not None and self._dpb_slot is not None and not self.in_atomic_block:
            self.close()
        checkouts = self._dpb_request_checkouts
        pool = self._dpb_request_pool
        if checkouts and pool is not None:
            pool.note_request(checkouts)
        self._dpb_request_checkouts = 0
        self._dpb_request_pool = None
        self._dpb_last = None


class _ReleasingCursorMixin:
    """Put in front of a backend's cursor wrapper class (see :func:`_counted`):
    scans each statement, and lets the wrapper give its connection back when
    the last open cursor closes."""

    # The attributes of Django's CursorWrapper this mixin uses.
    cursor: Any
    db: Any

    def execute(self, sql: Any, params: Any = None) -> Any:
        db = self.db
        if db._dpb_pin is None and db._dpb_slot is not None and not db._dpb_initialising:
            db._dpb_scan(sql)
        return super().execute(sql, params)  # type: ignore[misc]

    def executemany(self, sql: Any, param_list: Any) -> Any:
        db = self.db
        if db._dpb_pin is None and db._dpb_slot is not None and not db._dpb_initialising:
            db._dpb_scan(sql)
        return super().executemany(sql, param_list)  # type: ignore[misc]

    def callproc(self, procname: Any, params: Any = None, kparams: Any = None) -> Any:
        # A stored procedure can do anything to the session.
        self.db.pool_pin(pinning.PROCEDURE, f"CALL {procname}")
        return super().callproc(procname, params, kparams)  # type: ignore[misc]

    def close(self) -> None:
        checkout = self.__dict__.pop("_dpb_checkout", None)
        try:
            self.cursor.close()
        finally:
            if checkout is not None:
                self.db._dpb_cursor_closed(checkout)

    def __del__(self) -> None:
        # Dropped without close(): it no longer holds the connection, but giving
        # the connection back from here is not safe (this can run anywhere,
        # inside the pool's lock among other places). The next release point
        # does it.
        checkout = self.__dict__.pop("_dpb_checkout", None)
        db: Any = self.__dict__.get("db")
        if checkout is not None and checkout == getattr(db, "_dpb_checkout_id", None):
            db._dpb_cursors -= 1


#: Per cursor wrapper class of a backend (Django's CursorWrapper, PostgreSQL's
#: CursorDebugWrapper, …), the same class with :class:`_ReleasingCursorMixin`.
_releasing_classes: dict[type, type] = {}


def _counted(wrapped: Any, db: Any) -> Any:
    """*wrapped*, a cursor wrapper the backend made, turned into one that counts
    itself open on *db* and scans its statements.

    Its class becomes a subclass of its own class (made once per class), so it
    stays an instance of what the backend made, with every method it had.
    """
    cls = type(wrapped)
    releasing = _releasing_classes.get(cls)
    if releasing is None:
        if issubclass(cls, _ReleasingCursorMixin):
            releasing = cls
        else:
            releasing = type(
                cls.__name__,
                (_ReleasingCursorMixin, cls),
                {"__module__": cls.__module__, "__qualname__": cls.__qualname__},
            )
        releasing = _releasing_classes.setdefault(cls, releasing)
    wrapped.__class__ = releasing
    db._dpb_cursors += 1
    wrapped._dpb_checkout = db._dpb_checkout_id
    return wrapped


def _session_state_lost(wrapper: Any, sql: object, reason: str) -> Exception:
    """The error for a statement that reads what an earlier statement left in a
    session this request gave back (``SELECT lastval()`` after an INSERT that
    ran as its own transaction): its answer would be another request's."""
    return SessionStateLost(
        f"{pinning.shown_statement(sql, 80)!r} reads a value ({reason}) that an earlier "
        "statement of this request left in its server session, but "
        f"DATABASES[{wrapper.alias!r}]['POOL']['release'] = 'transaction' gave that "
        "session back to the pool after the earlier statement, and another request "
        "has used it since. Run both statements in one transaction.atomic() block, "
        f"or inside django_poolbackend.pinned({wrapper.alias!r})."
    )


@contextlib.contextmanager
def pinned(using: str | None = None) -> Iterator[Any]:
    """Keep *using*'s connection (default: ``"default"``) checked out until the
    end of the request, for code whose session state the statement scan cannot
    see: work on the raw driver connection (``connection.connection``), a
    ``SET`` inside a stored function, a library that keeps its own session state.

    Use it as ``with pinned():`` or as a decorator. The pin outlasts the block on
    purpose: what the code did to the session is still there after it, so the
    connection goes back, and is reset as the ``reset`` setting says, only when
    Django closes it at the end of the request. Outside transaction mode (and for
    a backend that is not pooled) it only makes sure a connection is open.
    """
    connection = connections[using or DEFAULT_DB_ALIAS]
    connection.ensure_connection()
    pin = getattr(connection, "pool_pin", None)
    if pin is not None:
        pin(pinning.EXPLICIT)
    yield connection
