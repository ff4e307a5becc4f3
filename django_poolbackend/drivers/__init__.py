"""What the pool needs from each DB-API driver, beyond what Django already does,
and :func:`for_module`, which picks the driver for a Django backend.

The interface and the state constants are in :mod:`.base` and re-exported here,
so that ``drivers.Driver``, ``drivers.IDLE`` and the rest read the same as they
always have. Each driver has its own module (:mod:`.psycopg`, :mod:`.psycopg2`,
:mod:`.mysqlclient`, :mod:`.sqlite`), the watchdog that bounds a blocking call is
in :mod:`.watchdog`, and the ctypes calls into MariaDB's client library are kept
apart in :mod:`.mariadb`. Importing this package imports no driver: each module
imports its driver only when its driver object is built.
"""

from __future__ import annotations

from typing import Any

from .base import BROKEN, BUSY, IDLE, IN_TRANSACTION, Driver
from .mysqlclient import MySQLdbDriver
from .psycopg import PsycopgDriver
from .psycopg2 import Psycopg2Driver
from .sqlite import SQLiteDriver

__all__ = [
    "BROKEN",
    "BUSY",
    "IDLE",
    "IN_TRANSACTION",
    "Driver",
    "MySQLdbDriver",
    "Psycopg2Driver",
    "PsycopgDriver",
    "SQLiteDriver",
    "for_module",
]

#: The top-level name of a Django backend's ``Database`` module -> its driver.
_DRIVERS: dict[str, type[Driver]] = {
    "psycopg": PsycopgDriver,
    "psycopg2": Psycopg2Driver,
    "MySQLdb": MySQLdbDriver,
    "sqlite3": SQLiteDriver,
}


def for_module(database_module: Any) -> Driver:
    """The driver object for a Django wrapper's ``Database`` module."""
    name = database_module.__name__.split(".")[0]
    driver = _DRIVERS.get(name)
    if driver is None:
        raise ValueError(
            f"django_poolbackend has no driver support for {name!r}; "
            "supported: psycopg, psycopg2, MySQLdb (mysqlclient), sqlite3."
        )
    return driver()
