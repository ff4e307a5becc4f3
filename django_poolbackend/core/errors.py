"""Errors the pool core raises.

The Django layer subclasses these with ``django.db.utils.OperationalError`` so that
code catching Django's database errors catches ours too, while the core stays
importable (and testable) without Django.
"""


class PoolError(Exception):
    """Base class of the pool's own errors."""


class PoolTimeout(PoolError):
    """No connection became free within ``timeout``, or too many requests wait."""


class TooManyRequests(PoolTimeout):
    """``max_waiting`` requests were already waiting, so this one did not wait."""


class PoolClosed(PoolError):
    """The pool was closed (settings changed, test database dropped, shutdown)."""
