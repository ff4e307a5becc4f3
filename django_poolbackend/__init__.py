"""A drop-in Django database backend with a real per-process connection pool."""

from typing import Any

from .errors import PoolClosed, PoolTimeout, TooManyRequests

__version__ = "0.1.0.dev0"

__all__ = ["PoolClosed", "PoolTimeout", "TooManyRequests", "pool_stats"]


def pool_stats(alias: str = "default") -> dict[str, Any]:
    """This process's figures for *alias*'s pool: every documented key, zeros
    before first use (docs/observability.md lists them)."""
    from .figures import stats

    return stats(alias)
