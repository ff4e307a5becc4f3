"""The errors a Django user can catch.

All are ``django.db.utils.OperationalError`` subclasses, so code that already
handles Django's database errors handles pool exhaustion too. ``TooManyRequests``
is a ``PoolTimeout``, so ``except PoolTimeout`` catches a ``max_waiting``
rejection as well.
"""

from django.db.utils import OperationalError

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
