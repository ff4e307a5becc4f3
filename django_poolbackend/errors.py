"""The errors a Django user can catch.

The pool's are ``django.db.utils.OperationalError`` subclasses, so code that
already handles Django's database errors handles pool exhaustion too. ``TooManyRequests``
is a ``PoolTimeout``, so ``except PoolTimeout`` catches a ``max_waiting``
rejection as well.
"""

from django.db.utils import OperationalError, ProgrammingError

from .core import errors as core


class PoolTimeout(core.PoolTimeout, OperationalError):
    """No pooled connection became free in time (or too many requests waited)."""

    __module__ = "django_poolbackend"


class TooManyRequests(PoolTimeout, core.TooManyRequests):
    """``POOL['max_waiting']`` requests were already waiting, so this one failed at
    once instead of waiting."""

    __module__ = "django_poolbackend"


class PoolClosed(core.PoolClosed, OperationalError):
    """The pool was closed while this request waited for it."""

    __module__ = "django_poolbackend"


class SessionStateLost(ProgrammingError):
    """With ``POOL['release'] = 'transaction'``: a statement reads a value that an
    earlier statement of the request left in a server session the request has
    since given back (``SELECT lastval()``, ``LAST_INSERT_ID()``, ``FOUND_ROWS()``
    after the statement that set it ran as its own transaction)."""

    __module__ = "django_poolbackend"
