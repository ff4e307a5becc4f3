"""Per-pool figures: what ``pool_stats()``, the snapshots and the panel show of a pool.

A pool's figures are one flat dict: the alias and process, where the pool
connects (never the password), the ``POOL`` settings in effect, and the pool's
counters, gauges and timings. An alias this process has not used yet has the same
keys, with zeros, so that a dashboard or a test reads every key before the first
request; those zeros are made here from the settings alone, without building a
pool that would never serve anything.
"""

from __future__ import annotations

import copy
import os
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.db import connections

from . import process
from . import settings as pool_settings
from .aliases import is_pooled_alias, pooled_aliases
from .core import Pool
from .core.config import PoolConfig
from .core.pool import CLOSE_REASONS
from .core.stats import Histogram

_NO_IDENTITY = {"vendor": "", "host": "", "port": "", "database": "", "user": ""}
_NO_CLOSES = dict.fromkeys(CLOSE_REASONS, 0)
#: The counters and gauges of a pool that has done nothing yet, in the order
#: ``Pool.stats()`` gives them: those before ``closed_by_reason``, those after it,
#: then the timings. tests/test_stats.py checks that they match a fresh pool's.
_ZERO_BEFORE_REASONS = (
    "size", "idle", "in_use", "waiting", "requests", "checkouts", "waits",
    "timeouts", "rejected", "connects", "connect_errors", "connect_backoffs", "closed",
)  # fmt: skip
_ZERO_AFTER_REASONS = (
    "pings", "ping_failures", "resets", "leaks", "drains", "releases", "pins", "drain_pending",
)  # fmt: skip
_TIMINGS = ("wait_ms", "hold_ms", "connect_ms", "checkouts_per_request")


def stats(alias: str) -> dict[str, Any]:
    """This process's figures for *alias*: every key always, zeros before first use."""
    pool = process.pools.get(alias)
    if pool is not None and pool.pid == os.getpid():
        return pool_figures(pool)
    return _unused_figures(alias)


def identity(vendor: str, settings_dict: dict[str, Any]) -> dict[str, str]:
    """Where a pool connects, for figures and snapshots: never the password."""
    return {
        "vendor": vendor,
        "host": str(settings_dict.get("HOST") or ""),
        "port": str(settings_dict.get("PORT") or ""),
        "database": str(settings_dict.get("NAME") or ""),
        "user": str(settings_dict.get("USER") or ""),
    }


def pool_figures(pool: Pool) -> dict[str, Any]:
    """The figures of a pool of this process, as it is now."""
    out: dict[str, Any] = {"alias": pool.name, "pid": os.getpid()}
    where = pool.context.identity
    out.update(_NO_IDENTITY if where is None else where)
    out.update(pool.config.as_dict())
    out.update(pool.stats())
    out["closed_by_reason"] = {**_NO_CLOSES, **out["closed_by_reason"]}
    out["drain_generation"] = pool.context.drain_generation
    return out


def zero_figures(alias: str, config: PoolConfig, where: dict[str, str]) -> dict[str, Any]:
    """The figures a pool made with *config* would show before doing anything:
    the same keys, in the same order, as :func:`pool_figures` gives."""
    out: dict[str, Any] = {"alias": alias, "pid": os.getpid(), **where}
    out.update(config.as_dict())
    out.update(dict.fromkeys(_ZERO_BEFORE_REASONS, 0))
    out["closed_by_reason"] = dict(_NO_CLOSES)
    out.update(dict.fromkeys(_ZERO_AFTER_REASONS, 0))
    out["pins"] = {}  # by reason: none yet
    for key in _TIMINGS:
        out[key] = Histogram().summary()
    out["drain_generation"] = 0
    return out


def _unused_figures(alias: str) -> dict[str, Any]:
    connections[alias]  # ConnectionDoesNotExist for an alias not in DATABASES
    settings_dict = connections.settings[alias]
    if not is_pooled_alias(alias):
        # By the wrapper's class: a backend composed with the mixin is pooled too.
        raise ValueError(
            f"DATABASES[{alias!r}] does not use a pooled ENGINE (its DatabaseWrapper "
            "is not a PooledDatabaseWrapperMixin), so it has no pool; pooled aliases: "
            f"{', '.join(pooled_aliases()) or 'none'}."
        )
    _, config = pool_settings.prepare(settings_dict, alias)
    if isinstance(config, ImproperlyConfigured):
        # A copy of the error itself: the same class (a subclass stays one) and
        # message, without the tracebacks of earlier raises.
        raise copy.copy(config)
    return zero_figures(alias, config, identity(connections[alias].vendor, settings_dict))
