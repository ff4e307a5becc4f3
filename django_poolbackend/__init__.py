"""A drop-in Django database backend with a real per-process connection pool."""

from typing import Any

from .errors import PoolClosed, PoolTimeout, SessionStateLost, TooManyRequests

__version__ = "0.1.0.dev0"

__all__ = [
    "PoolClosed",
    "PoolTimeout",
    "SessionStateLost",
    "TooManyRequests",
    "pinned",
    "pool_stats",
]


def pool_stats(alias: str = "default") -> dict[str, Any]:
    """This process's figures for *alias*'s pool: every documented key, zeros
    before first use (docs/observability.md lists them)."""
    from .figures import stats

    return stats(alias)


def pinned(using: str | None = None) -> Any:
    """Keep *using*'s connection until the end of the request, with
    ``POOL['release'] = 'transaction'`` (see :func:`django_poolbackend.release.pinned`)."""
    from .release import pinned as _pinned

    return _pinned(using)
