"""The driver-agnostic pool: imports nothing from Django.

The Django side (``django_poolbackend.mixin``) hands it an *opener* per checkout and
a small driver object; everything about sizes, waiting, expiry and counters is here.
"""

from .config import ConfigError, PoolConfig
from .errors import PoolClosed, PoolError, PoolTimeout, TooManyRequests
from .pool import Pool, Slot

__all__ = [
    "ConfigError",
    "Pool",
    "PoolClosed",
    "PoolConfig",
    "PoolError",
    "PoolTimeout",
    "Slot",
    "TooManyRequests",
]
