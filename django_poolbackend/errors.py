"""The errors a Django user can catch.

Both are ``django.db.utils.OperationalError`` subclasses, so code that already
handles Django's database errors handles pool exhaustion too.
"""

from django.db.utils import OperationalError

from .core import errors as core


class PoolTimeout(core.PoolTimeout, OperationalError):
    """No pooled connection became free in time (or too many requests waited)."""

    __module__ = "django_poolbackend"


class PoolClosed(core.PoolClosed, OperationalError):
    """The pool was closed while this request waited for it."""

    __module__ = "django_poolbackend"
